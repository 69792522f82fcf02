"""Result records of docs/opscript.md, shared by both backends, and their renderings.

Owns the record shapes (``op_record``, ``snapshot_value``), the page
characters, and the two renderings: exact JSON for programs and a text view
for people (one line per op, snapshots drawn as page rows).
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass

from sparsemm import abi

# Page characters of a snapshot's "pages" string.
PAGE_NONE = "-"  # no VMA
PAGE_GUARD = "G"  # guard marker (pagemap bit 58)
PAGE_PRESENT = "P"  # present (bit 63)
PAGE_SWAPPED = "S"  # swapped (bit 62)
PAGE_EMPTY = "."  # mapped, not present

FAULT = "fault"


def errno_name(err: int) -> str:
    """``errno.EINVAL`` -> ``"EINVAL"`` (unknown numbers as ``"E123"``)."""
    return errno.errorcode.get(err, f"E{err}")


def op_record(index: int, name: str, ret: str = "ok", **extra) -> dict:
    record = {"i": index, "op": name, "ret": ret}
    record.update(extra)
    return record


@dataclass(slots=True, frozen=True)
class VmaView:
    """A VMA as a snapshot reports it; ``start``/``end``/``pgoff`` in pages from the base."""

    start: int
    end: int
    perms: str
    backing: str  # "anon" | "shared-anon" | file name
    pgoff: int
    flags: str  # sorted subset of SNAPSHOT_VMFLAGS, space-separated

    def as_list(self) -> list:
        return [self.start, self.end, self.perms, self.backing, self.pgoff, self.flags]


def snapshot_flags(mnemonics) -> str:
    """The space-separated, sorted subset of VmFlags a snapshot reports."""
    wanted = set(abi.SNAPSHOT_VMFLAGS)
    return " ".join(sorted(m for m in mnemonics if m in wanted))


def page_char(pagemap_word: int, mapped: bool) -> str:
    """The snapshot character for one page from its pagemap word."""
    if pagemap_word & abi.PM_GUARD_REGION:
        return PAGE_GUARD
    if pagemap_word & abi.PM_PRESENT:
        return PAGE_PRESENT
    if pagemap_word & abi.PM_SWAP:
        return PAGE_SWAPPED
    return PAGE_EMPTY if mapped else PAGE_NONE


def snapshot_value(vmas: list[VmaView], pages: str) -> dict:
    return {"vmas": [v.as_list() for v in vmas], "pages": pages}


def scan_value(regions, walk_end: int, base: int) -> dict:
    """A ``pagemap_scan`` record's value: ``regions`` as ``[start, end, [category names]]``
    and ``walk_end``, addresses in pages from ``base`` (the arena base)."""
    return {"regions": [[(s - base) // abi.PAGE_SIZE, (e - base) // abi.PAGE_SIZE,
                         abi.page_categories(c)] for s, e, c in regions],
            "walk_end": (walk_end - base) // abi.PAGE_SIZE}


def to_json(records: list[dict]) -> str:
    """The JSON array, one record per line (still one JSON document)."""
    if not records:
        return "[]"
    return "[\n" + ",\n".join(json.dumps(r, separators=(", ", ": ")) for r in records) + "\n]"


# ---------------------------------------------------------------------------
# Text rendering for people.


def _describe_op(raw: dict) -> str:
    parts = [raw.get("op", "?")]
    for key, value in raw.items():
        if key in ("op", "child", "note"):
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        parts.append(f"{key}={value}")
    return " ".join(parts)


def draw_pages(value: dict) -> str:
    """A row of page characters with ``|`` at every VMA boundary inside the arena."""
    pages = value["pages"]
    bounds = set()
    for start, end, *_ in value["vmas"]:
        bounds.add(start)
        bounds.add(end)
    out = []
    for i, ch in enumerate(pages):
        if i in bounds:
            out.append("|")
        out.append(ch)
    if len(pages) in bounds:
        out.append("|")
    return "".join(out)


def render_text(records: list[dict], ops: list[dict] | None = None, indent: str = "") -> str:
    """One line per op; a snapshot adds its page row and one line per VMA."""
    lines = []
    for rec in records:
        raw = ops[rec["i"]] if ops is not None and rec["i"] < len(ops) else {"op": rec["op"]}
        head = f"{indent}{rec['i']:>3} {_describe_op(raw):<48} -> {rec['ret']}"
        if "to" in rec:
            head += f" to={rec['to']}"
        value = rec.get("value")
        if rec["op"] == "touch" and value is not None:
            head += "  [" + " ".join(str(v) if v != FAULT else "F" for v in value) + "]"
        if rec["op"] == "pagemap_scan" and value is not None:
            head += "  " + " ".join(f"[{s},{e}){'+'.join(c) or '-'}" for s, e, c in value["regions"])
            head += f" walk_end={value['walk_end']}"
        if rec["op"] == "uffd_copy" and value is not None:
            head += f"  copied={value}"
        lines.append(head)
        if rec["op"] == "snapshot" and value is not None:
            lines.append(f"{indent}      {draw_pages(value)}")
            for start, end, perms, backing, pgoff, flags in value["vmas"]:
                lines.append(f"{indent}      [{start},{end}) {perms} {backing} pgoff={pgoff}"
                             + (f" {flags}" if flags else ""))
        if rec["op"] == "fork" and value is not None:
            child_ops = raw.get("child") if isinstance(raw.get("child"), list) else None
            lines.append(render_text(value, child_ops, indent + "      | "))
    return "\n".join(lines)
