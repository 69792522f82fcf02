"""PageTable (model/pagetable.py) against a naive reference: a plain dict page -> entry.

Unit examples, a hypothesis state machine and a seeded random-op run; every step compares
all entries, the marker runs, the counts and the table sets, and calls ``PageTable.check()``.
"""

from __future__ import annotations

import random

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from sparsemm import abi
from sparsemm.model.frames import FRAME_ANON, Frame
from sparsemm.model.mm import AddressSpace
from sparsemm.model import procfs
from sparsemm.model.pagetable import GUARD, PAGE_LIMIT, PageTable, SortedInts

PMD_PAGES = 1 << 18  # pages under one PMD table
PUD_PAGES = 1 << 27  # pages under one PUD table
_SHIFTS = (9, 18, 27)


class NaivePageTable:
    """The reference: one dict entry per page (markers too), tables as the old code kept them."""

    def __init__(self) -> None:
        self.e: dict[int, object] = {}
        self.tables = (set(), set(), set())  # PTE, PMD, PUD indices

    def alloc(self, first: int, end: int) -> None:
        for shift, tables in zip(_SHIFTS, self.tables):
            tables.update(range(first >> shift, ((end - 1) >> shift) + 1))

    def set(self, page, entry):
        old = self.e.get(page)
        self.e[page] = entry
        self.alloc(page, page + 1)
        return old

    def clear(self, page):
        return self.e.pop(page, None)

    def install_markers(self, first, end) -> int:
        if end <= first:
            return 0
        added = 0
        for p in range(first, end):
            if p not in self.e:
                self.e[p] = GUARD
                added += 1
        self.alloc(first, end)
        return added

    def remove_markers(self, first, end) -> int:
        gone = [p for p, v in self.e.items() if first <= p < end and v is GUARD]
        for p in gone:
            del self.e[p]
        return len(gone)

    def items(self, first=0, end=PAGE_LIMIT):
        return sorted((p, v) for p, v in self.e.items() if first <= p < end)

    def frames(self, first=0, end=PAGE_LIMIT):
        return [(p, v) for p, v in self.items(first, end) if v is not GUARD]

    def marker_runs(self, first=0, end=PAGE_LIMIT):
        runs = []
        for p, v in self.items(first, end):
            if v is not GUARD:
                continue
            if runs and runs[-1][1] == p:
                runs[-1][1] = p + 1
            else:
                runs.append([p, p + 1])
        return [range(s, e) for s, e in runs]

    def move_range(self, first, end, dst_first):
        delta = dst_first - first
        pte = self.tables[0]
        src = [t for t in sorted(pte) if t * 512 < end and (t + 1) * 512 > first]
        moved = [(p + delta, self.e.pop(p)) for p, _ in self.items(first, end)]
        for p, v in moved:
            self.set(p, v)
        for t in src:  # move_page_tables(): a whole aligned block moves its table
            if delta % 512 == 0 and first <= t * 512 and (t + 1) * 512 <= end:
                pte.discard(t)
                self.alloc(t * 512 + delta, (t + 1) * 512 + delta)
            else:  # move_ptes() allocates the destination table under a source table
                self.alloc(max(first, t * 512) + delta, min(end, (t + 1) * 512) + delta)

    def copy_markers_to(self, dst, first, end, delta=0):
        for p, v in self.items(first, end):
            if v is GUARD:
                if p + delta not in dst.e:
                    dst.e[p + delta] = GUARD
                dst.alloc(p + delta, p + delta + 1)

    def free_pgtables(self, start, end, floor, ceiling):
        top = ceiling if ceiling else (1 << 48)
        for shift, tables in zip(_SHIFTS, self.tables):
            span = 1 << (shift + abi.PAGE_SHIFT)
            for t in [t for t in tables if start // span <= t <= (end - 1) // span]:
                if t * span >= floor and t * span + span <= top:
                    tables.discard(t)


def assert_same(pt: PageTable, ref: NaivePageTable) -> None:
    pt.check()
    assert pt.items() == ref.items()
    assert pt.frames() == ref.frames()
    assert pt.marker_runs() == ref.marker_runs()
    assert len(pt) == len(ref.e)
    assert pt.marker_pages() == sum(v is GUARD for v in ref.e.values())
    assert pt.frame_count() == len(ref.e) - pt.marker_pages()
    assert (pt.pte_tables, pt.pmd_tables, pt.pud_tables) == ref.tables
    assert pt.table_pages() == sum(map(len, ref.tables))


def assert_same_range(pt: PageTable, ref: NaivePageTable, first: int, end: int) -> None:
    assert pt.frames(first, end) == ref.frames(first, end)
    assert pt.marker_runs(first, end) == ref.marker_runs(first, end)
    assert pt.items(first, end) == ref.items(first, end)
    assert pt.has_markers_in(first, end) == any(v is GUARD for _, v in ref.items(first, end))


# -- examples ---------------------------------------------------------------


def test_markers_are_runs_not_pages():
    pt = PageTable()
    assert pt.install_markers(0, 100 * PMD_PAGES) == 100 * PMD_PAGES
    assert len(pt.marker_runs()) == 1 and pt.marker_pages() == 100 * PMD_PAGES
    assert len(pt.pte_tables) == 100 * 512 and len(pt.pmd_tables) == 100 and len(pt.pud_tables) == 1
    assert pt.get(5) is GUARD and pt.get(100 * PMD_PAGES) is None
    assert pt.remove_markers(1000, 2000) == 1000
    assert pt.marker_runs(0, 3000) == [range(0, 1000), range(2000, 3000)]
    assert len(pt.pte_tables) == 100 * 512  # tables stay


def test_sorted_ints_against_a_sorted_list():
    """SortedInts (the run starts) through chunk splits and joins, against sorted()."""
    rnd = random.Random(7)
    si, ref = SortedInts(), set()
    for step in range(6000):
        x = rnd.randrange(3000)
        if x in ref and rnd.random() < 0.45:
            si.remove(x)
            ref.discard(x)
        elif x not in ref:
            si.insert(x)
            ref.add(x)
        lo, hi = sorted((rnd.randrange(3100), rnd.randrange(3100)))
        srt = sorted(ref)
        assert si.between(lo, hi) == [v for v in srt if lo <= v < hi]
        assert si.floor(x) == max((v for v in srt if v <= x), default=None)
        assert si.ceil(x) == min((v for v in srt if v >= x), default=None)
        if step % 250 == 0:
            si.check()
            assert si.values() == srt and len(si) == len(srt)
    left = sorted(ref)
    rnd.shuffle(left)
    for n, x in enumerate(left):  # drain: chunks join and vanish
        si.remove(x)
        ref.discard(x)
        assert si.floor(x) == max((v for v in ref if v <= x), default=None)
        if n % 50 == 0:
            si.check()
            assert si.values() == sorted(ref)
    si.check()
    assert si.values() == [] and si.floor(10) is None and si.ceil(0) is None


def test_install_skips_frames_and_coalesces():
    pt = PageTable()
    f = Frame(7, FRAME_ANON)
    assert pt.set(15, f) is None
    assert pt.install_markers(10, 20) == 9
    assert pt.marker_runs() == [range(10, 15), range(16, 20)]
    assert pt.get(15) is f
    assert pt.install_markers(20, 30) == 10 and pt.install_markers(5, 10) == 5  # adjacent: joined
    assert pt.marker_runs() == [range(5, 15), range(16, 30)]
    assert pt.clear(15) is f
    assert pt.set(15, GUARD) is None
    assert pt.marker_runs() == [range(5, 30)]
    assert pt.set(15, f) is GUARD  # a frame replaces a marker and splits the run
    assert pt.marker_runs() == [range(5, 15), range(16, 30)]
    assert pt.clear(20) is GUARD and pt.clear(20) is None
    assert pt.marker_runs() == [range(5, 15), range(16, 20), range(21, 30)]
    pt.check()


def test_frames_query_visits_tables_not_pages():
    pt = PageTable()
    frames = {p: Frame(p & 0xFF, FRAME_ANON) for p in range(0, 40 * PMD_PAGES, 4099)}
    for p, f in frames.items():
        pt.set(p, f)
    assert pt.frames(1, 2 * PMD_PAGES) == [(p, frames[p]) for p in sorted(frames) if 1 <= p < 2 * PMD_PAGES]
    assert pt.frames() == sorted(frames.items())
    assert pt.frames(4099, 4100) == [(4099, frames[4099])]
    assert pt.frames(4100, 4099) == [] and pt.frames(4100, 8198) == []


def test_move_and_copy_keep_offsets():
    pt, ref = PageTable(), NaivePageTable()
    f = Frame(1, FRAME_ANON)
    for t in (pt, ref):
        t.set(3, f)
        t.install_markers(0, 10)
        t.install_markers(600, 700)
        t.move_range(0, 650, PMD_PAGES + 100)
    assert_same(pt, ref)
    child, child_ref = PageTable(), NaivePageTable()
    pt.copy_markers_to(child, 0, PAGE_LIMIT)
    ref.copy_markers_to(child_ref, 0, PAGE_LIMIT)
    assert_same(child, child_ref)


def test_pagemap_range_equals_per_page_words():
    """procfs.pagemap builds words per run; it must equal pagemap_word page by page."""
    base = 0x7000_0000_0000
    for design in ("pte", "tree"):
        mm = AddressSpace(guard_design=design)
        mm.mmap(base, 64 * abi.PAGE_SIZE, abi.PROT_READ | abi.PROT_WRITE,
                abi.MapFlag.PRIVATE | abi.MapFlag.ANONYMOUS | abi.MapFlag.FIXED)
        for i in (0, 1, 5, 9, 30, 40, 63):
            mm.touch(base + i * abi.PAGE_SIZE, write=bool(i & 1))
        mm.madvise(base + 4 * abi.PAGE_SIZE, 8 * abi.PAGE_SIZE, abi.Madv.GUARD_INSTALL)
        mm.madvise(base + 20 * abi.PAGE_SIZE, 12 * abi.PAGE_SIZE, abi.Madv.GUARD_INSTALL)
        mm.madvise(base + 22 * abi.PAGE_SIZE, 2 * abi.PAGE_SIZE, abi.Madv.GUARD_REMOVE)
        mm.check()
        words = procfs.pagemap(mm, base - 4 * abi.PAGE_SIZE, 72)
        assert words == [procfs.pagemap_word(mm, base + (i - 4) * abi.PAGE_SIZE) for i in range(72)]
        assert any(w & abi.PM_GUARD_REGION for w in words) and any(w & abi.PM_PRESENT for w in words)


# -- random operations --------------------------------------------------------

PAGES = st.one_of(st.integers(0, 1600), st.integers(PMD_PAGES - 800, PMD_PAGES + 800),
                  st.integers(PUD_PAGES - 300, PUD_PAGES + 300))
LENGTHS = st.integers(0, 1200)


class PageTableMachine(RuleBasedStateMachine):
    """Every PageTable operation on the model and the reference; all state compared after each."""

    def __init__(self) -> None:
        super().__init__()
        self.pt = PageTable()
        self.ref = NaivePageTable()
        self.byte = 0

    def _frame(self) -> Frame:
        self.byte += 1
        return Frame(self.byte & 0xFF, FRAME_ANON)

    @rule(page=PAGES)
    def set_frame(self, page):
        f = self._frame()
        assert self.pt.set(page, f) is self.ref.set(page, f)

    @rule(page=PAGES)
    def set_marker(self, page):
        assert self.pt.set(page, GUARD) is self.ref.set(page, GUARD)

    @rule(page=PAGES)
    def clear(self, page):
        assert self.pt.clear(page) is self.ref.clear(page)

    @rule(first=PAGES, n=LENGTHS)
    def install_markers(self, first, n):
        assert self.pt.install_markers(first, first + n) == self.ref.install_markers(first, first + n)

    @rule(first=PAGES, n=LENGTHS)
    def remove_markers(self, first, n):
        assert self.pt.remove_markers(first, first + n) == self.ref.remove_markers(first, first + n)

    @rule(first=PAGES, n=LENGTHS, every=st.integers(1, 7))
    def fill_frames(self, first, n, every):
        for p in range(first, first + n, every):
            f = self._frame()
            self.pt.set(p, f)
            self.ref.set(p, f)

    @rule(first=PAGES, n=LENGTHS)
    def zap_keep_markers(self, first, n):
        """What AddressSpace.zap_range does for DONTNEED: clear the frames, keep the markers."""
        for p, f in self.pt.frames(first, first + n):
            assert self.pt.clear(p) is f
        for p, _ in self.ref.frames(first, first + n):
            self.ref.clear(p)

    @rule(first=PAGES, n=LENGTHS)
    def zap_all(self, first, n):
        """munmap's zap: frames and markers go."""
        for p, _ in self.pt.frames(first, first + n):
            self.pt.clear(p)
        self.pt.remove_markers(first, first + n)
        for p, _ in self.ref.items(first, first + n):
            self.ref.clear(p)

    @rule(first=PAGES, n=LENGTHS, dst=st.integers(0, 3 * PMD_PAGES))
    def move_range(self, first, n, dst):
        end = first + n
        if dst < end and first < dst + n:
            return  # overlapping: not a mremap
        dst_end = dst + n
        for p, _ in self.ref.items(dst, dst_end):  # the destination is empty (precondition)
            self.pt.clear(p)
            self.ref.clear(p)
        self.pt.move_range(first, end, dst)
        self.ref.move_range(first, end, dst)

    @rule(first=PAGES, n=LENGTHS, delta=st.integers(-2000, 2000))
    def copy_markers_to_fresh(self, first, n, delta):
        if first + delta < 0:
            return
        child, child_ref = PageTable(), NaivePageTable()
        f = self._frame()
        child.set(first + delta + n // 2, f)
        child_ref.set(first + delta + n // 2, f)
        self.pt.copy_markers_to(child, first, first + n, delta)
        self.ref.copy_markers_to(child_ref, first, first + n, delta)
        assert_same(child, child_ref)

    @rule(first=PAGES, n=LENGTHS, below=st.integers(0, 600), above=st.integers(0, 600),
          unbounded=st.booleans())
    def free_pgtables(self, first, n, below, above, unbounded):
        start, end = first << abi.PAGE_SHIFT, (first + max(n, 1)) << abi.PAGE_SHIFT
        floor = max(first - below, 0) << abi.PAGE_SHIFT
        ceiling = 0 if unbounded else end + (above << abi.PAGE_SHIFT)
        self.pt.free_pgtables(start, end, floor, ceiling)
        self.ref.free_pgtables(start, end, floor, ceiling)

    @rule(first=PAGES, n=LENGTHS)
    def query_range(self, first, n):
        assert_same_range(self.pt, self.ref, first, first + n)

    @rule(page=PAGES)
    def query_page(self, page):
        assert self.pt.get(page) is self.ref.e.get(page)
        assert self.pt.has_marker(page) == (self.ref.e.get(page) is GUARD)
        assert (self.pt.get(page) is not None) == (page in self.ref.e)

    @invariant()
    def same(self):
        assert_same(self.pt, self.ref)


TestPageTableMachine = PageTableMachine.TestCase
TestPageTableMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])


def test_random_ops_seeded():
    """Longer random runs than the state machine: many overlapping runs and frames."""
    for seed in range(4):
        rnd = random.Random(seed)
        pt, ref = PageTable(), NaivePageTable()
        for step in range(1500):
            first = rnd.choice((0, PMD_PAGES - 700)) + rnd.randrange(1400)
            end = first + rnd.randrange(0, 300)
            op = rnd.randrange(6)
            if op == 0:
                assert pt.install_markers(first, end) == ref.install_markers(first, end)
            elif op == 1:
                assert pt.remove_markers(first, end) == ref.remove_markers(first, end)
            elif op == 2:
                f = Frame(step & 0xFF, FRAME_ANON)
                assert pt.set(first, f) is ref.set(first, f)
            elif op == 3:
                assert pt.clear(first) is ref.clear(first)
            elif op == 4:
                for p, _ in pt.frames(first, end):
                    pt.clear(p)
                for p, _ in ref.frames(first, end):
                    ref.clear(p)
            else:
                assert_same_range(pt, ref, first, end)
            if step % 100 == 99:
                assert_same(pt, ref)
        assert_same(pt, ref)
