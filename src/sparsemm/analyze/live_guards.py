"""``sparsemm guards PID``: the guards a live process holds, per VMA, in the manner of ``pmap -X``.

Owns ``GuardListing`` (every VMA holding guard markers or being a PROT_NONE guard VMA by
the guard policy, with its marker runs and totals), its text and JSON forms
(``sparsemm.guards/1``, docs/analyze.md) and the subcommand. Reads the process through
``analyze.snapshot.take`` (smaps, the markers and maps, read close together) and judges
PROT_NONE VMAs with ``analyze.guards``; never changes the process.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from sparsemm.analyze.guards import GuardPolicy, Role, find_guards
from sparsemm.analyze.snapshot import NoAddressSpace, Snapshot, take

__all__ = ["SCHEMA", "GuardListing", "VmaGuards", "list_guards", "render_text", "add_parser"]

SCHEMA = "sparsemm.guards/1"
MARKER, PROT_NONE_VMA = "marker", "prot_none_vma"
_METHOD_WORDS = {"pagemap_scan": "PAGEMAP_SCAN (PAGE_IS_GUARD)", "pagemap_bit58": "pagemap bit 58",
                 "none": "nothing (no guard regions in this kernel)", "unavailable": "nothing"}


@dataclass(slots=True)
class VmaGuards:
    """One VMA with guards: its marker runs, or itself a PROT_NONE guard VMA (``design``)."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    backing: str  # MapKind value: anon, heap, stack, file, memfd, shared-anon, ...
    path: str
    gu: bool | None  # smaps VmFlags has gu (None: no VmFlags)
    design: str  # "marker" (runs inside it) or "prot_none_vma" (the VMA is the guard)
    runs: list[tuple[int, int]] = field(default_factory=list)
    reason: str = ""  # the guard policy's reason for a PROT_NONE guard VMA

    @property
    def guard_bytes(self) -> int:
        if self.design == PROT_NONE_VMA:
            return self.end - self.start
        return sum(e - s for s, e in self.runs)

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "size": self.end - self.start, "perms": self.perms,
                "offset": self.offset, "dev": self.dev, "inode": self.inode, "backing": self.backing,
                "path": self.path, "gu": self.gu, "design": self.design,
                "markers": len(self.runs), "guard_bytes": self.guard_bytes, "reason": self.reason or None}


@dataclass(slots=True)
class GuardListing:
    """``sparsemm guards`` for one process (the JSON is ``to_json()``)."""

    snapshot: Snapshot
    vmas: list[VmaGuards]
    total_vmas: int
    kernel_thread: bool = False
    notes: list[str] = field(default_factory=list)

    def guards(self) -> list[dict]:
        """Every guard, in address order: each marker run, and each PROT_NONE guard VMA."""
        out = []
        for v in self.vmas:
            spans = v.runs if v.design == MARKER else [(v.start, v.end)]
            for s, e in spans:
                out.append({"start": s, "end": e, "size": e - s, "design": v.design,
                            "vma_start": v.start, "vma_end": v.end, "perms": v.perms, "backing": v.backing,
                            "path": v.path})
        return out

    def totals(self) -> dict:
        marker = [v for v in self.vmas if v.design == MARKER]
        vma = [v for v in self.vmas if v.design == PROT_NONE_VMA]
        return {"marker_runs": sum(len(v.runs) for v in marker),
                "marker_bytes": sum(v.guard_bytes for v in marker),
                "vmas_with_markers": len(marker),
                "prot_none_guard_vmas": len(vma), "prot_none_guard_bytes": sum(v.guard_bytes for v in vma),
                "vmas": self.total_vmas}

    def to_json(self) -> dict:
        s = self.snapshot
        return {"schema": SCHEMA, "pid": s.pid, "comm": s.comm, "cmdline": s.cmdline, "kernel": s.kernel,
                "taken_at": s.taken_at, "kernel_thread": self.kernel_thread,
                "method": s.guard_method, "scope": s.read.get("scope"), "read": s.read,
                "guards": self.guards(), "vmas": [v.as_dict() for v in self.vmas],
                "totals": self.totals(), "notes": self.notes}


def list_guards(pid: int | str, *, method: str | None = None, policy: GuardPolicy | None = None,
                scan_all: bool = False) -> GuardListing:
    """Read ``pid`` (or ``"self"``) and list its guards (``scan_all``: scan every VMA, not
    only those flagged ``gu``). A kernel thread or zombie gives an empty listing with a
    note. Raises what ``snapshot.take`` raises."""
    try:
        snap = take(pid, method=method, scan_all=scan_all)
    except NoAddressSpace as exc:
        from datetime import datetime, timezone

        from sparsemm.native.guards import kernel_release

        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        empty = Snapshot(pid=exc.pid, comm=exc.comm, cmdline=[], taken_at=now, uptime_s=None,
                         kernel=kernel_release(), maps="", smaps=None, guards=[], guard_method="none")
        return GuardListing(empty, [], 0, kernel_thread=True, notes=[str(exc) + "."])
    return listing_of(snap, policy)


def listing_of(snap: Snapshot, policy: GuardPolicy | None = None) -> GuardListing:
    """The guards of a snapshot: marker runs per VMA, and the PROT_NONE VMAs the guard
    policy calls guards. O(VMAs + runs)."""
    entries = snap.entries()
    cls = find_guards(entries, policy, snap.guards)
    runs_of = cls.markers_by_vma()
    out = []
    for i, r in enumerate(cls.roles):
        e = r.entry
        runs = runs_of.get(i)
        if r.role is not Role.GUARD and not runs:
            continue
        gu = None if e.vmflags is None else "gu" in e.vmflags
        common = dict(start=e.start, end=e.end, perms=e.perms, offset=e.offset,
                      dev=f"{e.dev_major:02x}:{e.dev_minor:02x}", inode=e.inode, backing=e.kind.value,
                      path=e.path, gu=gu)
        if runs:
            out.append(VmaGuards(**common, design=MARKER, runs=[(m.start, m.end) for m in runs]))
        if r.role is Role.GUARD:
            out.append(VmaGuards(**common, design=PROT_NONE_VMA, reason=f"{r.reason}, {r.side.value}"))
    notes = list(snap.notes)
    scope = snap.read.get("scope")
    if scope == "all" and snap.features.get("smaps_gu"):
        notes.append("every VMA was scanned (--scan-all)")
    elif scope == "all":
        notes.append("this kernel's smaps shows no gu flag (VM_MAYBE_GUARD), so every VMA was scanned")
    elif scope == "gu":
        notes.append(f"scanned the {snap.read.get('scanned_vmas', 0)} VMA(s) whose smaps VmFlags have gu "
                     "(the kernel sets it on every VMA that ever had a marker installed)")
    return GuardListing(snap, out, cls.summary.vmas, notes=notes)


def _k(n: int) -> str:
    return f"{n // 1024:,}K"


def render_text(g: GuardListing) -> str:
    """The listing for people: a pmap -X style table, marker runs under their VMA, totals."""
    s = g.snapshot
    lines = [f"{s.pid}:   {' '.join(s.cmdline) or s.comm}"]
    if g.kernel_thread:
        lines += g.notes
        return "\n".join(lines) + "\n"
    read = s.read
    how = _METHOD_WORDS.get(s.guard_method, s.guard_method)
    lines.append(f"guard markers read with {how}; maps and smaps read {read.get('attempts')} time(s), "
                 f"{'consistent' if read.get('stable') else 'NOT consistent (the process kept changing)'}")
    head = (f"{'Address':>16} {'Perm':4} {'Offset':>8} {'Device':>6} {'Inode':>8} {'Size':>9} "
            f"{'Guards':>6} {'GuardSz':>9} {'Design':<13} Mapping")
    lines.append(head)
    for v in g.vmas:
        name = v.path or f"[{v.backing}]"
        lines.append(f"{v.start:>16x} {v.perms:4} {v.offset:08x} {v.dev:>6} {v.inode:>8} "
                     f"{_k(v.end - v.start):>9} {len(v.runs) if v.design == MARKER else 1:>6} "
                     f"{_k(v.guard_bytes):>9} {'marker' if v.design == MARKER else 'PROT_NONE VMA':<13} {name}"
                     + (f"  (guard policy: {v.reason})" if v.reason else ""))
        for start, end in v.runs:
            lines.append(f"{'':>16}   {start:x}-{end:x} {_k(end - start):>9}")
    t = g.totals()
    lines.append(f"total: {t['marker_runs']:,} marker run(s), {_k(t['marker_bytes'])}, in "
                 f"{t['vmas_with_markers']:,} VMA(s); {t['prot_none_guard_vmas']:,} PROT_NONE guard VMA(s), "
                 f"{_k(t['prot_none_guard_bytes'])}; {t['vmas']:,} VMAs")
    lines += [f"note: {n}" for n in g.notes]
    return "\n".join(lines) + "\n"


def _main(args: argparse.Namespace) -> int:
    from sparsemm.analyze.cli import _guarded

    return _guarded("guards", _run, args)


def _run(args: argparse.Namespace) -> int:
    from sparsemm.analyze.cli import UsageError, _policy

    if args.pid != "self" and not args.pid.isdigit():
        raise UsageError(f"{args.pid!r} is not a pid: give a number or self")
    g = list_guards(args.pid, method=args.method, policy=_policy(args), scan_all=args.scan_all)
    if g.snapshot.guard_method == "unavailable":
        # The kernel has markers but no way to read them: say so, list nothing half-known.
        raise UsageError(g.snapshot.notes[0] if g.snapshot.notes else "guard markers cannot be read here")
    if args.json:
        print(json.dumps(g.to_json(), indent=1))
    else:
        sys.stdout.write(render_text(g))
    return 0


def add_parser(subparsers) -> None:
    """Register ``sparsemm guards`` on ``subparsers``."""
    from sparsemm.analyze.cli import _add_policy_options
    from sparsemm.native.guards import METHODS

    p = subparsers.add_parser(
        "guards", help="the guard markers (and PROT_NONE guard VMAs) of a live process, per VMA",
        description="List the guards a live process holds, per VMA, like pmap -X: guard-marker runs "
                    "read from its page tables (PAGEMAP_SCAN with PAGE_IS_GUARD, or pagemap bit 58), and "
                    "the PROT_NONE VMAs the guard policy recognises as guards.")
    p.add_argument("pid", help="pid, or self")
    p.add_argument("--json", action="store_true", help="print JSON (schema in docs/analyze.md)")
    p.add_argument("--method", choices=METHODS, help="how to read markers (default: the best this kernel has)")
    p.add_argument("--scan-all", action="store_true",
                   help="scan every VMA, not only those whose smaps VmFlags have gu")
    _add_policy_options(p)
    p.set_defaults(func=_main)
