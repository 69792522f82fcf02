"""PageTable: the model's x86-64 4-level page tables (PGD -> PUD -> PMD -> PTE).

Owns the leaf entries (a present ``Frame`` per page, guard markers as page runs) and
the set of table pages at every level, so page-table memory can be counted like the
kernel's ``mm_pgtables_bytes``. Knows nothing of VMAs or RSS; callers say what to zap.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

from sparsemm import abi

#: A guard PTE marker (``PTE_MARKER_GUARD``): a swap-type entry that faults with SIGSEGV.
GUARD = "GUARD"

_PTE_SHIFT = 9   # pages per PTE table: 512 (2 MiB)
_PMD_SHIFT = 18  # pages per PMD table: 512 * 512 (1 GiB)
_PUD_SHIFT = 27  # pages per PUD table: 512 GiB
#: One past the highest page number (64-bit addresses): ``end`` of "every page".
PAGE_LIMIT = 1 << (64 - abi.PAGE_SHIFT)


class PageTable:
    """Leaf entries by page number (``addr >> PAGE_SHIFT``) plus the table pages that hold them.

    A page holds nothing, a present ``Frame``, or a guard marker (``GUARD``), never two.
    Storage, all sparse:

    - ``_frames``: dict page -> Frame (O(1) ``get``/``set``/``clear``);
    - ``_tables``: dict PTE-table index (``page >> 9``) -> set of its pages with a Frame,
      no empty sets, so a range query visits only the tables in range that hold frames;
    - ``_starts`` (a ``SortedInts``) and ``_run_end`` (dict start -> end): the guard markers
      as runs of pages ``[start, end)``, disjoint and never adjacent (adjacent runs
      coalesce), with ``_marker_pages`` their total. Memory O(runs), not O(marker pages);
    - ``pte_tables``/``pmd_tables``/``pud_tables``: the table indices that exist (a table
      at level L covering page p has index ``p >> shift(L)``).

    A table page is allocated when the first entry below it is installed (a marker run
    allocates every table it covers, as ``madvise_guard_install`` does) and freed only by
    ``free_pgtables()`` (never on zap: measured on 6.18, MADV_DONTNEED and guard removal
    keep tables). Complexity: n frames, r marker runs, T PTE tables holding frames, k
    results; single-page ops O(1) plus O(log r) when markers exist; range queries
    O(min(tables in range, T) + k log 512 + log r); marker install/remove O(log r + runs
    touched + frames in range + tables allocated).
    """

    __slots__ = ("_frames", "_tables", "_starts", "_run_end", "_marker_pages",
                 "pte_tables", "pmd_tables", "pud_tables")

    def __init__(self) -> None:
        self._frames: dict[int, object] = {}
        self._tables: dict[int, set[int]] = {}
        self._starts = SortedInts()
        self._run_end: dict[int, int] = {}
        self._marker_pages = 0
        self.pte_tables: set[int] = set()
        self.pmd_tables: set[int] = set()
        self.pud_tables: set[int] = set()

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
            t = page >> _PTE_SHIFT
            pages = self._tables.get(t)
            if pages is None:
                self._tables[t] = {page}
            else:
                pages.add(page)
        frames[page] = entry
        self.pte_tables.add(page >> _PTE_SHIFT)
        self.pmd_tables.add(page >> _PMD_SHIFT)
        self.pud_tables.add(page >> _PUD_SHIFT)
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
            t = page >> _PTE_SHIFT
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
        t0, t1 = first >> _PTE_SHIFT, (end - 1) >> _PTE_SHIFT
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
            lo = t << _PTE_SHIFT
            hi = lo + (1 << _PTE_SHIFT)
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
        allocated under each moved entry. Precondition: the destination range holds no
        entries and does not overlap the source (mremap guarantees both).
        O(frames moved + log r + runs moved + tables)."""
        delta = dst_first - first
        moved = [(p, self._drop_frame(p)) for p, _ in self.frames(first, end)]
        runs = self.marker_runs(first, end)
        if runs:
            self._unmark(first, end)
        for p, e in moved:
            self.set(p + delta, e)
        for r in runs:
            self.install_markers(r.start + delta, r.stop + delta)

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

    def has_pte_table(self, page: int) -> bool:
        return (page >> _PTE_SHIFT) in self.pte_tables

    def alloc_tables(self, page: int) -> None:
        """Allocate the PTE, PMD and PUD tables above ``page``. O(1)."""
        self.pte_tables.add(page >> _PTE_SHIFT)
        self.pmd_tables.add(page >> _PMD_SHIFT)
        self.pud_tables.add(page >> _PUD_SHIFT)

    def alloc_table_range(self, first: int, end: int) -> None:
        """Allocate every table covering pages ``[first, end)``. O(tables covering it)."""
        if first >> _PTE_SHIFT == (end - 1) >> _PTE_SHIFT:  # one PTE table: one of each
            self.alloc_tables(first)
            return
        for shift, tables in ((_PTE_SHIFT, self.pte_tables), (_PMD_SHIFT, self.pmd_tables),
                              (_PUD_SHIFT, self.pud_tables)):
            tables.update(range(first >> shift, ((end - 1) >> shift) + 1))

    def discard_pte_table(self, page: int) -> None:
        """Drop the PTE table above ``page``: a huge PMD maps its 2 MiB directly. O(1)."""
        self.pte_tables.discard(page >> _PTE_SHIFT)

    def table_pages(self) -> int:
        """Page-table pages below the PGD: PTE + PMD + PUD tables (``mm_pgtables_bytes / PAGE_SIZE``)."""
        return len(self.pte_tables) + len(self.pmd_tables) + len(self.pud_tables)

    def pgtables_bytes(self) -> int:
        return self.table_pages() * abi.PAGE_SIZE

    def free_pgtables(self, start: int, end: int, floor: int, ceiling: int) -> None:
        """Free the tables that map only ``[start, end)`` (mm/memory.c ``free_pgd_range()``).

        ``start``/``end`` are bytes; ``floor``/``ceiling`` (bytes) are the end of the previous
        VMA and the start of the next (ceiling 0 = no next VMA). A table covering ``[T, T+S)``
        is freed when it meets ``[start, end)``, ``T >= floor`` and ``T + S <= ceiling``: the
        kernel's rounding rules, restated per table. Entries inside must already be zapped.
        O(min(tables in range, tables)).
        """
        top = ceiling if ceiling else (1 << 48)
        for shift, tables in ((_PTE_SHIFT, self.pte_tables), (_PMD_SHIFT, self.pmd_tables),
                              (_PUD_SHIFT, self.pud_tables)):
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
        """Assert the storage invariants (see the class docstring). O(n + r + T)."""
        n = 0
        for t, pages in self._tables.items():
            assert pages, f"empty table set {t:#x}"
            for p in pages:
                assert p >> _PTE_SHIFT == t, f"page {p:#x} filed under table {t:#x}"
                assert p in self._frames, f"indexed page {p:#x} has no frame"
            n += len(pages)
        assert n == len(self._frames), f"table index holds {n} pages, frames {len(self._frames)}"
        for p, e in self._frames.items():
            assert e is not None and e is not GUARD, f"bad frame at {p:#x}: {e!r}"
        starts = self._starts.values()
        self._starts.check()
        assert sorted(self._run_end) == starts, "run starts and run ends disagree"
        total = 0
        prev_end = None
        for s in starts:
            e = self._run_end[s]
            assert s < e, f"empty marker run at {s:#x}"
            assert prev_end is None or prev_end < s, f"marker runs touch or overlap at {s:#x}"
            assert not self.frames(s, e), f"frame inside marker run [{s:#x}, {e:#x})"
            total += e - s
            prev_end = e
        assert total == self._marker_pages, f"marker count {self._marker_pages} != recount {total}"


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
        """Chunks non-empty and strictly increasing throughout; maxes match. O(n)."""
        assert len(self._chunks) == len(self._maxes)
        prev = None
        for c, m in zip(self._chunks, self._maxes):
            assert c and c[-1] == m and len(c) <= 2 * _LOAD, "bad SortedInts chunk"
            for v in c:
                assert prev is None or prev < v, "SortedInts not strictly increasing"
                prev = v
