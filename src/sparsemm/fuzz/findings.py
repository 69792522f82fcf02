"""Findings on disk: one directory per distinct difference the fuzzer confirmed.

Owns the layout of a findings directory (docs/fuzzing.md, "Reading a finding"):
``NNN-slug/`` holding ``script.json`` (the minimal script, ready for ``sparsemm
record``), ``model.json`` and ``kernel.json`` (both records), ``diff.txt`` (``sparsemm
compare``'s report and both runs as text), ``original.json`` (the script as generated)
and ``finding.json`` (signature, hits, provenance). Runs nothing.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from sparsemm.fuzz.difference import Difference
from sparsemm.opscript import records as rec
from sparsemm.opscript.compare import difference_report
from sparsemm.opscript.corpus import dump_corpus_doc

FINDING_SCHEMA = "sparsemm.fuzz-finding/1"
#: A report longer than this keeps the lines around the first difference only.
_MAX_REPORT_LINES = 120
_MAX_LINE = 400  # characters: a process_madvise of 1,024 ranges is one long line


@dataclass(slots=True)
class Finding:
    """A confirmed, shrunk difference. ``script`` is the minimal document; ``model`` and
    ``kernel`` its records (``None`` where that side raised: see ``*_error``)."""

    difference: Difference
    profile: str
    seed: str
    index: int
    script: dict
    original: dict
    model: list | None
    kernel: list | None
    model_error: str | None = None
    kernel_error: str | None = None
    confirmed: str = ""
    shrink: dict = field(default_factory=dict)
    hits: int = 1
    path: Path | None = None

    @property
    def signature(self) -> str:
        return self.difference.signature

    def metadata(self) -> dict:
        d = self.difference
        return {
            "schema": FINDING_SCHEMA,
            "signature": d.signature,
            "op": d.op, "field": d.field, "detail": d.detail, "in_child": d.in_child,
            "where": d.where,
            "profile": self.profile, "seed": self.seed, "index": self.index,
            "hits": self.hits,
            "confirmed": self.confirmed,
            "shrink": self.shrink,
            "ops": _count(self.script.get("ops", [])),
            "original_ops": _count(self.original.get("ops", [])),
            "model_error": self.model_error, "kernel_error": self.kernel_error,
            "kernel": platform.release(),
        }


def _count(ops: list) -> int:
    from sparsemm.fuzz.generate import count_ops

    return count_ops(ops)


def existing(directory: Path) -> dict[str, Path]:
    """Signature -> finding directory, for the findings already in ``directory``."""
    out: dict[str, Path] = {}
    if not directory.is_dir():
        return out
    for meta in sorted(directory.glob("*/finding.json")):
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("signature"), str):
            out.setdefault(doc["signature"], meta.parent)
    return out


def script_note(f: Finding) -> str:
    d = f.difference
    where = f" at {d.where}" if d.where else ""
    return (f"sparsemm fuzz finding ({f.profile} profile, seed {f.seed} script {f.index}): "
            f"model and kernel differ{where}: {d.signature}. Keep it in tests/conformance/ "
            "(sparsemm record) once the model agrees, or list it in docs/divergences.md.")


def write(directory: Path, f: Finding) -> Path:
    """Write ``f`` to a new ``NNN-slug`` directory under ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[:3]) for p in directory.iterdir() if p.name[:3].isdigit()]
    number = max(taken, default=0) + 1
    path = directory / f"{number:03d}-{f.difference.slug}"
    path.mkdir()
    doc = {"note": script_note(f), "tags": ["fuzz", f.profile]}
    doc.update({k: v for k, v in f.script.items() if k not in ("note", "tags", "expect")})
    _write(path / "script.json", dump_corpus_doc(doc))
    _write(path / "original.json", dump_corpus_doc(f.original))
    if f.model is not None:
        _write(path / "model.json", rec.to_json(f.model) + "\n")
    if f.kernel is not None:
        _write(path / "kernel.json", rec.to_json(f.kernel) + "\n")
    _write(path / "diff.txt", diff_text(f))
    f.path = path
    save_metadata(f)
    return path


#: Scripts kept per finding of the later differences with its signature (unshrunk):
#: one signature can stand for more than one cause, and these show the variety.
MAX_EXAMPLES = 3


def add_example(path: Path | None, doc: dict) -> None:
    """Keep ``doc`` as ``more/N.json`` in a finding's directory, up to MAX_EXAMPLES."""
    if path is None:
        return
    more = path / "more"
    have = len(list(more.glob("*.json"))) if more.is_dir() else 0
    if have >= MAX_EXAMPLES:
        return
    more.mkdir(exist_ok=True)
    _write(more / f"{have + 1}.json", dump_corpus_doc(doc))


def save_metadata(f: Finding) -> None:
    if f.path is not None:
        _write(f.path / "finding.json", json.dumps(f.metadata(), indent=2) + "\n")


def diff_text(f: Finding) -> str:
    d = f.difference
    shrink = f.shrink
    lines = [f"signature: {d.signature}",
             f"profile {f.profile}, seed {f.seed} script {f.index}; kernel runs that showed it: "
             f"{f.confirmed or '?'}",
             f"shrunk from {_count(f.original.get('ops', []))} to {_count(f.script.get('ops', []))} "
             f"ops in {shrink.get('tests', 0)} test runs"
             + ("" if shrink.get("complete", True) else " (budget spent: not minimal)"), ""]
    if f.model_error:
        lines += ["the model raised:", "  " + f.model_error, ""]
    if f.kernel_error:
        lines += ["the kernel backend failed:", "  " + f.kernel_error, ""]
    if f.model is not None and f.kernel is not None:
        lines += _trim(difference_report(f.model, f.kernel)[1].splitlines()) + [""]
    ops = f.script.get("ops")
    for side, records in (("model", f.model), ("kernel", f.kernel)):
        if records is not None:
            text = rec.render_text(records, ops).splitlines()
            lines += [f"{side} records:"] + _trim(text) + [""]
    return "\n".join(lines)


def _trim(lines: list[str]) -> list[str]:
    lines = [line if len(line) <= _MAX_LINE else line[:_MAX_LINE] + " ..." for line in lines]
    if len(lines) <= _MAX_REPORT_LINES:
        return lines
    mark = next((n for n, line in enumerate(lines) if "≠" in line), 0)
    lo = max(0, mark - _MAX_REPORT_LINES // 2)
    hi = min(len(lines), lo + _MAX_REPORT_LINES)
    out = lines[:2] if lo > 2 else []
    out += ([f"  ... {lo - len(out)} lines left out ..."] if lo > len(out) else []) + lines[lo:hi]
    if hi < len(lines):
        out.append(f"  ... {len(lines) - hi} lines left out ...")
    return out


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
