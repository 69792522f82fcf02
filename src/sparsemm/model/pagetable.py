"""PageTable: the model's x86-64 4-level page tables (PGD -> PUD -> PMD -> PTE) and their geometry.

Owns the leaf entries (a present ``Frame`` per page, guard markers as page runs), the
huge PMDs (a THP or the huge zero page mapped by one PMD entry), the set of table pages
at every level, so page-table memory can be counted like the kernel's
``mm_pgtables_bytes``, and the geometry every other module uses (``PTE_SHIFT``,
``HPAGE_PMD_NR``, ``pte_index``, ``pmd_start``). Knows nothing of VMAs or RSS; callers
say what to zap.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

from sparsemm import abi
from sparsemm._invariant import InvariantError

#: A guard PTE marker (``PTE_MARKER_GUARD``): a swap-type entry that faults with SIGSEGV.
GUARD = "GUARD"

# -- geometry: everything below is in page numbers (``addr >> PAGE_SHIFT``) ---------------
#: Entries in one table page at every level.
PTRS_PER_TABLE = abi.PTRS_PER_TABLE
#: log2(PTRS_PER_TABLE): one level up divides a page number by PTRS_PER_TABLE.
TABLE_SHIFT = PTRS_PER_TABLE.bit_length() - 1
#: ``page >> PTE_SHIFT`` is the PTE table holding ``page`` (and the PMD entry above it: one
#: PTE table per PMD entry); ``>> PMD_SHIFT`` its PMD table, ``>> PUD_SHIFT`` its PUD table.
PTE_SHIFT = TABLE_SHIFT
PMD_SHIFT = 2 * TABLE_SHIFT
PUD_SHIFT = 3 * TABLE_SHIFT
#: Pages one PMD entry maps (2 MiB): a PTE table's reach, or one THP.
HPAGE_PMD_NR = PTRS_PER_TABLE
_PTE_INDEX_MASK = PTRS_PER_TABLE - 1
#: Bits of a user address under 4-level paging (the PGD covers ``1 << ADDRESS_BITS`` bytes).
ADDRESS_BITS = abi.PAGE_SHIFT + 4 * TABLE_SHIFT
#: One past the highest page number (64-bit addresses): ``end`` of "every page".
PAGE_LIMIT = 1 << (64 - abi.PAGE_SHIFT)


def pte_index(page: int) -> int:
    """The slot of ``page`` in its PTE table (``pte_index()``), 0..PTRS_PER_TABLE-1."""
    return page & _PTE_INDEX_MASK


def pmd_start(page: int) -> int:
    """The first page the PMD entry above ``page`` maps (``addr & HPAGE_PMD_MASK``, in pages)."""
    return page & ~_PTE_INDEX_MASK


class PageTable:
    """Leaf entries by page number (``addr >> PAGE_SHIFT``) plus the table pages that hold them.

    A page holds nothing, a present ``Frame``, or a guard marker (``GUARD``), never two.
    Storage, all sparse:

    - ``_frames``: dict page -> Frame (O(1) ``get``/``set``/``clear``);
    - ``_tables``: dict PTE-table index (``page >> PTE_SHIFT``) -> set of its pages with a Frame,
      no empty sets, so a range query visits only the tables in range that hold frames;
    - ``_starts`` (a ``SortedInts``) and ``_run_end`` (dict start -> end): the guard markers
      as runs of pages ``[start, end)``, disjoint and never adjacent (adjacent runs
      coalesce), with ``_marker_pages`` their total. Memory O(runs), not O(marker pages);
    - ``pte_tables``/``pmd_tables``/``pud_tables``: the table indices that exist (a table
      at level L covering page p has index ``p >> shift(L)``); read them, never change them;
    - ``_huge``: the PMD entries (``page >> PTE_SHIFT``) that map their 2 MiB directly (a THP
      or the huge zero page): the caller keeps all ``HPAGE_PMD_NR`` pages' entries, as
      base-page entries, and the PMD entry needs no PTE table;
    - ``_deposited``: the huge PMDs (a subset of ``_huge``) that carry a deposited PTE table:
      an anonymous THP or the huge zero page (``pgtable_trans_huge_deposit()``, counted in
      ``mm_pgtables_bytes``); a split turns it into the block's PTE table, a zap frees it.

    A table page is allocated when the first entry below it is installed (a marker run
    allocates every table it covers, as ``madvise_guard_install`` does) and freed by
    ``free_pgtables()``, by ``reclaim_pte_tables()`` (a DONTNEED that empties a whole 2 MiB
    block; other zaps and guard removal keep tables) and by ``move_range()`` (a whole aligned
    block moves its table). Complexity: n frames, r marker runs, T PTE tables holding frames, H huge
    PMDs, k results; single-page ops O(1) plus O(log r) when markers exist; range queries
    O(min(tables in range, T) + k log PTRS_PER_TABLE + log r); marker install/remove
    O(log r + runs touched + frames in range + tables allocated); huge-PMD range operations
    O(min(PMD entries in range, H)).
    """

    __slots__ = ("_frames", "_tables", "_starts", "_run_end", "_marker_pages",
                 "pte_tables", "pmd_tables", "pud_tables", "_huge", "_deposited")

    def __init__(self) -> None:
        self._frames: dict[int, object] = {}
        self._tables: dict[int, set[int]] = {}
        self._starts = SortedInts()
        self._run_end: dict[int, int] = {}
        self._marker_pages = 0
        self.pte_tables: set[int] = set()
        self.pmd_tables: set[int] = set()
        self.pud_tables: set[int] = set()
        self._huge: set[int] = set()
        self._deposited: set[int] = set()

    # -- single pages -------------------------------------------------------

    def get(self, page: int):
        """The entry at ``page``: a Frame, ``GUARD`` or None. O(1), plus O(log r) for a
        page without a frame while markers exist."""
        e = self._frames.get(page)
        if e is None and self._marker_pages:
            s = self._starts.floor(page)
            if s is not None and page < self._run_end[s]:
                return GUARD
        return e

    def has_marker(self, page: int) -> bool:
        """Is ``page`` a guard marker? O(log r)."""
        if not self._marker_pages:
            return False
        s = self._starts.floor(page)
        return s is not None and page < self._run_end[s]

    def set(self, page: int, entry):
        """Install ``entry`` (a Frame or ``GUARD``) at ``page``, replacing what was there and
        allocating the tables on the way (``__pte_alloc``). Returns the replaced entry (a
        Frame, ``GUARD`` or None). O(1), plus O(log r) when markers exist."""
        if entry is GUARD:
            old = self._drop_frame(page)
            if not self._mark(page, page + 1):
                old = GUARD  # it was a marker already
            self.alloc_tables(page)
            return old
        frames = self._frames
        old = frames.get(page)
        if old is None:
            if self._marker_pages and self.has_marker(page):
                self._unmark(page, page + 1)
                old = GUARD
            t = page >> PTE_SHIFT
            pages = self._tables.get(t)
            if pages is None:
                self._tables[t] = {page}
            else:
                pages.add(page)
        frames[page] = entry
        self.pte_tables.add(page >> PTE_SHIFT)
        self.pmd_tables.add(page >> PMD_SHIFT)
        self.pud_tables.add(page >> PUD_SHIFT)
        return old

    def clear(self, page: int):
        """Remove and return the entry at ``page`` (a Frame, ``GUARD`` or None); tables stay.
        O(1), plus O(log r) for a marker."""
        e = self._drop_frame(page)
        if e is None and self._marker_pages and self.has_marker(page):
            self._unmark(page, page + 1)
            return GUARD
        return e

    def _drop_frame(self, page: int):
        e = self._frames.pop(page, None)
        if e is not None:
            t = page >> PTE_SHIFT
            pages = self._tables[t]
            pages.discard(page)
            if not pages:
                del self._tables[t]
        return e

    def __len__(self) -> int:
        """Pages holding an entry: frames plus marker pages. O(1)."""
        return len(self._frames) + self._marker_pages

    def frame_count(self) -> int:
        """Pages holding a Frame. O(1)."""
        return len(self._frames)

    def marker_pages(self) -> int:
        """Pages holding a guard marker. O(1)."""
        return self._marker_pages

    # -- ranges -------------------------------------------------------------

    def frames(self, first: int = 0, end: int = PAGE_LIMIT) -> list:
        """``(page, Frame)`` for every present page in ``[first, end)``, ascending. Each PTE
        table in range that holds frames is probed page by page or sorted, whichever is
        less work: O(min(tables in range, T) + sum over them of min(pages, k_t log k_t))."""
        tabs = self._tables
        if end <= first or not tabs:
            return []
        t0, t1 = first >> PTE_SHIFT, (end - 1) >> PTE_SHIFT
        fr = self._frames
        if t0 == t1:  # the common case: inside one PTE table
            pages = tabs.get(t0)
            if pages is None:
                return []
            if end - first <= len(pages):
                return [(p, fr[p]) for p in range(first, end) if p in pages]
            return [(p, fr[p]) for p in sorted(pages) if first <= p < end]
        if t1 - t0 < len(tabs):
            idx = [t for t in range(t0, t1 + 1) if t in tabs]
        else:
            idx = sorted([t for t in tabs if t0 <= t <= t1])
        out = []
        for t in idx:
            pages = tabs[t]
            lo = t << PTE_SHIFT
            hi = lo + (1 << PTE_SHIFT)
            if lo < first or hi > end:  # cut by the range
                lo, hi = max(lo, first), min(hi, end)
                if hi - lo <= len(pages):
                    out += [(p, fr[p]) for p in range(lo, hi) if p in pages]
                else:
                    out += [(p, fr[p]) for p in sorted(pages) if lo <= p < hi]
            else:
                out += [(p, fr[p]) for p in sorted(pages)]
        return out

    def marker_runs(self, first: int = 0, end: int = PAGE_LIMIT) -> list[range]:
        """The guard-marker runs in ``[first, end)``, clipped to it, ascending, as page
        ``range`` objects (maximal: runs never touch). O(log r + runs in range)."""
        if not self._marker_pages or end <= first:
            return []
        starts, ends = self._starts, self._run_end
        runs = []
        p = starts.floor(first)
        if p is not None and ends[p] > first:
            runs.append(range(first, min(ends[p], end)))
        for q in starts.between(first + 1, end):
            runs.append(range(q, min(ends[q], end)))
        return runs

    def has_markers_in(self, first: int, end: int) -> bool:
        """Is any page of ``[first, end)`` a guard marker? O(log r)."""
        if not self._marker_pages or end <= first:
            return False
        p = self._starts.floor(first)
        if p is not None and self._run_end[p] > first:
            return True
        q = self._starts.ceil(first + 1)
        return q is not None and q < end

    def items(self, first: int = 0, end: int = PAGE_LIMIT) -> list:
        """``(page, entry)`` for every page in ``[first, end)`` with an entry, ascending,
        marker pages expanded one by one. O(frames query + marker pages in range): for
        tests and small ranges; walk ``frames()`` and ``marker_runs()`` otherwise."""
        out = self.frames(first, end)
        runs = self.marker_runs(first, end)
        if runs:
            for r in runs:
                out += [(p, GUARD) for p in r]
            out.sort(key=_page_of)
        return out

    def install_markers(self, first: int, end: int) -> int:
        """Install a guard marker in every slot of ``[first, end)`` that holds no entry (the
        walk of ``madvise_guard_install``; present pages stay, existing markers stay), and
        allocate every PTE/PMD/PUD table covering the range. Returns the markers added.
        O(log r + runs touched + frames in range + tables covering the range)."""
        if end <= first:
            return 0
        added = 0
        cursor = first
        for p, _ in self.frames(first, end):
            if cursor < p:
                added += self._mark(cursor, p)
            cursor = p + 1
        if cursor < end:
            added += self._mark(cursor, end)
        self.alloc_table_range(first, end)
        return added

    def remove_markers(self, first: int, end: int) -> int:
        """Clear every guard marker in ``[first, end)`` (frames and tables stay). Returns the
        markers removed. O(log r + runs touched)."""
        if end <= first or not self._marker_pages:
            return 0
        return self._unmark(first, end)

    def copy_markers_to(self, dst: "PageTable", first: int, end: int, delta: int = 0) -> None:
        """Install in ``dst`` the markers of ``[first, end)``, each moved by ``delta`` pages,
        allocating ``dst``'s tables under them (fork's ``copy_pte_range`` of marker PTEs).
        Slots of ``dst`` that hold a frame keep it. O(log r + runs copied + tables)."""
        for r in self.marker_runs(first, end):
            dst.install_markers(r.start + delta, r.stop + delta)

    def move_range(self, first: int, end: int, dst_first: int) -> None:
        """Move every entry of ``[first, end)`` (frames and markers) to the same offset from
        ``dst_first`` (``move_page_tables``). Source tables stay; destination tables are
        allocated under each moved entry, which the destination maps as base pages (the
        source's huge PMDs in the range end). Where source and destination are 2 MiB aligned
        alike, each whole 2 MiB block of the range moves at the PMD level
        (``move_pgt_entry(NORMAL_PMD/HPAGE_PMD)``): a huge PMD stays huge, and a PTE table
        leaves the source with its entries (the source PMD is then empty). Other huge PMDs
        are split first (``split_huge_pmd``). Preconditions: the destination range holds no
        entries and does not overlap the source (mremap guarantees both), and no huge PMD
        straddles an edge of the source (``split_huge_range`` first).
        O(frames moved + log r + runs moved + tables + min(PMD entries in range, H))."""
        delta = dst_first - first
        pmd_move = not delta & _PTE_INDEX_MASK
        moved_huge = []
        if self._huge:
            for t in self._huge_in(first, end):
                if pmd_move:
                    moved_huge.append((t, t in self._deposited))
                    self._huge.discard(t)
                    self._deposited.discard(t)
                else:
                    self.split_huge_pmd(t << PTE_SHIFT)
        # move_ptes() allocates the destination's table for every part of the range whose
        # source PMD holds a PTE table, entries or not; whole aligned blocks move the table
        t_lo, t_hi = first >> PTE_SHIFT, (end - 1) >> PTE_SHIFT
        if t_hi - t_lo > len(self.pte_tables):
            src_tables = sorted(t for t in self.pte_tables if t_lo <= t <= t_hi)
        else:
            src_tables = [t for t in range(t_lo, t_hi + 1) if t in self.pte_tables]
        moved_tables = []
        partial_tables = src_tables
        if pmd_move:
            lo, hi = (first + _PTE_INDEX_MASK) >> PTE_SHIFT, end >> PTE_SHIFT  # whole blocks
            moved_tables = [t for t in src_tables if lo <= t < hi]
            partial_tables = [t for t in src_tables if not lo <= t < hi]
        moved = [(p, self._drop_frame(p)) for p, _ in self.frames(first, end)]
        runs = self.marker_runs(first, end)
        if runs:
            self._unmark(first, end)
        for p, e in moved:
            self.set(p + delta, e)
        for r in runs:
            self.install_markers(r.start + delta, r.stop + delta)
        for t in partial_tables:
            self.alloc_table_range(max(first, t << PTE_SHIFT) + delta,
                                   min(end, (t + 1) << PTE_SHIFT) + delta)
        dt = delta >> PTE_SHIFT
        for t in moved_tables:
            self.pte_tables.discard(t)
            self.alloc_tables((t + dt) << PTE_SHIFT)
        for t, deposit in moved_huge:
            self.map_huge_pmd((t + dt) << PTE_SHIFT, deposit)
            self.pmd_tables.add((t + dt) >> TABLE_SHIFT)
            self.pud_tables.add((t + dt) >> (2 * TABLE_SHIFT))

    # -- marker runs (private) ------------------------------------------------

    def _mark(self, s: int, e: int) -> int:
        """Mark pages ``[s, e)`` (caller: none of them holds a frame), joining every run that
        overlaps or touches it; returns pages newly marked. O(log r + runs touched)."""
        starts, ends = self._starts, self._run_end
        touching = starts.between(s, e + 1)  # runs starting in [s, e]: e itself is adjacent
        p = starts.floor(s - 1)
        if p is not None and ends[p] >= s:
            touching.insert(0, p)
        covered = 0
        for q in touching:
            covered += max(0, min(ends[q], e) - max(q, s))
        if touching:
            new_start, new_end = min(s, touching[0]), max(e, ends[touching[-1]])
            for q in touching:
                if q != new_start:
                    starts.remove(q)
                    del ends[q]
        else:
            new_start, new_end = s, e
        if new_start not in ends:
            starts.insert(new_start)
        ends[new_start] = new_end
        added = (e - s) - covered
        self._marker_pages += added
        return added

    def _unmark(self, s: int, e: int) -> int:
        """Unmark pages ``[s, e)``, cutting the runs at its edges; returns pages that were
        marked. O(log r + runs touched)."""
        starts, ends = self._starts, self._run_end
        hit = starts.between(s, e)
        p = starts.floor(s - 1)
        if p is not None and ends[p] > s:
            hit.insert(0, p)
        covered = 0
        for q in hit:
            q_end = ends[q]
            covered += min(q_end, e) - max(q, s)
            if q < s:
                ends[q] = s  # the part below s stays
            else:
                starts.remove(q)
                del ends[q]
            if q_end > e:  # the part from e on stays
                starts.insert(e)
                ends[e] = q_end
        self._marker_pages -= covered
        return covered

    # -- table pages --------------------------------------------------------

    def pmd_none(self, page: int) -> bool:
        """Is the PMD entry above ``page`` empty: neither a PTE table nor a huge PMD
        (``pmd_none()``)? O(1)."""
        t = page >> PTE_SHIFT
        return t not in self.pte_tables and t not in self._huge

    def alloc_tables(self, page: int) -> None:
        """Allocate the PTE, PMD and PUD tables above ``page``. O(1)."""
        self.pte_tables.add(page >> PTE_SHIFT)
        self.pmd_tables.add(page >> PMD_SHIFT)
        self.pud_tables.add(page >> PUD_SHIFT)

    def reclaim_pte_tables(self, first: int, end: int) -> None:
        """CONFIG_PT_RECLAIM after a ``MADV_DONTNEED``/``DONTNEED_LOCKED`` zap of ``[first,
        end)``: free the PTE table of every 2 MiB block the range covers whole and that now
        holds no entry (guard markers keep theirs). mm/pt_reclaim.c: ``try_to_free_pte()``.
        Precondition: the range was just zapped. O(blocks covered + log r each)."""
        t0 = (first + _PTE_INDEX_MASK) >> PTE_SHIFT
        for t in range(t0, end >> PTE_SHIFT):
            if t in self.pte_tables and t not in self._tables \
                    and not self.has_markers_in(t << PTE_SHIFT, (t + 1) << PTE_SHIFT):
                self.pte_tables.discard(t)

    def pte_table_runs(self, first: int, end: int) -> list[range]:
        """The runs of pages in ``[first, end)`` whose PMD entry holds a PTE table or maps a
        huge page (not ``pmd_none()``), in order, adjacent blocks joined: where a page walk
        visits PTEs rather than reporting a hole. O(min(blocks in range, tables) + runs)."""
        if end <= first:
            return []
        t0, t1 = first >> PTE_SHIFT, (end - 1) >> PTE_SHIFT
        if t1 - t0 < len(self.pte_tables) + len(self._huge):
            blocks = [t for t in range(t0, t1 + 1) if t in self.pte_tables or t in self._huge]
        else:
            blocks = sorted(t for t in self.pte_tables | self._huge if t0 <= t <= t1)
        runs: list[range] = []
        for t in blocks:
            s, e = max(t << PTE_SHIFT, first), min((t + 1) << PTE_SHIFT, end)
            if runs and runs[-1].stop == s:
                runs[-1] = range(runs[-1].start, e)
            else:
                runs.append(range(s, e))
        return runs

    def alloc_pmd_table(self, page: int) -> None:
        """Allocate the PMD and PUD tables above ``page`` but no PTE table: what
        ``__handle_mm_fault()`` does (``pud_alloc``, ``pmd_alloc``) before a fault handler
        that may still fail or map a huge PMD. O(1)."""
        self.pmd_tables.add(page >> PMD_SHIFT)
        self.pud_tables.add(page >> PUD_SHIFT)

    def alloc_table_range(self, first: int, end: int) -> None:
        """Allocate every table covering pages ``[first, end)``. O(tables covering it)."""
        if first >> PTE_SHIFT == (end - 1) >> PTE_SHIFT:  # one PTE table: one of each
            self.alloc_tables(first)
            return
        for shift, tables in ((PTE_SHIFT, self.pte_tables), (PMD_SHIFT, self.pmd_tables),
                              (PUD_SHIFT, self.pud_tables)):
            tables.update(range(first >> shift, ((end - 1) >> shift) + 1))

    # -- huge PMDs -----------------------------------------------------------

    def is_huge(self, page: int) -> bool:
        """Is ``page`` mapped through a huge PMD? O(1)."""
        return (page >> PTE_SHIFT) in self._huge

    def is_file_huge(self, page: int) -> bool:
        """Is ``page`` mapped through a huge PMD without a deposited table (a page-cache large
        folio: shmem/file)? Splitting such a PMD unmaps the whole block. O(1)."""
        t = page >> PTE_SHIFT
        return t in self._huge and t not in self._deposited

    def file_huge_in(self, first: int, end: int) -> list[int]:
        """The first pages of the file huge PMDs (no deposit) whose block meets ``[first, end)``.
        O(min(PMD entries in range, H))."""
        if not self._huge or end <= first:
            return []
        return [t << PTE_SHIFT for t in self._huge_in(pmd_start(first), end)
                if t not in self._deposited]

    def forget_huge_pmd(self, page: int) -> None:
        """Clear the huge PMD of the block holding ``page`` after its entries were cleared
        (a file PMD split or zapped: no PTE table takes its place). O(1)."""
        t = page >> PTE_SHIFT
        self._huge.discard(t)
        self._deposited.discard(t)

    def huge_pmd_count(self) -> int:
        """PMD entries that map a THP or the huge zero page. O(1)."""
        return len(self._huge)

    def map_huge_pmd(self, page: int, deposit: bool = False) -> None:
        """Let one PMD entry map the 2 MiB holding ``page`` (a THP fault or collapse): its
        PTE table goes, or, with ``deposit`` (anonymous THPs and the huge zero page), stays
        counted as the deposited table. Precondition: the caller has set the entry of every
        page of the block (``HPAGE_PMD_NR`` from ``pmd_start(page)``). O(1)."""
        t = page >> PTE_SHIFT
        self._huge.add(t)
        self.pte_tables.discard(t)
        if deposit:
            self._deposited.add(t)

    def split_huge_pmd(self, page: int) -> bool:
        """``split_huge_pmd()`` of the block holding ``page``, if it is huge: the same
        entries, now under a PTE table. Returns whether it was huge. O(1)."""
        t = page >> PTE_SHIFT
        if t not in self._huge:
            return False
        self._huge.discard(t)
        self._deposited.discard(t)  # the deposited table becomes the PTE table
        self.alloc_tables(t << PTE_SHIFT)
        return True

    def split_huge_range(self, first: int, end: int) -> None:
        """Split the huge PMDs that ``[first, end)`` covers only in part (a partial zap,
        unmap or move must not leave half a THP mapped by a PMD). O(1)."""
        if not self._huge or end <= first:
            return
        for t in (first >> PTE_SHIFT, (end - 1) >> PTE_SHIFT):
            if t in self._huge:
                p0 = t << PTE_SHIFT
                if not (first <= p0 and p0 + HPAGE_PMD_NR <= end):
                    self.split_huge_pmd(p0)

    def zap_huge_pmds(self, first: int, end: int) -> None:
        """After a zap of ``[first, end)``: forget its huge PMDs whose first page now holds
        nothing (``zap_huge_pmd()``). O(min(PMD entries in range, H))."""
        if self._huge:
            gone = [t for t in self._huge_in(first, end) if self.get(t << PTE_SHIFT) is None]
            self._huge.difference_update(gone)
            self._deposited.difference_update(gone)  # zap_huge_pmd() frees the deposit

    def copy_huge_pmds_to(self, dst: "PageTable", first: int, end: int) -> None:
        """Fork's ``copy_huge_pmd()`` for the huge PMDs of ``[first, end)``: ``dst`` maps them
        huge too (the caller copies the entries). O(min(PMD entries in range, H))."""
        for t in self._huge_in(first, end):
            if t in self._deposited:  # anonymous only: a file PMD is left to refault
                dst.map_huge_pmd(t << PTE_SHIFT, True)

    def _huge_in(self, first: int, end: int) -> list[int]:
        """The huge PMD entries whose block starts in ``[first, end)``: a probe of each PMD
        entry in range or a scan of the set, whichever is less. O(min(entries in range, H))."""
        huge = self._huge
        if not huge or end <= first:
            return []
        t0 = (first + _PTE_INDEX_MASK) >> PTE_SHIFT  # first block starting at or after `first`
        t1 = (end - 1) >> PTE_SHIFT
        if t1 - t0 < len(huge):
            return [t for t in range(t0, t1 + 1) if t in huge]
        return sorted(t for t in huge if t0 <= t <= t1)

    def pte_table_pages(self) -> int:
        """PTE-table pages counted by ``mm_inc_nr_ptes``: the tables in ``pte_tables`` plus
        the tables deposited under anonymous huge PMDs. O(1)."""
        return len(self.pte_tables) + len(self._deposited)

    def table_pages(self) -> int:
        """Page-table pages below the PGD: PTE + PMD + PUD tables (``mm_pgtables_bytes / PAGE_SIZE``)."""
        return self.pte_table_pages() + len(self.pmd_tables) + len(self.pud_tables)

    def pgtables_bytes(self) -> int:
        """``mm_pgtables_bytes()``: the table pages below the PGD, in bytes. O(1)."""
        return self.table_pages() * abi.PAGE_SIZE

    def free_pgtables(self, start: int, end: int, floor: int, ceiling: int) -> None:
        """Free the tables that map only ``[start, end)`` (mm/memory.c ``free_pgd_range()``).

        ``start``/``end`` are bytes; ``floor``/``ceiling`` (bytes) are the end of the previous
        VMA and the start of the next (ceiling 0 = no next VMA). A table covering ``[T, T+S)``
        is freed when it meets ``[start, end)``, ``T >= floor`` and ``T + S <= ceiling``: the
        kernel's rounding rules, restated per table. Entries inside must already be zapped.
        O(min(tables in range, tables)).
        """
        top = ceiling if ceiling else 1 << ADDRESS_BITS
        for shift, tables in ((PTE_SHIFT, self.pte_tables), (PMD_SHIFT, self.pmd_tables),
                              (PUD_SHIFT, self.pud_tables)):
            span = 1 << (shift + abi.PAGE_SHIFT)
            first = start // span
            last = (end - 1) // span
            if last - first > len(tables):
                cands = [t for t in tables if first <= t <= last]
            else:
                cands = [t for t in range(first, last + 1) if t in tables]
            for t in cands:
                t_start = t * span
                if t_start >= floor and t_start + span <= top:
                    tables.discard(t)

    # -- checks ---------------------------------------------------------------

    def check(self) -> None:
        """The storage invariants of the class docstring; ``InvariantError`` names the first
        broken one. O(n + T + r)."""
        def fail(msg: str) -> None:
            raise InvariantError(f"PageTable: {msg}")

        n = 0
        for t, pages in self._tables.items():
            if not pages:
                fail(f"empty table set {t:#x}")
            for p in pages:
                if p >> PTE_SHIFT != t:
                    fail(f"page {p:#x} filed under table {t:#x}")
                if p not in self._frames:
                    fail(f"indexed page {p:#x} has no frame")
            n += len(pages)
        if n != len(self._frames):
            fail(f"table index holds {n} pages, frames {len(self._frames)}")
        for p, e in self._frames.items():
            if e is None or e is GUARD:
                fail(f"bad frame at {p:#x}: {e!r}")
        starts = self._starts.values()
        self._starts.check()
        if sorted(self._run_end) != starts:
            fail("run starts and run ends disagree")
        total = 0
        prev_end = None
        for s in starts:
            e = self._run_end[s]
            if not s < e:
                fail(f"empty marker run at {s:#x}")
            if prev_end is not None and prev_end >= s:
                fail(f"marker runs touch or overlap at {s:#x}")
            if self.frames(s, e):
                fail(f"frame inside marker run [{s:#x}, {e:#x})")
            total += e - s
            prev_end = e
        if total != self._marker_pages:
            fail(f"marker count {self._marker_pages} != recount {total}")


    def check_coverage(self) -> None:
        """Every frame and every marker page lies under a PTE table or a huge PMD: true while
        callers keep ``free_pgtables``' precondition (``AddressSpace.check`` runs this).
        ``InvariantError`` otherwise. O(T + tables under the marker runs)."""
        for t in self._tables:
            if t not in self.pte_tables and t not in self._huge:
                raise InvariantError(f"PageTable: entry without a table at "
                                     f"{t << (PTE_SHIFT + abi.PAGE_SHIFT):#x}")
        for s, e in self._run_end.items():
            for t in range(s >> PTE_SHIFT, ((e - 1) >> PTE_SHIFT) + 1):
                if t not in self.pte_tables and t not in self._huge:
                    raise InvariantError(f"PageTable: guard marker without a table at "
                                         f"{t << (PTE_SHIFT + abi.PAGE_SHIFT):#x}")


def _page_of(item) -> int:
    return item[0]


#: SortedInts chunk size: chunks hold _LOAD // 2 .. 2 * _LOAD values.
_LOAD = 256


class SortedInts:
    """Distinct ints in ascending order, kept in sorted chunks (the layout of
    ``sortedcontainers.SortedList``, without its positional index, which every insert and
    remove would invalidate). Value queries only: ``floor``/``ceil``/``insert``/``remove``
    O(log n) plus a splice of one chunk (at most 2 * _LOAD values); ``between`` O(log n + k).
    """

    __slots__ = ("_chunks", "_maxes")

    def __init__(self) -> None:
        self._chunks: list[list[int]] = []
        self._maxes: list[int] = []  # _maxes[i] == _chunks[i][-1]

    def __len__(self) -> int:
        return sum(map(len, self._chunks))

    def floor(self, x: int) -> int | None:
        """The greatest value ``<= x``, or None."""
        maxes = self._maxes
        i = bisect_right(maxes, x)
        if i < len(maxes):
            c = self._chunks[i]
            j = bisect_right(c, x)
            if j:
                return c[j - 1]
        return maxes[i - 1] if i else None

    def ceil(self, x: int) -> int | None:
        """The least value ``>= x``, or None."""
        maxes = self._maxes
        i = bisect_left(maxes, x)
        if i == len(maxes):
            return None
        c = self._chunks[i]
        return c[bisect_left(c, x)]

    def between(self, lo: int, hi: int) -> list[int]:
        """The values in ``[lo, hi)``, ascending (a new list)."""
        chunks = self._chunks
        i = bisect_left(self._maxes, lo)
        if i == len(chunks) or hi <= lo:
            return []
        c = chunks[i]
        j = bisect_left(c, hi)
        out = c[bisect_left(c, lo):j]
        while j == len(c) and i + 1 < len(chunks):
            i += 1
            c = chunks[i]
            j = bisect_left(c, hi)
            out += c[:j]
        return out

    def values(self) -> list[int]:
        """Every value, ascending. O(n)."""
        return [v for c in self._chunks for v in c]

    def insert(self, x: int) -> None:
        """Add ``x`` (not present)."""
        chunks, maxes = self._chunks, self._maxes
        if not chunks:
            chunks.append([x])
            maxes.append(x)
            return
        i = bisect_left(maxes, x)
        if i == len(maxes):
            i -= 1
            c = chunks[i]
            c.append(x)
            maxes[i] = x
        else:
            c = chunks[i]
            insort(c, x)
        if len(c) > 2 * _LOAD:
            chunks.insert(i + 1, c[_LOAD:])
            del c[_LOAD:]
            maxes[i] = c[-1]
            maxes.insert(i + 1, chunks[i + 1][-1])

    def remove(self, x: int) -> None:
        """Remove ``x`` (present)."""
        chunks, maxes = self._chunks, self._maxes
        i = bisect_left(maxes, x)
        c = chunks[i]
        del c[bisect_left(c, x)]
        if not c:
            del chunks[i]
            del maxes[i]
            return
        maxes[i] = c[-1]
        if len(c) < _LOAD // 2 and len(chunks) > 1:  # join a neighbour, split again if too big
            k = i if i + 1 < len(chunks) else i - 1
            a = chunks[k]
            a += chunks[k + 1]
            del chunks[k + 1]
            del maxes[k + 1]
            maxes[k] = a[-1]
            if len(a) > 2 * _LOAD:
                chunks.insert(k + 1, a[_LOAD:])
                del a[_LOAD:]
                maxes[k] = a[-1]
                maxes.insert(k + 1, chunks[k + 1][-1])

    def check(self) -> None:
        """Chunks non-empty and strictly increasing throughout; maxes match; ``InvariantError``
        otherwise. O(n)."""
        if len(self._chunks) != len(self._maxes):
            raise InvariantError("SortedInts: chunks and maxes differ in length")
        prev = None
        for c, m in zip(self._chunks, self._maxes):
            if not c or c[-1] != m or len(c) > 2 * _LOAD:
                raise InvariantError("SortedInts: bad chunk")
            for v in c:
                if prev is not None and prev >= v:
                    raise InvariantError("SortedInts: not strictly increasing")
                prev = v
