"""Guard finder: which VMAs of a parsed map are guards, decommitted payload or reservations, and what each design makes of them.

Owns ``GuardPolicy`` (the documented, configurable decision rule), ``GuardCost`` (one
guard's price under the VMA design vs as PTE markers, from ``data/cost_constants.json``)
and ``Classification`` (per-VMA roles, the guard markers the process already holds, and
the predicted VMA counts for the ``pte`` and ``tree`` designs). It reads ``MapEntry``
records and marker runs only; it does not touch /proc or the model.

Vocabulary (addresses grow to the right)::

     L        G        R
   rw-p  |  ---p  |  rw-p        G is a guard; side BOTH: a "sandwich". As a marker,
                                 L+G+R become one VMA (-2). In the tree design G
                                 leaves the VMA list but L and R stay apart (-1).
   ---p  |  rw-p                 a glibc (< 2.42) thread stack: the guard's mergeable
     G        R                  neighbour lies ABOVE it (-1 either way).
   rw-p  |  ---p (16 GiB)        a pool reservation: turning it into markers would need
     L        G                  ~8192 PTE tables (32 MiB), so it stays a VMA.

The strict rule (a guard is a ``---p`` of at most 64 KiB between two anonymous ``rw-p``),
``GuardPolicy.strict()`` (``--strict-guards``; the counts of the bundled samples, docs/samples.md), gives renderer 1400 -> 984 / 1188, browser 815 -> 711 / 760,
python 535 -> 139 / 335 (VMAs with markers / with tree entries). The default
``GuardPolicy()`` differs on purpose in two ways, both visible on the renderer:

* a neighbour may be any accessible private anonymous VMA (``r--p``, ``rwxp``...), not
  only ``rw-p``: the guard merges with it all the same once its protection matches;
* a PROT_NONE range larger than ``max_guard_bytes`` that touches anonymous memory is
  not dropped but priced: markers for it may cost no more page-table memory than its
  VMAs (PartitionAlloc's ``---p 2036K`` between two super pages falls in 2 MiB blocks
  its neighbours already populate, so it costs 0).

A PROT_NONE range larger than ``max_guard_bytes`` that passes the cost test is not a guard
page: in Chromium it is PartitionAlloc's decommitted super-page payload (the ``---p
2036K`` between a super page's metadata and its next slot span). Such ranges get their
own role, ``Role.DECOMMITTED`` ("decommitted payload"), and two sets of counts are kept:
guards only, and guards plus decommitted payload converted to markers.

Default-policy counts (VMAs -> with markers / with tree entries), guards only and with the
payload: renderer 1400 -> 958 / 1175 (225 guards: the strict rule's 212 and 13 small sandwiches
between anonymous ``r--p``), with its 119 ranges of decommitted payload (117 sandwiched)
-> 722 / 1056; browser 815 -> 711 / 760 (55 guards), with 10 payload ranges -> 691 / 750;
python 535 -> 139 / 335 (200 guards, no payload: the 15 ``---p 65404K`` tails of glibc's
64 MiB malloc heaps need 30+ PTE tables each and stay reservations).
Neither rule sees anon_vma compatibility (invisible in /proc), so both may over-merge
neighbours the kernel would keep apart.

Markers the process already holds (``MADV_GUARD_INSTALL``, read from its page tables)
are ``MarkerRun`` s, each inside one VMA. They do not change the roles; they change what
the designs make of the VMAs holding them (``pte``: nothing; ``tree``: each run becomes
an entry and splits its VMA; ``vma``: each run becomes a PROT_NONE VMA).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sparsemm import abi
from sparsemm._gc import gc_paused
from sparsemm.analyze.maps import ANON_PRIVATE_KINDS, MapEntry, MapKind
from sparsemm.model.costs import CostConstants, constants

__all__ = [
    "CostConstants",
    "load_cost_constants",
    "GuardPolicy",
    "Role",
    "GuardSide",
    "GuardCost",
    "VmaRole",
    "MarkerRun",
    "GuardSummary",
    "Classification",
    "find_guards",
    "assign_markers",
    "vma_pieces",
    "guard_cost",
    "MERGE_IGNORED_VMFLAGS",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: VmFlags mnemonics that do not stop a guard from merging with its neighbour once its
#: protection matches: the protection bits themselves (rd wr ex; mr mw me are the same for
#: every private anonymous mapping), "ac" (VM_ACCOUNT: mm/mprotect.c mprotect_fixup() adds
#: it when a private mapping first becomes writable) and the sticky flags the kernel ignores
#: for merging (VM_IGNORE_MERGE: "sd" VM_SOFTDIRTY, "gu" VM_MAYBE_GUARD).
MERGE_IGNORED_VMFLAGS = frozenset({"rd", "wr", "ex", "mr", "mw", "me", "ac", "sd", "gu"})


# --- cost constants: one place, ``sparsemm.model.costs`` ----------------------------------

load_cost_constants = constants  # the packaged constants (cost_constants.json), read once


# --- policy --------------------------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class GuardPolicy:
    """How to tell a guard from a reservation. Only private anonymous ``PROT_NONE`` VMAs are
    candidates, and only those touching (``prev.end == start`` or ``next.start == end``) an
    accessible private anonymous VMA they would merge with if their protection matched.

    A candidate of at most ``max_guard_bytes`` is a guard. One larger than
    ``max_borderline_bytes`` (if set) is a reservation. In between, it is decommitted
    payload (``Role.DECOMMITTED``: not a guard page, but memory the allocator gave back
    inside used memory) when ``marker_bytes <= cost_ratio * vma_bytes`` (see
    ``guard_cost``): keeping it as a VMA costs more kernel memory than the page tables its
    markers would add; else a reservation. A PROT_NONE VMA
    that touches nothing mergeable is a reservation if larger than ``max_guard_bytes``,
    else a plain mapping (an isolated guard page: markers need a VMA to live in).
    """

    max_guard_bytes: int = 64 * KiB  # always a guard at or below this size (the strict rule's bound)
    max_borderline_bytes: int | None = 1 * GiB  # never guard nor payload above this size (None: no bound)
    cost_ratio: float = 1.0  # >1 favours markers, <1 favours keeping VMAs
    neighbour_perms: str | None = None  # e.g. "rw-p": neighbours must have exactly these perms
    assume_anon_vma: bool = True  # maps only: touching anon neighbours have an anon_vma (AVC cost)
    assume_neighbour_tables: bool = True  # maps only: neighbours populate the 2 MiB block at the boundary
    constants: CostConstants = field(default_factory=load_cost_constants)

    def __post_init__(self) -> None:
        if self.max_guard_bytes < 0 or self.cost_ratio < 0:
            raise ValueError("GuardPolicy: max_guard_bytes and cost_ratio must be >= 0")
        if self.max_borderline_bytes is not None and self.max_borderline_bytes < self.max_guard_bytes:
            raise ValueError("GuardPolicy: max_borderline_bytes must be >= max_guard_bytes (or None)")
        if self.neighbour_perms is not None and (len(self.neighbour_perms) != 4 or self.neighbour_perms[3] != "p"):
            raise ValueError(f"GuardPolicy: neighbour_perms {self.neighbour_perms!r} is not a private maps "
                             "permission column like 'rw-p'")

    @classmethod
    def strict(cls) -> GuardPolicy:
        """The strict rule: a guard is a ``---p`` of at most 64 KiB next to an anonymous
        ``rw-p``; larger ones are never guards nor decommitted payload."""
        return cls(max_guard_bytes=64 * KiB, max_borderline_bytes=64 * KiB, neighbour_perms="rw-p")

    @classmethod
    def table_7_1(cls) -> GuardPolicy:
        """Deprecated old name of ``strict()``."""
        return cls.strict()


class Role(enum.StrEnum):
    GUARD = "guard"  # would become a marker / tree entry
    DECOMMITTED = "decommitted payload"  # a large PROT_NONE range inside used memory (cheaper as markers)
    RESERVATION = "reservation"  # PROT_NONE address space that stays a VMA
    MAPPING = "kept"  # everything else (accessible memory, files, isolated guard pages): kept as it is


class GuardSide(enum.StrEnum):
    """Where the anonymous memory a guard would merge with lies, relative to the guard."""

    BOTH = "both"  # below and above, and those two would merge with each other: a sandwich
    BELOW = "below"  # only the previous VMA (lower addresses), e.g. a partition's trailing guard
    ABOVE = "above"  # only the next VMA, e.g. a glibc thread-stack guard


@dataclass(slots=True, frozen=True)
class GuardCost:
    """One PROT_NONE VMA's price in kernel memory under the VMA design vs as PTE markers."""

    vmas_saved: int  # VMAs that disappear if it becomes markers (1, or 2 for a sandwich)
    vma_bytes: int  # what those VMAs cost: struct + maple slot (+ AVC when anon_vma), each
    pte_tables: int  # PTE tables markers need beyond those its neighbours already have
    pmd_tables: int  # likewise PMD tables (one per 1 GiB)
    marker_bytes: int  # (pte_tables + pmd_tables) * page_table_bytes


@dataclass(slots=True)
class VmaRole:
    """The verdict on one entry. ``side`` and ``cost`` are set for every PROT_NONE anonymous
    VMA that touches mergeable memory (guards, decommitted payload, and reservations that
    lost the cost test)."""

    entry: MapEntry
    role: Role
    side: GuardSide | None = None
    cost: GuardCost | None = None
    reason: str = ""  # "small", "cheaper as markers", "markers cost more", "too large", "isolated"


@dataclass(slots=True, frozen=True)
class MarkerRun:
    """Guard markers the process already holds: pages [start, end) (bytes) of the VMA
    ``index`` (into the classified entries). Runs of one VMA are sorted and do not touch."""

    start: int
    end: int
    index: int


@dataclass(slots=True)
class GuardSummary:
    vmas: int  # entries that are VMAs ([vsyscall] is not)
    guards: int
    sandwiches: int  # guards with side BOTH
    one_sided: int  # guards with side BELOW or ABOVE
    reservations: int
    isolated_prot_none: int  # small PROT_NONE anonymous VMAs with nothing to merge with
    vmas_if_markers: int  # pte design: guards become markers, their neighbours merge
    vmas_if_tree: int  # tree design, VMAs stay contiguous: -1 per guard, +1 per interior marker run
    guard_bytes: int  # address space the guards cover
    vma_design_bytes: int  # kernel memory the guards' VMAs cost today (sum of vma_bytes)
    marker_bytes: int  # page-table memory markers would add (sum of marker_bytes)
    payload: int = 0  # Role.DECOMMITTED ranges
    payload_bytes: int = 0  # address space they cover
    vmas_if_markers_with_payload: int = 0  # pte design, guards and decommitted payload as markers
    vmas_if_tree_with_payload: int = 0  # tree design, likewise
    existing_markers: int = 0  # marker runs the process holds (split at VMA boundaries)
    existing_marker_bytes: int = 0
    vmas_with_markers: int = 0  # VMAs holding at least one of them


@dataclass(slots=True)
class Classification:
    roles: list[VmaRole]  # one per input entry, same order
    summary: GuardSummary
    policy: GuardPolicy
    markers: list[MarkerRun] = field(default_factory=list)  # existing markers, address order
    markers_known: bool = False  # the input said which markers exist (a snapshot, a live read)

    def guards(self) -> list[VmaRole]:
        """The guard verdicts, in address order. O(n)."""
        guard = Role.GUARD
        return [r for r in self.roles if r.role is guard]

    def markers_by_vma(self) -> dict[int, list[MarkerRun]]:
        """Existing marker runs grouped by the index of their VMA. O(runs)."""
        out: dict[int, list[MarkerRun]] = {}
        for m in self.markers:
            out.setdefault(m.index, []).append(m)
        return out


# --- the rules ----------------------------------------------------------------------------

def _merge_compatible(a: MapEntry, b: MapEntry) -> bool:
    """Would ``a`` and ``b`` merge if their protections matched (mm/vma.c is_mergeable_vma(),
    as far as maps/smaps show it)? Both private anonymous, same anon name, same VmFlags
    apart from MERGE_IGNORED_VMFLAGS when both are known. anon_vma compatibility and
    userfaultfd contexts are invisible in /proc and assumed compatible. O(1)."""
    # is_anon_private spelled out: this runs twice per PROT_NONE VMA of the map.
    if (a.shared or b.shared or a.kind not in ANON_PRIVATE_KINDS or b.kind not in ANON_PRIVATE_KINDS
            or a.anon_name != b.anon_name):
        return False
    fa, fb = a.vmflags, b.vmflags
    if fa is None or fb is None or fa is fb:  # the parser shares one frozenset per VmFlags text
        return True
    return not ((fa ^ fb) - MERGE_IGNORED_VMFLAGS)


def _extra_tables(start: int, end: int, span: int, below_tables: bool, above_tables: bool) -> int:
    """Page-table pages of ``span`` bytes each that markers in [start, end) need, leaving out
    the boundary blocks a populated neighbour (``below_tables``/``above_tables``) already has
    a table for. O(1)."""
    n = (end - 1) // span - start // span + 1  # the blocks [start, end) touches
    if below_tables and start % span:
        n -= 1  # the guard's first byte is not at a block boundary: the block below has a table
    if n > 0 and above_tables and end % span:
        n -= 1  # likewise its last byte and the block above
    return n if n > 0 else 0


def _pricer(policy: GuardPolicy):
    """``price(start, end, below, above)`` for ``policy``: the ``GuardCost`` fields, as a tuple,
    of the PROT_NONE range [start, end) with mergeable neighbours ``below``/``above`` (None
    where there is none). The constants are read once here, not per guard. O(1) per call."""
    k = policy.constants
    vma_bytes, anon_vma_chain, page_table = k.vma_bytes, k.anon_vma_chain, k.page_table
    pte_span, pmd_span = k.pte_table_span, k.pmd_table_span
    assume_anon_vma, assume_tables = policy.assume_anon_vma, policy.assume_neighbour_tables

    def price(start: int, end: int, below: MapEntry | None, above: MapEntry | None
              ) -> tuple[int, int, int, int, int]:
        # Per neighbour: does it have an anon_vma (then each VMA saved also frees an
        # anon_vma_chain), and does it populate the page tables at the shared boundary?
        # smaps counters tell; for maps the policy's assumptions stand in.
        anon_vma = below_tables = above_tables = False
        if below is not None:
            c = below.counters
            if c is None:
                anon_vma, below_tables = assume_anon_vma, assume_tables
            else:
                anon_vma = bool(c.get("Anonymous", 0) or c.get("Swap", 0) or c.get("Rss", 0))
                below_tables = bool(c.get("Rss", 0))
        if above is not None:
            c = above.counters
            if c is None:
                anon_vma, above_tables = anon_vma or assume_anon_vma, assume_tables
            else:
                anon_vma = anon_vma or bool(c.get("Anonymous", 0) or c.get("Swap", 0) or c.get("Rss", 0))
                above_tables = bool(c.get("Rss", 0))
        both = (below is not None and above is not None and below.perms == above.perms
                and _merge_compatible(below, above))
        vmas_saved = 2 if both else 1
        pte = _extra_tables(start, end, pte_span, below_tables, above_tables)
        pmd = _extra_tables(start, end, pmd_span, below_tables, above_tables)
        return (vmas_saved, vmas_saved * (vma_bytes + (anon_vma_chain if anon_vma else 0)),
                pte, pmd, (pte + pmd) * page_table)

    return price


def guard_cost(entry: MapEntry, below: MapEntry | None, above: MapEntry | None,
               policy: GuardPolicy) -> GuardCost:
    """Price ``entry`` (a PROT_NONE VMA) whose mergeable neighbours are ``below``/``above``
    (None where there is none). The VMA design pays, per VMA it saves, one vm_area_struct
    plus a maple slot, plus an anon_vma_chain if the neighbours have an anon_vma. Markers
    pay one page-table page for every 2 MiB block (PTE table) and 1 GiB block (PMD table)
    the range touches, except the boundary blocks a populated neighbour already has a
    table for. O(1).
    """
    return GuardCost(*_pricer(policy)(entry.start, entry.end, below, above))


def find_guards(entries: list[MapEntry], policy: GuardPolicy | None = None,
                markers: list[tuple[int, int]] | None = None) -> Classification:
    """Classify every entry (sorted, as ``parse_maps`` returns them) and predict the VMA
    counts of the ``pte`` (markers) and ``tree`` designs, guards only and with the
    decommitted payload. O(n + runs).

    The marker count is computed by merging, not by formula: each guard joins the
    neighbour(s) it would merge with, so a chain ``rw|---|rw|---|rw`` collapses to one
    VMA and a guard between two neighbours that would not merge with each other (say
    ``r--p | ---p | rw-p``) joins one of them only. A guard only ever joins address-adjacent
    entries, so the merged VMAs are runs of indices and the VMAs that disappear are the
    distinct joined pairs (i, i+1) - what a union-find over indices would count.

    ``markers``: the guard-marker runs the process already holds, as sorted,
    non-overlapping ``(start, end)`` byte ranges (None: unknown). Each is split at VMA
    boundaries into ``MarkerRun`` s. Raises ``ValueError`` for a run that is not
    page-aligned, overlaps the previous one, or lies (partly) outside every VMA.
    """
    policy = policy or GuardPolicy()
    with gc_paused():  # one VmaRole per entry, none freed: see sparsemm._gc
        c = _find_guards(entries, policy)
    if markers is not None:
        c.markers_known = True
        if markers:
            c.markers = assign_markers(entries, markers)
            _count_markers(c)
    return c


def assign_markers(entries: list[MapEntry], runs: list[tuple[int, int]]) -> list[MarkerRun]:
    """``runs`` (sorted, non-overlapping byte ranges) split at the boundaries of the VMAs
    of ``entries`` into ``MarkerRun`` s. O(n + runs). Raises ``ValueError`` (one line) for a
    run that is unaligned, empty, out of order, or not inside VMAs."""
    page_mask = abi.PAGE_SIZE - 1
    out: list[MarkerRun] = []
    n = len(entries)
    i = 0
    prev_end = -1
    for start, end in runs:
        if not (isinstance(start, int) and isinstance(end, int)):
            raise ValueError(f"guard run {start!r}-{end!r}: addresses must be integers")
        if start >= end or (start | end) & page_mask:
            raise ValueError(f"guard run {start:x}-{end:x} is empty or not page-aligned")
        if start < prev_end:
            raise ValueError(f"guard run {start:x}-{end:x} overlaps or precedes the previous run")
        prev_end = end
        pos = start
        while pos < end:
            while i < n and entries[i].end <= pos:
                i += 1
            if i == n or entries[i].start > pos or not entries[i].is_vma:
                raise ValueError(f"guard run {start:x}-{end:x}: {pos:x} is not inside any VMA of the map")
            e = entries[i]
            stop = min(end, e.end)
            out.append(MarkerRun(pos, stop, i))
            pos = stop
    return out


def vma_pieces(entry: MapEntry, runs: list[MarkerRun]) -> int:
    """How many VMAs are left of ``entry`` when its marker ``runs`` (sorted, not touching)
    are cut out of it, as the ``tree`` design does (0 when they cover it). O(runs)."""
    if not runs:
        return 1
    return len(runs) + 1 - (runs[0].start == entry.start) - (runs[-1].end == entry.end)


def _count_markers(c: Classification) -> None:
    """Add the existing markers to the summary: counts, and the ``tree`` design's splits
    (a run cuts its VMA; a VMA that becomes a guard itself is counted there already)."""
    s = c.summary
    by_vma = c.markers_by_vma()
    s.existing_markers = len(c.markers)
    s.existing_marker_bytes = sum(m.end - m.start for m in c.markers)
    s.vmas_with_markers = len(by_vma)
    guard, payload = Role.GUARD, Role.DECOMMITTED
    for index, runs in by_vma.items():
        role = c.roles[index].role
        delta = vma_pieces(c.roles[index].entry, runs) - 1
        if role is not guard:
            s.vmas_if_tree_with_payload += 0 if role is payload else delta
            s.vmas_if_tree += delta


def _find_guards(entries: list[MapEntry], policy: GuardPolicy) -> Classification:
    n = len(entries)
    roles: list[VmaRole] = []
    append = roles.append
    joined = bytearray(n)  # joined[i]: entries i and i+1 become one VMA under markers
    price = _pricer(policy)
    costs: dict[tuple[int, int, int, int, int], GuardCost] = {}  # frozen: equal prices share one
    max_guard = policy.max_guard_bytes
    max_border = policy.max_borderline_bytes
    cost_ratio = policy.cost_ratio
    neighbour_perms = policy.neighbour_perms
    anon_private_kinds = ANON_PRIVATE_KINDS
    vsyscall = MapKind.VSYSCALL
    # Enum members looked up once: Role.X costs a class attribute lookup per use.
    MAPPING, GUARD, RESERVATION, DECOMMITTED = Role.MAPPING, Role.GUARD, Role.RESERVATION, Role.DECOMMITTED
    BOTH, BELOW, ABOVE = GuardSide.BOTH, GuardSide.BELOW, GuardSide.ABOVE

    guards = sandwiches = reservations = isolated = not_vmas = payload = 0
    guard_bytes = vma_design_bytes = marker_bytes = payload_bytes = 0
    joined_payload = bytearray(n)  # as joined, with the decommitted payload as markers too

    for i, e in enumerate(entries):
        kind = e.kind
        # Only private anonymous PROT_NONE VMAs are candidates; the rest are plain mappings
        # (e.prot != 0 or not e.is_anon_private, spelled out).
        if e.prot or e.shared or kind not in anon_private_kinds:
            if kind is vsyscall:
                not_vmas += 1  # printed by maps, not a VMA
            append(VmaRole(e, MAPPING))
            continue
        start, end = e.start, e.end
        below = above = None
        # A neighbour is one it touches that is accessible, a VMA, has neighbour_perms if the
        # policy asks for them, and would merge with it once its protection matched.
        if i > 0:
            prev = entries[i - 1]
            if (prev.end == start and prev.prot and prev.kind is not vsyscall
                    and (neighbour_perms is None or prev.perms == neighbour_perms)
                    and _merge_compatible(prev, e)):
                below = prev
        if i + 1 < n:
            nxt = entries[i + 1]
            if (nxt.start == end and nxt.prot and nxt.kind is not vsyscall
                    and (neighbour_perms is None or nxt.perms == neighbour_perms)
                    and _merge_compatible(nxt, e)):
                above = nxt
        size = end - start
        if below is None and above is None:
            if size > max_guard:
                append(VmaRole(e, RESERVATION, reason="isolated"))
                reservations += 1
            else:
                append(VmaRole(e, MAPPING, reason="isolated"))
                isolated += 1
            continue
        fields = price(start, end, below, above)
        cost = costs.get(fields)
        if cost is None:
            cost = costs[fields] = GuardCost(*fields)
        vmas_saved, cost_vma_bytes, _, _, cost_marker_bytes = fields
        if vmas_saved == 2:
            side = BOTH
        elif below is not None:
            side = BELOW  # mprotect_fixup() merges with the previous VMA first
            above = None
        else:
            side = ABOVE
        if size <= max_guard:
            role, reason = GUARD, "small"
        elif max_border is not None and size > max_border:
            role, reason = RESERVATION, "too large"
        elif cost_marker_bytes <= cost_ratio * cost_vma_bytes:
            role, reason = DECOMMITTED, "cheaper as markers"
        else:
            role, reason = RESERVATION, "markers cost more"
        append(VmaRole(e, role, side, cost, reason))
        if role is RESERVATION:
            reservations += 1
            continue
        if below is not None:
            joined_payload[i - 1] = 1
        if above is not None:
            joined_payload[i] = 1
        if role is DECOMMITTED:
            payload += 1
            payload_bytes += size
            continue
        guards += 1
        sandwiches += side is BOTH
        guard_bytes += size
        vma_design_bytes += cost_vma_bytes
        marker_bytes += cost_marker_bytes
        if below is not None:
            joined[i - 1] = 1
        if above is not None:
            joined[i] = 1

    vmas = n - not_vmas
    merges = joined.count(1)
    summary = GuardSummary(
        vmas=vmas, guards=guards, sandwiches=sandwiches, one_sided=guards - sandwiches,
        reservations=reservations, isolated_prot_none=isolated,
        vmas_if_markers=vmas - merges, vmas_if_tree=vmas - guards,
        guard_bytes=guard_bytes, vma_design_bytes=vma_design_bytes, marker_bytes=marker_bytes,
        payload=payload, payload_bytes=payload_bytes,
        vmas_if_markers_with_payload=vmas - joined_payload.count(1),
        vmas_if_tree_with_payload=vmas - guards - payload)
    return Classification(roles, summary, policy)
