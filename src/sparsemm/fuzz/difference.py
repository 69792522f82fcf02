"""How the model's records differ from the kernel's: the first difference and its kind.

Owns ``Difference`` and its ``signature``, the key the fuzzer deduplicates findings by
and the shrinker preserves ("same kind of difference"): the differing op's name, the
record field, and a short detail such as the errno pair. Uses
``opscript.compare.first_difference`` for the position; runs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sparsemm.opscript.compare import first_difference
from sparsemm.opscript.records import FAULT

#: ``field`` of a model that raised something other than a syscall's OSError, and of
#: a kernel backend that could not run the script (a harness bug, or a child that died).
MODEL_ERROR = "model-error"
KERNEL_ERROR = "kernel-error"


@dataclass(slots=True, frozen=True)
class Difference:
    """The first difference between two runs of one script.

    ``index`` is the top-level op it is in (``None`` when unknown), ``where`` the
    record's path (``op 3 > child op 1``), ``in_child`` whether that is in a fork
    child; ``model``/``kernel`` are the two records (or error texts). ``signature``
    leaves out positions and values that shrinking changes.
    """

    op: str
    field: str
    detail: str
    in_child: bool = False
    index: int | None = None
    where: str = ""
    model: Any = None
    kernel: Any = None

    @property
    def signature(self) -> str:
        """What kind of difference this is: op, field, detail. Not where it is (top
        level or a fork child), so that shrinking may unwrap a fork and keep it."""
        return " ".join(p for p in (self.op, self.field, self.detail) if p)

    @property
    def slug(self) -> str:
        """A file-name-safe short form of the signature."""
        text = "-".join(p for p in (self.op, self.field) if p)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "difference"


def classify(model: list[dict], kernel: list[dict]) -> Difference | None:
    """The first difference of two record lists, classified; ``None`` when they agree."""
    found = first_difference(model, kernel)
    if found is None:
        return None
    where, m, k = found
    index = int(where.split()[1])
    in_child = ">" in where
    if m is None or k is None:
        rec = m or k
        side = "model" if m is None else "kernel"
        return Difference(rec.get("op", "?"), "records", f"{side} has fewer", in_child, index,
                          where, m, k)
    op = m.get("op", "?")
    if m.get("op") != k.get("op"):
        return Difference(op, "records", f"op {m.get('op')}!={k.get('op')}", in_child, index,
                          where, m, k)
    if m.get("ret") != k.get("ret"):
        return Difference(op, "ret", f"{m.get('ret')}!={k.get('ret')}", in_child, index, where, m, k)
    if m.get("to") != k.get("to"):
        return Difference(op, "to", "", in_child, index, where, m, k)
    mv, kv = m.get("value"), k.get("value")
    if op == "snapshot" and isinstance(mv, dict) and isinstance(kv, dict):
        if mv.get("vmas") != kv.get("vmas"):
            return Difference(op, "vmas", _vmas_detail(mv.get("vmas") or [], kv.get("vmas") or []),
                              in_child, index, where, m, k)
        return Difference(op, "pages", _pages_detail(mv.get("pages", ""), kv.get("pages", "")),
                          in_child, index, where, m, k)
    if op == "touch" and isinstance(mv, list) and isinstance(kv, list):
        return Difference(op, "value", _touch_detail(mv, kv), in_child, index, where, m, k)
    return Difference(op, "value" if mv != kv else "other", "", in_child, index, where, m, k)


def _vmas_detail(mv: list, kv: list) -> str:
    """Which column of the first differing VMA differs (flags: which ones, whose)."""
    for n in range(max(len(mv), len(kv))):
        a = mv[n] if n < len(mv) else None
        b = kv[n] if n < len(kv) else None
        if a == b:
            continue
        if a is None or b is None:
            return "count"
        if a[:2] != b[:2]:
            return "bounds"
        for col, name in ((2, "perms"), (3, "backing"), (4, "pgoff")):
            if a[col] != b[col]:
                return name
        fa, fb = set(a[5].split()), set(b[5].split())
        return "flags " + ",".join(f"{f}:{'model' if f in fa else 'kernel'}"
                                   for f in sorted(fa ^ fb))
    return "same"


def _pages_detail(mp: str, kp: str) -> str:
    """``model!=kernel`` characters of the first differing page."""
    for a, b in zip(mp, kp):
        if a != b:
            return f"{a}!={b}"
    return "length"


def _kind(value) -> str:
    return "fault" if value == FAULT else ("ok" if value == "ok" else "byte")


def _touch_detail(mv: list, kv: list) -> str:
    for a, b in zip(mv, kv):
        if a != b:
            ka, kb = _kind(a), _kind(b)
            return f"{ka}!={kb}" if ka != kb else f"{ka} value"
    return "length"


def normalize_message(text: str) -> str:
    """An error message with its numbers blanked, for a stable signature."""
    first = (text.strip().splitlines() or [""])[0]
    return re.sub(r"0x[0-9a-fA-F]+|\d+", "#", first)[:80]


def model_error(exc: BaseException, op: str = "", index: int | None = None) -> Difference:
    """The model raised ``exc`` (not a syscall's OSError) at top-level op ``index``."""
    text = f"{type(exc).__name__}: {exc}"
    return Difference(op or "?", MODEL_ERROR, normalize_message(text), False, index,
                      "" if index is None else f"op {index}", text, None)


def kernel_error(exc: BaseException) -> Difference:
    """The kernel backend could not run the script (its child failed or timed out)."""
    text = f"{type(exc).__name__}: {exc}"
    return Difference("", KERNEL_ERROR, normalize_message(text), False, None, "", None, text)
