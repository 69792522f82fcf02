"""Suppression files: known divergences the fuzzer should not report again.

Owns the file format (docs/fuzzing.md, "Suppressions") and matching. A rule names a
signature pattern, optionally the profiles it applies to and op tokens the script must
contain, and always the docs/divergences.md entry it stands for and the reason. Rules
are matched on the unshrunk script, before any shrinking.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SCHEMA = "sparsemm.fuzz-suppressions/1"
#: ``--suppress known``: the file shipped with sparsemm for docs/divergences.md.
KNOWN = "known"


class SuppressionError(ValueError):
    """A malformed suppression file; ``str()`` is one line naming the file and rule."""


@dataclass(slots=True, frozen=True)
class Rule:
    """One rule. ``signature`` and each of ``requires`` are shell-style patterns."""

    signature: str
    divergence: str
    reason: str
    profiles: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    source: str = ""

    def matches(self, signature: str, profile: str, tokens: set[str]) -> bool:
        if not fnmatch.fnmatchcase(signature, self.signature):
            return False
        if self.profiles and profile not in self.profiles:
            return False
        return all(any(fnmatch.fnmatchcase(t, pat) for t in tokens) for pat in self.requires)


def op_tokens(ops: list) -> set[str]:
    """What a script contains, for ``requires``: each op's name, ``name:advice``,
    ``name:flag`` for each flag, ``name:file`` for an op on a file (fork children too)."""
    out: set[str] = set()
    for op in ops:
        if not isinstance(op, dict):
            continue
        name = op.get("op", "?")
        out.add(str(name))
        if "advice" in op:
            out.add(f"{name}:{op['advice']}")
        for flag in op.get("flags", []) if isinstance(op.get("flags"), list) else []:
            out.add(f"{name}:{flag}")
        if "file" in op:
            out.add(f"{name}:file")
        if isinstance(op.get("child"), list):
            out |= op_tokens(op["child"])
    return out


def load_rules(path: str) -> list[Rule]:
    """Read a suppression file (``known``: the one shipped with sparsemm)."""
    if path == KNOWN:
        text = resources.files("sparsemm.data").joinpath("fuzz-suppressions.json").read_text(
            encoding="utf-8")
        where = "known suppressions"
    else:
        where = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SuppressionError(f"{path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SuppressionError(f"{path}: not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SuppressionError(f"{where}: bad JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise SuppressionError(f"{where}: not a suppression file (needs \"schema\": \"{SCHEMA}\")")
    rules = doc.get("suppress")
    if not isinstance(rules, list):
        raise SuppressionError(f"{where}: 'suppress' must be a list of rules")
    out = []
    for n, rule in enumerate(rules):
        if not isinstance(rule, dict):
            raise SuppressionError(f"{where}: rule {n}: must be an object")
        unknown = set(rule) - {"signature", "divergence", "reason", "profiles", "requires"}
        if unknown:
            raise SuppressionError(f"{where}: rule {n}: unknown field {sorted(unknown)[0]!r}")
        for key in ("signature", "divergence", "reason"):
            if not isinstance(rule.get(key), str) or not rule[key].strip():
                raise SuppressionError(f"{where}: rule {n}: '{key}' must be a non-empty string")
        lists = {}
        for key in ("profiles", "requires"):
            value = rule.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SuppressionError(f"{where}: rule {n}: '{key}' must be a list of strings")
            lists[key] = tuple(value)
        out.append(Rule(rule["signature"], rule["divergence"], rule["reason"], lists["profiles"],
                        lists["requires"], f"{where} rule {n}"))
    return out


def find_rule(rules: list[Rule], signature: str, profile: str, ops: list) -> Rule | None:
    """The first rule that suppresses this difference, or ``None``."""
    if not rules:
        return None
    tokens = op_tokens(ops)
    for rule in rules:
        if rule.matches(signature, profile, tokens):
            return rule
    return None
