"""Rebuild a real process's layout as one op script, so the model (any design) and the kernel can run it.

Owns ``Layout`` (the script plus where each original VMA went) and ``layout_script``. Every
guard ``find_guards`` found becomes ``madvise guard_install`` inside one ``mmap`` spanning the
guard and its mergeable neighbours; every other VMA is an ``mmap`` of the same size, protection
and backing. Gaps are compressed. Reads ``MapEntry``/``Classification``; runs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sparsemm import abi
from sparsemm.analyze.guards import Classification, GuardSide, Role
from sparsemm.analyze.maps import MapEntry, MapKind
from sparsemm.opscript.script import MAX_ARENA_PAGES, MAX_FILE_PAGES, MAX_TOUCH_PAGES

__all__ = ["Layout", "Placed", "Unit", "LayoutError", "layout_script", "build_layout",
           "REPRODUCIBLE_ARENA_BYTES", "TOUCH_MODES"]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
PAGE = abi.PAGE_SIZE

#: The arena the kernel can hold in a fresh Python child: from ARENA_BASE (16 TiB) up to
#: 0x5000_0000_0000, below where a PIE interpreter (0x55…/0x56…) and its heap are loaded.
REPRODUCIBLE_ARENA_BYTES = min(0x5000_0000_0000 - abi.ARENA_BASE, MAX_ARENA_PAGES * PAGE)

TOUCH_MODES = ("auto", "rss", "first", "none")

#: Kinds rebuilt as private anonymous memory ([vdso], [vvar], [stack] and other specials
#: included: the script format has no way to make a VM_PFNMAP or VM_GROWSDOWN VMA).
_ANON_KINDS = frozenset({MapKind.ANON, MapKind.HEAP, MapKind.STACK, MapKind.VDSO, MapKind.VVAR,
                         MapKind.SPECIAL})
#: Kinds whose pages a touch reproduces (specials are not memory the process filled).
_TOUCH_ANON_KINDS = frozenset({MapKind.ANON, MapKind.HEAP, MapKind.STACK})

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
    category: str  # "rw", "guard", "reservation", "file", "other": the plot's colours


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
    """The rebuilt layout: ``script`` (an OPSCRIPT.md dict) and the bookkeeping behind it."""

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


def _prot(prot: int) -> str:
    s = ("r" if prot & abi.PROT_READ else "") + ("w" if prot & abi.PROT_WRITE else "") + \
        ("x" if prot & abi.PROT_EXEC else "")
    return s or "none"


def _backing(e: MapEntry) -> str:
    if e.kind in _ANON_KINDS and not e.shared:
        return "anon"
    if e.kind is MapKind.SHARED_ANON or (e.kind in _ANON_KINDS and e.shared):
        return "shared-anon"
    return "file"


def _category(e: MapEntry, role: Role) -> str:
    if role is Role.GUARD:
        return "guard"
    if role is Role.RESERVATION or (e.prot == 0 and _backing(e) == "anon"):
        return "reservation"
    if _backing(e) == "file":
        return "file"
    if e.kind in (MapKind.ANON, MapKind.HEAP) and not e.shared:
        return "rw"
    return "other"


_NAME_BAD = re.compile(r"[^A-Za-z0-9._+@=-]")


def _file_names(vmas: list[MapEntry]) -> dict[str, str]:
    """A script file name (no '/', at most 60 chars, unique) for each distinct path."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for e in vmas:
        if _backing(e) != "file" or e.path in names:
            continue
        base = _NAME_BAD.sub("_", e.path.rsplit("/", 1)[-1] or "file")[:50] or "file"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}#{n}"
        used.add(name)
        names[e.path] = name
    return names


def _file_pgoffs(vmas: list[MapEntry], names: dict[str, str]) -> tuple[dict[int, int], dict[str, int]]:
    """(pgoff in pages per vmas index, file pages per script file). Offsets are kept unless a
    file would exceed MAX_FILE_PAGES; then that file's offsets are renumbered in address
    order, keeping contiguity between address-adjacent VMAs (what decides a merge)."""
    extent: dict[str, int] = {}
    for e in vmas:
        if _backing(e) == "file":
            extent[e.path] = max(extent.get(e.path, 0), (e.offset + e.size) // PAGE)
    pgoffs: dict[int, int] = {}
    cursor: dict[str, int] = {}
    last: dict[str, int] = {}  # path -> vmas index of the previous VMA of that path
    for i, e in enumerate(vmas):
        if _backing(e) != "file":
            continue
        if extent[e.path] <= MAX_FILE_PAGES:
            pgoffs[i] = e.offset // PAGE
            continue
        j = last.get(e.path)
        if j is not None and j == i - 1 and vmas[j].end == e.start and vmas[j].offset + vmas[j].size == e.offset:
            pgoffs[i] = pgoffs[j] + vmas[j].size // PAGE
        else:
            pgoffs[i] = cursor.get(e.path, 0) + (1 if e.path in cursor else 0)
        cursor[e.path] = pgoffs[i] + e.size // PAGE
        last[e.path] = i
    pages = {}
    for i, e in enumerate(vmas):
        if i in pgoffs:
            pages[names[e.path]] = max(pages.get(names[e.path], 0), pgoffs[i] + e.size // PAGE)
    too_big = [n for n, p in pages.items() if p > MAX_FILE_PAGES]
    if too_big:
        raise LayoutError(f"file {too_big[0]!r} needs {pages[too_big[0]]} pages, more than the "
                          f"{MAX_FILE_PAGES} a script file may have")
    return pgoffs, pages


def _place(vmas: list[MapEntry], shrinkable: list[bool], granule: int, shrink: bool
           ) -> tuple[list[int], list[int], int, int]:
    """(arena byte offset per VMA, size per VMA, arena bytes, reservations shrunk). O(n)."""
    pos = vmas[0].start % granule
    starts, sizes = [], []
    shrunk = 0
    prev_end = None
    two = 2 * granule
    for e, can in zip(vmas, shrinkable):
        if prev_end is not None:
            gap = e.start - prev_end
            pos += granule + gap % granule if gap >= two else gap
        size = e.end - e.start
        if shrink and can and size >= two:
            size = granule + size % granule
            shrunk += 1
        starts.append(pos)
        sizes.append(size)
        pos += size
        prev_end = e.end
    return starts, sizes, pos, shrunk


def _units(vmas: list[MapEntry], roles: list) -> list[tuple[int, int]]:
    """Contiguous index ranges joined by guards (the union-find of find_guards, in O(n))."""
    n = len(vmas)
    join_next = [False] * n  # i and i+1 are one unit
    for i, r in enumerate(roles):
        if r.role is not Role.GUARD:
            continue
        if r.side in (GuardSide.BELOW, GuardSide.BOTH):
            join_next[i - 1] = True
        if r.side in (GuardSide.ABOVE, GuardSide.BOTH):
            join_next[i] = True
    out = []
    i = 0
    while i < n:
        j = i
        while j < n - 1 and join_next[j]:
            j += 1
        out.append((i, j))
        i = j + 1
    return out


def _resolve_touch(touch: str, vmas: list[MapEntry]) -> str:
    if touch not in TOUCH_MODES:
        raise LayoutError(f"unknown touch mode {touch!r}: use one of {', '.join(TOUCH_MODES)}")
    if touch == "auto":
        return "rss" if vmas and vmas[0].counters is not None else "first"
    if touch == "rss" and vmas and vmas[0].counters is None:
        raise LayoutError("touch mode 'rss' needs smaps (Rss per VMA); this input is maps: "
                          "use --touch first or none")
    return touch


def _touch_ops(p: Placed, backing: str, mode: str) -> list[dict]:
    """The touch ops for one non-guard VMA (at most MAX_TOUCH_PAGES per op)."""
    e = p.entry
    if mode == "none" or e.prot == 0 or p.role is Role.GUARD:
        return []
    writable = bool(e.prot & abi.PROT_WRITE)
    if mode == "first":
        if backing != "anon" or e.kind not in _TOUCH_ANON_KINDS:
            return []
        return [{"op": "touch", "at": p.at, "len": 1, "access": "write" if writable else "read"}]
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
        for off in range(0, n, MAX_TOUCH_PAGES):
            ops.append({"op": "touch", "at": p.at + off, "len": min(MAX_TOUCH_PAGES, n - off),
                        "access": access})
    return ops


def build_layout(entries: list[MapEntry], classification: Classification, *, touch: str = "auto",
                 source: str = "", arena_limit: int = REPRODUCIBLE_ARENA_BYTES) -> Layout:
    """Rebuild ``entries`` (classified by ``find_guards``) as one op script. O(n).

    Raises ``LayoutError`` when there is nothing to rebuild or no compression level fits
    the arena in ``arena_limit`` bytes.
    """
    pairs = [(e, r) for e, r in zip(entries, classification.roles) if e.is_vma]
    if not pairs:
        raise LayoutError("no VMAs to rebuild")
    vmas = [e for e, _ in pairs]
    roles = [r for _, r in pairs]
    mode = _resolve_touch(touch, vmas)
    unit_ranges = _units(vmas, roles)

    # Shrinkable: a lone PROT_NONE VMA nothing touches (a reservation) - last-resort compression.
    shrinkable = [False] * len(vmas)
    for i, j in unit_ranges:
        if i == j and vmas[i].prot == 0:
            shrinkable[i] = True
    for granule, shrink in _LEVELS:
        starts, sizes, arena_bytes, shrunk = _place(vmas, shrinkable, granule, shrink)
        if arena_bytes <= arena_limit:
            break
    else:
        raise LayoutError(f"the layout needs {arena_bytes / TiB:.1f} TiB of arena even compressed; "
                          f"at most {arena_limit / TiB:.1f} TiB can be rebuilt")

    names = _file_names(vmas)
    pgoffs, file_pages = _file_pgoffs(vmas, names)
    placed = [Placed(e, r.role, s // PAGE, z // PAGE, 0, _category(e, r.role))
              for e, r, s, z in zip(vmas, roles, starts, sizes)]

    units: list[Unit] = []
    for u, (i, j) in enumerate(unit_ranges):
        members = placed[i:j + 1]
        for p in members:
            p.unit = u
        base = next((p.entry for p in members if p.role is not Role.GUARD), members[0].entry)
        backing = _backing(base)
        units.append(Unit(
            first=i, last=j, at=members[0].at, npages=members[-1].at + members[-1].npages - members[0].at,
            prot=_prot(base.prot), backing=backing,
            file=names.get(base.path) if backing == "file" else None,
            pgoff=pgoffs.get(i, 0), shared=base.shared,
            guards=sum(p.role is Role.GUARD for p in members)))

    # Keep apart what the original kept apart. Two adjacent units the rebuild could merge
    # (same backing, a protection in common under some design, contiguous file offsets)
    # differ in VM_NORESERVE (MAP_NORESERVE), which is_mergeable_vma() compares.
    separated = 0
    prev: Unit | None = None
    for u in units:
        u.noreserve = _base_noreserve(u, placed)
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
    touched = 0
    for p in placed:
        for t in _touch_ops(p, units[p.unit].backing, mode):
            touched += t["len"]
            ops.append(t)
    guards = 0
    for p in placed:
        if p.role is Role.GUARD:
            guards += 1
            ops.append({"op": "madvise", "at": p.at, "len": p.npages, "advice": "guard_install"})

    arena_pages = max(1, -(-arena_bytes // PAGE))
    script = {
        "note": (f"layout of {source or 'a process'}: {len(vmas)} VMAs, {guards} guards as "
                 f"guard_install; gaps compressed modulo {_fmt_bytes(granule)}; touch={mode}"),
        "arena_pages": arena_pages,
        "files": {name: {"pages": file_pages[name]} for name in sorted(file_pages)},
        "ops": ops,
    }
    notes = []
    if shrunk:
        notes.append(f"{shrunk} PROT_NONE reservation(s) shrunk to fit the arena (same size modulo "
                     f"{_fmt_bytes(granule)})")
    if any(e.kind in (MapKind.VDSO, MapKind.VVAR, MapKind.STACK, MapKind.SPECIAL) for e in vmas):
        notes.append("[vdso], [vvar], [stack] and other special VMAs are rebuilt as private "
                     "anonymous memory of the same size and protection")
    return Layout(script=script, placed=placed, units=units, vmas=len(vmas), guards=guards,
                  arena_pages=arena_pages, granule=granule, shrunk_reservations=shrunk, touch=mode,
                  touched_pages=touched, files=names, separated=separated, notes=notes)


def _base_noreserve(u: Unit, placed: list[Placed]) -> bool:
    """MAP_NORESERVE as the original had it: smaps ``nr`` when known, else for PROT_NONE
    private memory (reservations; glibc and PartitionAlloc reserve that way)."""
    if u.backing == "shared-anon":
        return False
    e = next((p.entry for p in placed[u.first:u.last + 1] if p.role is not Role.GUARD),
             placed[u.first].entry)
    if e.vmflags is not None:
        return "nr" in e.vmflags
    return u.prot == "none" and not u.shared


def _edge_prots(u: Unit, p: Placed) -> set[str]:
    """Protections the VMA at a unit's edge can have across the designs."""
    return {"none", u.prot} if p.role is Role.GUARD else {u.prot}


def _could_merge(a: Unit, b: Unit, placed: list[Placed]) -> bool:
    """Could the rebuild merge unit ``a`` with the next unit ``b`` under some design?"""
    pa, pb = placed[a.last], placed[b.first]
    if pa.at + pa.npages != pb.at or a.backing != b.backing or a.backing == "shared-anon":
        return False
    if not _edge_prots(a, pa) & _edge_prots(b, pb):
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
