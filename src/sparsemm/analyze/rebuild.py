"""Rebuild a real process's layout as one op script, so the model (any design) and the kernel can run it.

Owns ``Layout`` (the script plus where each original VMA went) and ``layout_script``. Every
guard ``find_guards`` found becomes ``madvise guard_install`` inside one ``mmap`` spanning the
guard and its mergeable neighbours; decommitted payload likewise, as ``mprotect(PROT_NONE)``
(or, ``with_payload``, as a guard install); every other VMA is an ``mmap`` of the same size,
protection and backing; every guard marker the process already holds is a
``madvise guard_install`` at its place. Gaps are compressed. Reads
``MapEntry``/``Classification``; runs nothing.
"""

from __future__ import annotations

import itertools
import operator
import re
from dataclasses import dataclass, field

from sparsemm import abi
from sparsemm._gc import gc_paused
from sparsemm.analyze.guards import Classification, GuardSide, Role
from sparsemm.analyze.maps import MapEntry, MapKind
from sparsemm.opscript.script import (MAX_ARENA_PAGES, MAX_FILE_PAGES, MAX_POPULATE_PAGES,
                                      MAX_TOTAL_FILE_PAGES, MAX_TOUCH_PAGES)

__all__ = ["Layout", "Placed", "Unit", "LayoutError", "layout_script", "build_layout",
           "REPRODUCIBLE_ARENA_BYTES", "TOUCH_MODES", "MAX_TOUCHED_PAGES"]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
PAGE = abi.PAGE_SIZE

#: The arena the kernel can hold in a fresh Python child: from ARENA_BASE (16 TiB) up to
#: opscript.script.ARENA_LIMIT, below where a PIE interpreter (0x55…/0x56…) and its heap are loaded.
REPRODUCIBLE_ARENA_BYTES = MAX_ARENA_PAGES * PAGE
#: The most pages a rebuild touches (an op script may populate no more, opscript.script):
#: 4 GiB. Beyond it, ``touch="auto"`` falls back from ``rss`` to ``first`` with a note and an
#: explicit ``touch="rss"`` is a ``LayoutError``.
MAX_TOUCHED_PAGES = MAX_POPULATE_PAGES

TOUCH_MODES = ("auto", "rss", "first", "none")

#: Kinds rebuilt as private anonymous memory ([vdso], [vvar], [stack] and other specials
#: included: the script format has no way to make a VM_PFNMAP or VM_GROWSDOWN VMA).
_ANON_KINDS = frozenset({MapKind.ANON, MapKind.HEAP, MapKind.STACK, MapKind.VDSO, MapKind.VVAR,
                         MapKind.SPECIAL})
#: Kinds whose pages a touch reproduces (specials are not memory the process filled).
_TOUCH_ANON_KINDS = frozenset({MapKind.ANON, MapKind.HEAP, MapKind.STACK})
#: Kinds behind the note that specials are rebuilt as private anonymous memory.
_SPECIAL_KINDS = frozenset({MapKind.VDSO, MapKind.VVAR, MapKind.STACK, MapKind.SPECIAL})

#: The touch modes in words, for notes people read.
TOUCH_WORDS = {"rss": "each mapping's resident pages (smaps Rss)",
               "first": "the first page of each accessible anonymous mapping",
               "none": "none"}

#: Compression levels tried in order until the arena fits: (granule, shrink reservations).
#: Gaps of at least two granules become one granule plus the gap modulo the granule, so
#: every address keeps its offset modulo the granule (1 GiB: PMD and PTE tables the same).
_LEVELS = ((GiB, False), (2 * MiB, False), (GiB, True), (2 * MiB, True))


class LayoutError(ValueError):
    """The layout cannot be rebuilt (too large an arena even after compression). One-line ``str``."""


@dataclass(slots=True)
class Placed:
    """One original VMA in the rebuilt arena. ``at``/``npages`` are arena pages."""

    entry: MapEntry
    role: Role
    at: int  # pages from the arena base
    npages: int  # pages (smaller than the original only for a shrunk reservation)
    unit: int  # index into Layout.units
    category: str  # "rw", "guard", "payload", "reservation", "file", "other": the plot's colours
    guard: bool = False  # installed as a guard in this layout (a guard, or payload with_payload)
    markers: list[tuple[int, int]] = field(default_factory=list)  # existing marker runs: (at, npages)


@dataclass(slots=True)
class Unit:
    """One ``mmap`` of the script: a lone VMA, or a guard span (guards + the neighbours they
    merge with under markers). ``first``/``last`` index ``Layout.placed``."""

    first: int
    last: int
    at: int  # pages
    npages: int
    prot: str  # the script's prot string of the mmap
    backing: str  # "anon", "shared-anon" or "file"
    file: str | None = None  # script file name
    pgoff: int = 0  # pages
    shared: bool = False
    noreserve: bool = False  # MAP_NORESERVE: also the flag that keeps it apart from its neighbour
    guards: int = 0

    @property
    def is_span(self) -> bool:
        return self.guards > 0


@dataclass(slots=True)
class Layout:
    """The rebuilt layout: ``script`` (an docs/opscript.md document) and the bookkeeping behind it."""

    script: dict
    placed: list[Placed]
    units: list[Unit]
    vmas: int  # VMAs of the original ([vsyscall] excluded): what the vma design must give
    guards: int
    arena_pages: int
    granule: int  # bytes: addresses are preserved modulo this
    shrunk_reservations: int  # reservations made smaller to fit the arena
    touch: str  # the resolved touch mode
    touched_pages: int
    files: dict[str, str] = field(default_factory=dict)  # original path -> script file name
    separated: int = 0  # adjacent unit pairs kept apart by MAP_NORESERVE alternation
    notes: list[str] = field(default_factory=list)
    with_payload: bool = False  # decommitted payload installed as guards too (else mprotect(PROT_NONE))
    payload: int = 0  # decommitted payload ranges among the guard installs
    existing_markers: int = 0  # guard_install ops for markers the process already holds

    def as_is_script(self) -> dict:
        """The script with the process as it was: the guards found by the policy as
        ``mprotect(PROT_NONE)`` (the VMAs they were) and the existing markers as markers.
        Run under the ``pte`` design it must give the original's VMA count. O(ops)."""
        ops = []
        installed = {(p.at, p.npages) for p in self.placed if p.guard}
        for op in self.script["ops"]:
            if op["op"] == "madvise" and (op["at"], op["len"]) in installed:
                op = {"op": "mprotect", "at": op["at"], "len": op["len"], "prot": "none"}
            ops.append(op)
        return {**self.script, "note": self.script["note"] + " (as the process was)", "ops": ops}


def _prot(prot: int) -> str:
    s = ("r" if prot & abi.PROT_READ else "") + ("w" if prot & abi.PROT_WRITE else "") + \
        ("x" if prot & abi.PROT_EXEC else "")
    return s or "none"


def _backing_of(kind: MapKind, shared: bool) -> str:
    """The script backing ("anon", "shared-anon" or "file") of a VMA of this kind and sharing."""
    if kind in _ANON_KINDS and not shared:
        return "anon"
    if kind is MapKind.SHARED_ANON or (kind in _ANON_KINDS and shared):
        return "shared-anon"
    return "file"


def _mapping_category(kind: MapKind, shared: bool, prot_none: bool) -> str:
    """The plot's colour of a VMA that is neither a guard nor a reservation."""
    backing = _backing_of(kind, shared)
    if prot_none and backing == "anon":
        return "reservation"
    if backing == "file":
        return "file"
    if kind in (MapKind.ANON, MapKind.HEAP) and not shared:
        return "rw"
    return "other"


#: _backing_of() and _mapping_category() for every (shared, kind [, prot_none]), tabulated
#: because they are looked up once per VMA: _BACKING[shared][kind],
#: _MAPPING_CATEGORY[shared][kind][prot_none].
_BACKING = {shared: {kind: _backing_of(kind, shared) for kind in MapKind} for shared in (False, True)}
_MAPPING_CATEGORY = {shared: {kind: (_mapping_category(kind, shared, False),
                                     _mapping_category(kind, shared, True))
                              for kind in MapKind} for shared in (False, True)}


def _categories(vmas: list[MapEntry], roles: list[Role]) -> list[str]:
    """The plot's colour of each VMA: "guard", "payload", "reservation", "file", "rw" or
    "other". O(n)."""
    guard, reservation, payload, table = Role.GUARD, Role.RESERVATION, Role.DECOMMITTED, _MAPPING_CATEGORY
    return ["guard" if role is guard else "reservation" if role is reservation
            else "payload" if role is payload else table[e.shared][e.kind][e.prot == 0]
            for e, role in zip(vmas, roles)]


# Field getters for the per-VMA columns (C-level loops: map(_START, vmas) is a list of vm_start).
_START, _END, _KIND, _ROLE = (operator.attrgetter(name) for name in ("start", "end", "kind", "role"))

_NAME_BAD = re.compile(r"[^A-Za-z0-9._+@=-]")


def _file_names(vmas: list[MapEntry], file_idx: list[int]) -> dict[str, str]:
    """A script file name (no '/', at most 60 chars, unique) for each distinct path.
    ``file_idx``: the indices of the file-backed VMAs. O(len(file_idx))."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for i in file_idx:
        path = vmas[i].path
        if path in names:
            continue
        base = _NAME_BAD.sub("_", path.rsplit("/", 1)[-1] or "file")[:50] or "file"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}#{n}"
        used.add(name)
        names[path] = name
    return names


def _file_pgoffs(vmas: list[MapEntry], file_idx: list[int], names: dict[str, str]
                 ) -> tuple[dict[int, int], dict[str, int]]:
    """(pgoff in pages per vmas index, file pages per script file) for the file-backed VMAs
    ``file_idx``. Offsets are kept unless a file would exceed MAX_FILE_PAGES (or all files
    together MAX_TOTAL_FILE_PAGES: then every file); such a file's offsets are renumbered in
    address order, keeping contiguity between address-adjacent VMAs (what decides a merge).
    O(len(file_idx))."""
    extent: dict[str, int] = {}
    for i in file_idx:
        e = vmas[i]
        extent[e.path] = max(extent.get(e.path, 0), (e.offset + e.size) // PAGE)
    keep_limit = MAX_FILE_PAGES if sum(extent.values()) <= MAX_TOTAL_FILE_PAGES else -1
    pgoffs: dict[int, int] = {}
    cursor: dict[str, int] = {}
    last: dict[str, int] = {}  # path -> vmas index of the previous VMA of that path
    for i in file_idx:
        e = vmas[i]
        if extent[e.path] <= keep_limit:
            pgoffs[i] = e.offset // PAGE
            continue
        j = last.get(e.path)
        if j is not None and j == i - 1 and vmas[j].end == e.start and vmas[j].offset + vmas[j].size == e.offset:
            pgoffs[i] = pgoffs[j] + vmas[j].size // PAGE
        else:
            pgoffs[i] = cursor.get(e.path, 0) + (1 if e.path in cursor else 0)
        cursor[e.path] = pgoffs[i] + e.size // PAGE
        last[e.path] = i
    pages: dict[str, int] = {}
    for i in file_idx:
        e = vmas[i]
        name = names[e.path]
        pages[name] = max(pages.get(name, 0), pgoffs[i] + e.size // PAGE)
    too_big = [n for n, p in pages.items() if p > MAX_FILE_PAGES]
    if too_big:
        raise LayoutError(f"file {too_big[0]!r} needs {pages[too_big[0]]} pages, more than the "
                          f"{MAX_FILE_PAGES} a script file may have")
    if sum(pages.values()) > MAX_TOTAL_FILE_PAGES:
        raise LayoutError(f"the mapped files need {sum(pages.values()):,} pages even renumbered, more "
                          f"than the {MAX_TOTAL_FILE_PAGES:,} a script's files may have in all (each "
                          "page is written when the rebuild creates its file)")
    return pgoffs, pages


def _place(vm_starts: list[int], vm_ends: list[int], shrinkable: list[bool], granule: int, shrink: bool
           ) -> tuple[list[int], list[int], int, int]:
    """(arena byte offset per VMA, size per VMA, arena bytes, reservations shrunk) for the
    VMAs [vm_starts[i], vm_ends[i]) (bytes, address order, at least one). O(n).

    Each VMA keeps its size (a shrinkable one of two granules or more becomes one granule
    plus its size modulo the granule) and the gap before it (one of two granules or more
    becomes one granule plus the gap modulo the granule). The first VMA starts at its
    address modulo the granule.
    """
    two = 2 * granule
    sizes = list(map(operator.sub, vm_ends, vm_starts))
    shrunk = 0
    if shrink:
        shrinks = [can and size >= two for size, can in zip(sizes, shrinkable)]
        shrunk = shrinks.count(True)
        sizes = [granule + size % granule if shrunk_it else size for size, shrunk_it in zip(sizes, shrinks)]
    # The offset of VMA i is the sum of what precedes it: the first VMA's offset, then for
    # each later VMA the size of the one before and the (compressed) gap between them.
    gaps = map(operator.sub, itertools.islice(vm_starts, 1, None), vm_ends)
    steps = [vm_starts[0] % granule]
    steps += [size + (granule + gap % granule if gap >= two else gap) for size, gap in zip(sizes, gaps)]
    starts = list(itertools.accumulate(steps))
    return starts, sizes, starts[-1] + sizes[-1], shrunk


def _units(roles: list, is_guard: list[bool]) -> list[tuple[int, int]]:
    """Contiguous index ranges joined by guards (the merging of find_guards), as
    (first, last) pairs covering 0..len(roles)-1 in order. ``is_guard[i]``: VMA i joins its
    neighbours (``Role.GUARD`` or ``Role.DECOMMITTED``). O(n)."""
    n = len(roles)
    join_next = bytearray(n)  # join_next[i]: i and i+1 are one unit
    # (enum members looked up once: GuardSide.X costs a class attribute lookup per use)
    with_below, with_above = (GuardSide.BELOW, GuardSide.BOTH), (GuardSide.ABOVE, GuardSide.BOTH)
    for i in itertools.compress(range(n), is_guard):
        side = roles[i].side
        if side in with_below:
            join_next[i - 1] = 1
        if side in with_above:
            join_next[i] = 1
    # A unit ends at every i < n-1 not joined to i+1, and at n-1.
    lasts = list(itertools.compress(range(n - 1), map(operator.not_, join_next[:n - 1])))
    lasts.append(n - 1)
    firsts = [0]
    firsts += [i + 1 for i in lasts[:-1]]
    return list(zip(firsts, lasts))


def _resolve_touch(touch: str, vmas: list[MapEntry]) -> str:
    if touch not in TOUCH_MODES:
        raise LayoutError(f"unknown touch mode {touch!r}: use one of {', '.join(TOUCH_MODES)}")
    if touch == "auto":
        return "rss" if vmas and vmas[0].counters is not None else "first"
    if touch == "rss" and vmas and vmas[0].counters is None:
        raise LayoutError("touch mode 'rss' needs smaps (Rss per VMA); this input is maps: "
                          "use --touch first or none")
    return touch


def _free_pages(n: int, skip: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The first ``n`` pages of [0, ``limit``) outside the sorted, disjoint ``(at, npages)``
    runs ``skip``, as ``(offset, npages)`` pieces. O(len(skip))."""
    out: list[tuple[int, int]] = []
    pos = 0
    for at, npages in skip:
        if n <= 0:
            break
        if at > pos:
            take = min(n, at - pos)
            out.append((pos, take))
            n -= take
        pos = max(pos, at + npages)
    if n > 0 and pos < limit:
        out.append((pos, min(n, limit - pos)))
    return out


def _touch_ops(p: Placed, backing: str, mode: str) -> list[dict]:
    """The touch ops for one non-guard VMA (at most MAX_TOUCH_PAGES per op). Pages under
    the markers the process holds are never touched: they had no page in the original."""
    e = p.entry
    if mode == "none" or e.prot == 0 or p.role is Role.GUARD:
        return []
    writable = bool(e.prot & abi.PROT_WRITE)
    skip = [(at - p.at, npages) for at, npages in p.markers]
    if mode == "first":
        if backing != "anon" or e.kind not in _TOUCH_ANON_KINDS:
            return []
        first = _free_pages(1, skip, p.npages)
        if not first:
            return []
        return [{"op": "touch", "at": p.at + first[0][0], "len": 1, "access": "write" if writable else "read"}]
    # rss: Rss pages from the start (reads for file pages, writes for the anonymous part)
    if backing == "anon" and e.kind not in _TOUCH_ANON_KINDS:
        return []
    c = e.counters or {}
    rss = min(c.get("Rss", 0) * KiB // PAGE, p.npages)
    anon = min(c.get("Anonymous", 0) * KiB // PAGE, p.npages) if writable else 0
    plan: list[tuple[int, str]] = []
    if backing == "file":
        if rss > anon:
            plan.append((rss, "read"))
        if anon and not e.shared:
            plan.append((anon, "write"))
    elif rss:
        plan.append((rss, "write" if writable else "read"))
    ops = []
    for n, access in plan:
        for start, count in (_free_pages(n, skip, p.npages) if skip else ((0, n),)):
            for off in range(0, count, MAX_TOUCH_PAGES):
                ops.append({"op": "touch", "at": p.at + start + off,
                            "len": min(MAX_TOUCH_PAGES, count - off), "access": access})
    return ops


def _touches(placed: list[Placed], unit_backing: list[str], mode: str) -> tuple[list[dict], int]:
    """(touch ops of every VMA in address order, pages they touch): ``_touch_ops`` of each
    ``p`` with the backing of its unit. O(n)."""
    ops: list[dict] = []
    if mode == "none":
        return ops, 0
    guard = Role.GUARD
    touched = 0
    for p in placed:
        if p.role is guard or p.entry.prot == 0:
            continue  # _touch_ops() has nothing for them: skip the call
        for t in _touch_ops(p, unit_backing[p.unit], mode):
            touched += t["len"]
            ops.append(t)
    return ops, touched


def build_layout(entries: list[MapEntry], classification: Classification, *, touch: str = "auto",
                 source: str = "", arena_limit: int = REPRODUCIBLE_ARENA_BYTES,
                 with_payload: bool = False) -> Layout:
    """Rebuild ``entries`` (classified by ``find_guards``) as one op script. O(n + marker runs).

    ``with_payload``: the decommitted payload becomes guard installs too (the second set
    of counts); otherwise it stays PROT_NONE VMAs. The classification's existing marker
    runs are installed at their places in either case.

    Raises ``LayoutError`` when there is nothing to rebuild or no compression level fits
    the arena in ``arena_limit`` bytes.
    """
    with gc_paused():  # one Placed and about one op dict per VMA, none freed: see sparsemm._gc
        return _build_layout(entries, classification.roles, touch, source, arena_limit, with_payload,
                             classification.markers)


def _build_layout(entries: list[MapEntry], all_roles: list, touch: str, source: str,
                  arena_limit: int, with_payload: bool = False, markers: list | None = None) -> Layout:
    # The VMAs ([vsyscall] is not one) with their verdicts; zip() semantics if the lengths differ.
    vsyscall = MapKind.VSYSCALL
    m = min(len(entries), len(all_roles))
    if vsyscall in map(_KIND, entries[:m]):
        vmas = [e for e in entries[:m] if e.kind is not vsyscall]
        roles = [r for e, r in zip(entries, all_roles) if e.kind is not vsyscall]
    else:
        vmas, roles = entries[:m], all_roles[:m]
    if not vmas:
        raise LayoutError("no VMAs to rebuild")
    n = len(vmas)
    mode = _resolve_touch(touch, vmas)
    vm_roles = list(map(_ROLE, roles))
    is_guard = list(map(operator.is_, vm_roles, itertools.repeat(Role.GUARD)))  # role is GUARD, per VMA
    # Decommitted payload is rebuilt as the program made it: inside one mmap with its
    # neighbours, then mprotect(PROT_NONE) (or, with_payload, a guard install like a guard).
    payload_at = list(map(operator.is_, vm_roles, itertools.repeat(Role.DECOMMITTED)))
    n_payload = payload_at.count(True)
    joins = list(map(operator.or_, is_guard, payload_at)) if n_payload else is_guard
    payload = 0
    if with_payload and n_payload:
        payload, is_guard = n_payload, joins
    # Existing markers by VMA (indices into vmas: entries without [vsyscall], which holds none).
    runs_of: dict[int, list] = {}
    if markers:
        vma_index = {id(e): k for k, e in enumerate(vmas)}
        for m in markers:
            runs_of.setdefault(vma_index[id(entries[m.index])], []).append(m)
    unit_ranges = _units(roles, joins)
    backings = [_BACKING[e.shared][e.kind] for e in vmas]

    # Shrinkable: a lone PROT_NONE VMA nothing touches (a reservation) - last-resort compression.
    shrinkable = [False] * n
    for i, j in unit_ranges:
        if i == j and vmas[i].prot == 0 and i not in runs_of:  # markers keep their offsets
            shrinkable[i] = True
    vm_starts = list(map(_START, vmas))
    vm_ends = list(map(_END, vmas))
    for granule, shrink in _LEVELS:
        starts, sizes, arena_bytes, shrunk = _place(vm_starts, vm_ends, shrinkable, granule, shrink)
        if arena_bytes <= arena_limit:
            break
    else:
        raise LayoutError(f"the layout needs {arena_bytes / TiB:.1f} TiB of arena even compressed; "
                          f"at most {arena_limit / TiB:.1f} TiB can be rebuilt")

    file_idx = list(itertools.compress(range(n), map("file".__eq__, backings)))  # file-backed VMAs
    names = _file_names(vmas, file_idx)
    pgoffs, file_pages = _file_pgoffs(vmas, file_idx, names)

    unit_of = [u for u, (i, j) in enumerate(unit_ranges) for _ in range(j + 1 - i)]  # per VMA
    placed = [Placed(e, role, s // PAGE, z // PAGE, u, category, g)
              for e, role, s, z, u, category, g in zip(vmas, vm_roles, starts, sizes, unit_of,
                                                       _categories(vmas, vm_roles), is_guard)]
    for k, runs in runs_of.items():
        p = placed[k]
        base = p.entry.start
        p.markers = [(p.at + (m.start - base) // PAGE, (m.end - m.start) // PAGE) for m in runs]

    units: list[Unit] = []
    for i, j in unit_ranges:
        # The unit's VMA that gives the mmap its protection and backing: its first non-guard.
        if i == j:
            base_i, guards_in = i, int(is_guard[i])
        else:
            try:
                base_i = joins.index(False, i, j + 1)
            except ValueError:
                base_i = i  # guards only
            guards_in = is_guard[i:j + 1].count(True)
        base = vmas[base_i]
        backing = backings[base_i]
        head, tail = placed[i], placed[j]
        unit = Unit(first=i, last=j, at=head.at, npages=tail.at + tail.npages - head.at,
                    prot=_prot(base.prot), backing=backing,
                    file=names.get(base.path) if backing == "file" else None,
                    pgoff=pgoffs.get(i, 0), shared=base.shared, guards=guards_in)
        unit.noreserve = _base_noreserve(unit, base)
        units.append(unit)

    # Keep apart what the original kept apart. Two adjacent units the rebuild could merge
    # (same backing, a protection in common under some design, contiguous file offsets)
    # differ in VM_NORESERVE (MAP_NORESERVE), which is_mergeable_vma() compares.
    separated = 0
    prev: Unit | None = None
    for u in units:
        if prev is not None and _could_merge(prev, u, placed):
            separated += 1
            if prev.noreserve == u.noreserve:
                u.noreserve = not u.noreserve
        prev = u

    ops: list[dict] = []
    for u in units:
        flags = ["shared" if u.shared else "private"]
        if u.backing != "file":
            flags.append("anonymous")
        if u.noreserve:
            flags.append("noreserve")
        op = {"op": "mmap", "at": u.at, "len": u.npages, "prot": u.prot, "flags": flags}
        if u.backing == "file":
            op["file"], op["pgoff"] = u.file, u.pgoff
        ops.append(op)
    unit_backings = [u.backing for u in units]
    touch_ops, touched = _touches(placed, unit_backings, mode)
    notes = []
    if touched > MAX_TOUCHED_PAGES:
        if touch != "auto":
            raise LayoutError(f"the rebuild would touch {touched:,} pages ({touched * PAGE / GiB:,.1f} GiB, "
                              f"smaps Rss); at most {MAX_TOUCHED_PAGES:,} ({MAX_TOUCHED_PAGES * PAGE // GiB} "
                              "GiB) can be: use --touch first or none")
        notes.append(f"the smaps Rss is {touched:,} pages, more than the {MAX_TOUCHED_PAGES:,} a rebuild "
                     "touches: it touched the first page of each mapping instead (page tables are then a "
                     "lower bound)")
        mode = "first"
        touch_ops, touched = _touches(placed, unit_backings, mode)
    ops += touch_ops
    installs = [(p.at, p.npages, True) for p in itertools.compress(placed, is_guard)]
    guards = len(installs)
    marker_runs = [run for k in sorted(runs_of) if not joins[k] for run in placed[k].markers]
    protnone = [] if payload or not n_payload else \
        [(p.at, p.npages, False) for p in itertools.compress(placed, payload_at)]
    if marker_runs or protnone:  # in address order (a run inside a guard or payload goes with it)
        installs = sorted(installs + [(at, npages, True) for at, npages in marker_runs] + protnone)
    ops += [{"op": "madvise", "at": at, "len": npages, "advice": "guard_install"} if install else
            {"op": "mprotect", "at": at, "len": npages, "prot": "none"} for at, npages, install in installs]

    arena_pages = max(1, -(-arena_bytes // PAGE))
    what = f"{guards} guards" if not payload else f"{guards - payload} guards and {payload} payload ranges"
    if marker_runs:
        what += f" and {len(marker_runs)} existing marker runs"
    shown = (source or "a process").encode("utf-8", "backslashreplace").decode("utf-8")
    script = {
        "note": (f"layout of {shown}: {n} VMAs, {what} as "
                 f"guard_install; long gaps shortened, offsets within {_fmt_bytes(granule)} kept; "
                 f"pages touched: {TOUCH_WORDS[mode]}"),
        "arena_pages": arena_pages,
        "files": {name: {"pages": file_pages[name]} for name in sorted(file_pages)},
        "ops": ops,
    }
    if shrunk:
        notes.append(f"{shrunk} PROT_NONE reservation(s) shrunk to fit the arena (same size modulo "
                     f"{_fmt_bytes(granule)})")
    if not _SPECIAL_KINDS.isdisjoint(map(_KIND, vmas)):
        notes.append("[vdso], [vvar], [stack] and other special VMAs are rebuilt as private "
                     "anonymous memory of the same size and protection")
    return Layout(script=script, placed=placed, units=units, vmas=n, guards=guards,
                  arena_pages=arena_pages, granule=granule, shrunk_reservations=shrunk, touch=mode,
                  touched_pages=touched, files=names, separated=separated, notes=notes,
                  with_payload=with_payload, payload=payload, existing_markers=len(marker_runs))


def _base_noreserve(u: Unit, base: MapEntry) -> bool:
    """MAP_NORESERVE as the original had it: smaps ``nr`` of the unit's base VMA (its first
    non-guard) when known, else for PROT_NONE private memory (reservations; glibc and
    PartitionAlloc reserve that way)."""
    if u.backing == "shared-anon":
        return False
    if base.vmflags is not None:
        return "nr" in base.vmflags
    return u.prot == "none" and not u.shared


def _edge_prots(u: Unit, p: Placed, low: bool) -> set[str]:
    """Protections the VMA at a unit's edge can have across the designs: a guard's, and
    those of an existing marker run at that edge (``low``: the unit's first page), are
    both PROT_NONE (the vma design) and the unit's."""
    if p.guard or p.role is Role.DECOMMITTED:
        return {"none", u.prot}
    if p.markers:
        at, npages = p.markers[0] if low else p.markers[-1]
        if (at == p.at) if low else (at + npages == p.at + p.npages):
            return {"none", u.prot}
    return {u.prot}


def _could_merge(a: Unit, b: Unit, placed: list[Placed]) -> bool:
    """Could the rebuild merge unit ``a`` with the next unit ``b`` under some design?"""
    pa, pb = placed[a.last], placed[b.first]
    if pa.at + pa.npages != pb.at or a.backing != b.backing or a.backing == "shared-anon":
        return False
    if not _edge_prots(a, pa, False) & _edge_prots(b, pb, True):
        return False
    if a.backing == "file":
        return a.file == b.file and a.shared == b.shared and a.pgoff + a.npages == b.pgoff
    return True


def layout_script(entries: list[MapEntry], classification: Classification, *, touch: str = "auto",
                  source: str = "") -> dict:
    """The op script of ``build_layout`` (see there). O(n)."""
    return build_layout(entries, classification, touch=touch, source=source).script


def _fmt_bytes(n: int) -> str:
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"
