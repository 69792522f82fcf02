"""Unit tests of sparsemm.model.vma_tree: VmaTree against a naive list, check() after every step."""

from __future__ import annotations

import random

import pytest

from sparsemm._invariant import InvariantError
from sparsemm.abi import PAGE_SIZE, ULONG_MAX
from sparsemm.model.vma_tree import VmaTree, maple_node_count

P = PAGE_SIZE


class V:
    """Stand-in for model.vma.Vma: only the bounds the tree reads."""

    __slots__ = ("vm_start", "vm_end")

    def __init__(self, vm_start: int, vm_end: int) -> None:
        self.vm_start = vm_start
        self.vm_end = vm_end

    def __repr__(self) -> str:
        return f"V({self.vm_start // P}p, {self.vm_end // P}p)"


def SmallTree(**kw) -> VmaTree:  # noqa: N802 (used like a class)
    """Tiny blocks, so a few dozen VMAs exercise block split, merge, drop and the segment tree."""
    return VmaTree(load=2, **kw)


def pages(tree) -> list[tuple[int, int]]:
    return [(v.vm_start // P, v.vm_end // P) for v in tree]


def build(spec: str, tree_cls=VmaTree, **kw):
    """One character per page from page 0: letters are VMAs (same letter = same VMA), '.' is free.

        0123456789
        AA.BB..CCC
    """
    tree = tree_cls(mmap_min_addr=kw.pop("mmap_min_addr", 0), **kw)
    out = {}
    for i, ch in enumerate(spec):
        if ch == ".":
            continue
        if ch in out:
            out[ch].vm_end = (i + 1) * P
        else:
            out[ch] = V(i * P, (i + 1) * P)
    for v in out.values():
        tree.insert(v)
    tree.check()
    return tree, out


# ---- naive reference ----------------------------------------------------------------------

def ref_gaps(vmas, task_size):
    """All NULL ranges of the kernel tree, ascending: (start, end), end exclusive, end ULONG_MAX on top."""
    out, prev_end = [], 0
    for v in sorted(vmas, key=lambda v: v.vm_start):
        if v.vm_start > prev_end:
            out.append((prev_end, v.vm_start))
        prev_end = v.vm_end
    if vmas:
        out.append((prev_end, ULONG_MAX))
    return out


def ref_unmapped(vmas, length, low, high, align_mask, tree, topdown):
    """Kernel rule, by enumeration: highest/lowest gap whose part inside [low, high) holds length+align_mask."""
    low = max(low, tree.mmap_min_addr)
    low += -low % P
    high = min(high, tree.task_size) // P * P
    need = length + align_mask
    gaps = ref_gaps(vmas, tree.task_size) if vmas else [(0, ULONG_MAX)]
    for gs, ge in (reversed(gaps) if topdown else gaps):
        cs, ce = max(gs, low), min(ge, high)
        if ce - cs >= need:
            return (ce - length) & ~align_mask if topdown else cs + (-cs & align_mask)
    return None


# ---- basic behaviour ----------------------------------------------------------------------

def test_empty_tree():
    t = VmaTree()
    t.check()
    assert len(t) == 0 and list(t) == []
    assert t.find(0x10000) is None and t.find_vma(0) is None
    assert t.gap_count == 0 and t.slot_count == 0 and t.node_count() == 0
    assert t.overlapping(0, 1 << 40) == []
    assert t.unmapped_area_topdown(P, 0, 1 << 30) == (1 << 30) - P
    assert t.unmapped_area(P, 0, 1 << 30) == 0x10000          # raised to mmap_min_addr


def test_lookups_and_neighbours():
    #      0123456789
    t, v = build("AA.BB..CCC")
    A, B, C = v["A"], v["B"], v["C"]
    assert pages(t) == [(0, 2), (3, 5), (7, 10)]
    assert t.find(0) is A and t.find(2 * P - 1) is A and t.find(2 * P) is None
    assert t.find(4 * P + 5) is B and t.find(10 * P) is None
    assert t.find_vma(2 * P) is B and t.find_vma(5 * P) is C and t.find_vma(10 * P) is None
    assert t.find_vma(0) is A and t.find_vma(P) is A
    assert t.prev(A) is None and t.prev(B) is A and t.next(B) is C and t.next(C) is None
    assert t.overlapping(P, 8 * P) == [A, B, C]
    assert t.overlapping(2 * P, 3 * P) == []
    assert t.overlapping(2 * P, 3 * P + 1) == [B]
    assert t.overlapping(5 * P, 7 * P) == []


def test_insert_rejects_overlap_and_bad_bounds():
    #      0123456789
    t, v = build("AA.BB.....")
    for s, e in [(1, 3), (2, 4), (4, 6), (0, 10), (3, 4)]:
        with pytest.raises(ValueError):
            t.insert(V(s * P, e * P))
    t.check()
    for s, e in [(5 * P, 5 * P), (5 * P + 1, 6 * P), (-P, 0), (6 * P, t.task_size + P)]:
        with pytest.raises(ValueError):
            t.insert(V(s, e))
    t.insert(V(2 * P, 3 * P))                 # exact fit between A and B
    t.check()
    assert t.gap_count == 1                    # only the gap above B remains
    with pytest.raises(ValueError):
        t.remove(V(2 * P, 3 * P))              # equal bounds, different object


def test_gap_count_and_slots():
    # Kernel tree over [0, ULONG_MAX]: gap below the first VMA (if it does not start at 0),
    # one per non-adjacent pair, one above the last VMA.
    t, _ = build("AABB..C")
    assert t.gap_count == 2 and t.slot_count == 5
    t, _ = build(".AABB..C")
    assert t.gap_count == 3 and t.slot_count == 6 and t.node_count() == 1


def test_set_bounds_split_merge_move():
    #      0123456789abcdef
    t, v = build("AAAAAA....BB....")
    A, B = v["A"], v["B"]
    # split A at page 2 (what __split_vma does): shrink, then insert the tail
    t.set_bounds(A, 0, 2 * P)
    tail = V(2 * P, 6 * P)
    t.insert(tail)
    t.check()
    assert pages(t) == [(0, 2), (2, 6), (10, 12)] and t.gap_count == 2
    # expand B downwards into the gap, then merge the tail into B's neighbour
    t.set_bounds(B, 7 * P, 12 * P)
    t.check()
    with pytest.raises(ValueError):
        t.set_bounds(B, 5 * P, 12 * P)         # would overlap tail
    assert (B.vm_start, B.vm_end) == (7 * P, 12 * P)
    t.check()
    # move B past nothing to a far free range (ordering unchanged) and before A (ordering changes)
    t.set_bounds(B, 13 * P, 15 * P)
    t.check()
    t.remove(A)
    t.set_bounds(B, 0, P)
    t.check()
    assert pages(t) == [(0, 1), (2, 6)]
    with pytest.raises(ValueError):
        t.set_bounds(B, 3 * P, 4 * P)          # overlaps tail: B must come back unchanged
    t.check()
    assert pages(t) == [(0, 1), (2, 6)] and t.find(0) is B


def test_split_cuts_in_place_and_rejects_bad_cuts():
    tree = VmaTree()
    a, b = V(16 * P, 24 * P), V(40 * P, 48 * P)
    tree.insert(a)
    tree.insert(b)
    gaps = tree.gap_count
    upper = V(20 * P, 24 * P)
    tree.split(a, 20 * P, upper)
    tree.check()
    assert list(tree) == [a, upper, b] and (a.vm_start, a.vm_end) == (16 * P, 20 * P)
    assert tree.gap_count == gaps  # adjacent halves: no new gap
    for bad_addr, bad_upper in ((16 * P, V(16 * P, 20 * P)), (21 * P + 1, V(21 * P + 1, 24 * P)),
                                (18 * P, V(18 * P, 24 * P)), (24 * P, V(24 * P, 24 * P + P))):
        with pytest.raises(ValueError):
            tree.split(a, bad_addr, bad_upper)
    tree.check()
    assert list(tree) == [a, upper, b]


def test_replace_swaps_the_object_and_counts_reserved_entries():
    class Entry(V):
        is_guard_entry = True

    tree = VmaTree()
    a, b = V(16 * P, 24 * P), V(24 * P, 32 * P)
    tree.insert(a)
    tree.insert(b)
    e = Entry(24 * P, 32 * P)
    tree.replace(b, e)
    tree.check()
    assert list(tree) == [a, e] and len(tree) == 1 and tree.reserved_count == 1
    assert tree.find(25 * P) is e
    back = V(24 * P, 32 * P)
    tree.replace(e, back)
    assert len(tree) == 2 and tree.reserved_count == 0
    with pytest.raises(ValueError):
        tree.replace(back, V(24 * P, 33 * P))
    with pytest.raises(ValueError):
        tree.replace(V(0, P), V(0, P))  # not stored
    tree.check()


def test_check_detects_corruption():
    t, v = build("AA.BB..CCC")
    v["B"].vm_end = 8 * P                      # mutated behind the tree's back: overlaps C
    with pytest.raises(InvariantError, match="overlaps"):
        t.check()
    t, v = build("AA.BB..CCC")
    t._nonzero_gaps += 1
    with pytest.raises(InvariantError, match="_nonzero_gaps"):
        t.check()


# ---- unmapped_area edge cases ---------------------------------------------------------------

def test_topdown_exact_fit_and_bounds():
    #      0123456789abcdef
    t, v = build("AA..BB...CC.....", task_size=16 * P)
    assert t.unmapped_area_topdown(5 * P, 0, 16 * P) == 11 * P       # top gap, exact fit
    assert t.unmapped_area_topdown(3 * P, 0, 11 * P) == 6 * P        # exact fit in [6, 9)
    assert t.unmapped_area_topdown(2 * P, 0, 9 * P) == 7 * P
    assert t.unmapped_area_topdown(2 * P, 0, 6 * P) == 2 * P         # exact fit in [2, 4)
    assert t.unmapped_area_topdown(3 * P, 0, 9 * P) == 6 * P
    assert t.unmapped_area_topdown(3 * P, 7 * P, 16 * P) == 13 * P
    assert t.unmapped_area_topdown(3 * P, 7 * P, 12 * P) is None     # [7, 9) is clipped by low
    assert t.unmapped_area_topdown(2 * P, 7 * P, 12 * P) == 7 * P    # ... but holds 2 pages
    assert t.unmapped_area_topdown(6 * P, 0, 16 * P) is None         # no room anywhere
    assert t.unmapped_area_topdown(P, 0, 2 * P) is None              # below 2 everything is A
    assert t.unmapped_area_topdown(P, 0, 20 * P) == 15 * P           # high capped at task_size
    assert t.unmapped_area_topdown(P, 3 * P, 3 * P) is None          # empty window


def test_topdown_mmap_min_addr_and_alignment():
    #      0123456789abcdef
    t, v = build("..........CC....", task_size=16 * P, mmap_min_addr=4 * P)
    assert t.unmapped_area_topdown(4 * P, 0, 10 * P) == 6 * P
    assert t.unmapped_area_topdown(6 * P, 0, 10 * P) == 4 * P        # exact fit at mmap_min_addr
    assert t.unmapped_area_topdown(7 * P, 0, 10 * P) is None
    # alignment 4 pages: gap must hold length + mask (kernel worst-case rule)
    m = 4 * P - 1
    assert t.unmapped_area_topdown(P, 0, 10 * P, m) == 8 * P
    # [12, 16) would hold an aligned 2 pages at 12, but not 2 pages + mask: kernel picks [4, 10)
    assert t.unmapped_area_topdown(2 * P, 0, 16 * P, m) == 8 * P
    assert t.unmapped_area_topdown(3 * P, 0, 16 * P, m) is None
    assert t.unmapped_area(P, 0, 16 * P, m) == 4 * P
    assert t.unmapped_area(P, 5 * P, 16 * P, m) == 8 * P
    assert t.unmapped_area(P, 9 * P, 16 * P, m) is None              # [12, 16) < 1 page + mask
    assert t.unmapped_area(P, 9 * P, 16 * P, 2 * P - 1) == 12 * P
    assert t.unmapped_area(2 * P, 9 * P, 16 * P, 2 * P - 1) == 12 * P  # 2 pages + mask = 4p - 1
    assert t.unmapped_area(3 * P, 9 * P, 16 * P, 2 * P - 1) is None
    with pytest.raises(ValueError):
        t.unmapped_area_topdown(P, 0, 16 * P, 3 * P)                 # not 2**k - 1
    with pytest.raises(ValueError):
        t.unmapped_area_topdown(P + 1, 0, 16 * P)


def test_bottomup_edges():
    #      0123456789abcdef
    t, v = build("AA..BB...CC.....", task_size=16 * P)
    assert t.unmapped_area(2 * P, 0, 16 * P) == 2 * P
    assert t.unmapped_area(3 * P, 0, 16 * P) == 6 * P
    assert t.unmapped_area(3 * P, 7 * P, 16 * P) == 11 * P            # [7, 9) too small after low
    assert t.unmapped_area(2 * P, 7 * P, 16 * P) == 7 * P
    assert t.unmapped_area(5 * P, 0, 16 * P) == 11 * P
    assert t.unmapped_area(5 * P, 0, 15 * P) is None
    assert t.unmapped_area(P, 4 * P, 6 * P) is None
    assert t.unmapped_area(P, P, 3 * P) == 2 * P


def test_search_corrects_stale_block_maxima():
    """Filling a block's only big gap leaves its leaf overstated; searches must see past it."""
    t = SmallTree(mmap_min_addr=0, task_size=64 * P)
    #        0123456789abcdef...
    for i in list(range(0, 8)) + list(range(20, 40)):      # one 12-page hole at [8, 20)
        t.insert(V(i * P, (i + 1) * P))
    t.check()
    assert t.unmapped_area_topdown(12 * P, 0, 40 * P) == 8 * P
    filler = V(8 * P, 20 * P)
    t.insert(filler)                                        # leaf of that block still says 12
    t.check()
    assert t.unmapped_area_topdown(2 * P, 0, 40 * P) is None
    assert t.unmapped_area(2 * P, 0, 40 * P) is None
    assert t.unmapped_area(2 * P, 0, 64 * P) == 40 * P
    assert t.unmapped_area_topdown(12 * P, 0, 64 * P) == 52 * P
    t.check()
    t.remove(filler)
    assert t.unmapped_area_topdown(12 * P, 0, 40 * P) == 8 * P
    t.check()


# ---- randomized differential stress -----------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_random_against_reference(seed):
    rng = random.Random(seed)
    npages = 96
    tree = SmallTree(mmap_min_addr=rng.choice([0, 2 * P]), task_size=npages * P)
    ref: list[V] = []

    def overlaps(s, e, skip=None):
        return any(v.vm_start < e and s < v.vm_end for v in ref if v is not skip)

    def rand_range():
        s = rng.randrange(npages)
        e = min(npages, s + rng.choice([1, 1, 2, 3, 5, 8]))
        return s * P, e * P

    for step in range(1500):
        op = rng.random()
        if op < 0.35 or not ref:
            s, e = rand_range()
            v = V(s, e)
            if overlaps(s, e):
                with pytest.raises(ValueError):
                    tree.insert(v)
            else:
                tree.insert(v)
                ref.append(v)
        elif op < 0.55:
            v = rng.choice(ref)
            tree.remove(v)
            ref.remove(v)
        elif op < 0.62:                  # cut a VMA in two (split_vma)
            v = rng.choice(ref)
            if v.vm_end - v.vm_start < 2 * P:
                with pytest.raises(ValueError):
                    tree.split(v, v.vm_start, V(v.vm_start, v.vm_end))
                continue
            a = rng.randrange(v.vm_start // P + 1, v.vm_end // P) * P
            upper = V(a, v.vm_end)
            tree.split(v, a, upper)
            ref.append(upper)
        elif op < 0.80:
            v = rng.choice(ref)
            if rng.random() < 0.6:       # nudge an edge (split, merge, expand)
                s = max(0, v.vm_start + rng.choice([-2, -1, 0, 1]) * P)
                e = min(npages * P, v.vm_end + rng.choice([-1, 0, 1, 2]) * P)
            else:                        # move anywhere
                s, e = rand_range()
            if s >= e:
                continue
            old = (v.vm_start, v.vm_end)
            if overlaps(s, e, skip=v):
                with pytest.raises(ValueError):
                    tree.set_bounds(v, s, e)
                assert (v.vm_start, v.vm_end) == old
            else:
                tree.set_bounds(v, s, e)
        tree.check()
        ref.sort(key=lambda v: v.vm_start)
        assert list(tree) == ref, step
        assert len(tree) == len(ref)
        assert tree.gap_count == len(ref_gaps(ref, tree.task_size))
        # queries
        a = rng.randrange(npages + 2) * P + rng.choice([0, 1, P - 1])
        assert tree.find(a) is next((v for v in ref if v.vm_start <= a < v.vm_end), None)
        assert tree.find_vma(a) is next((v for v in ref if v.vm_end > a), None)
        lo, hi = sorted(rng.randrange(npages + 4) * P for _ in range(2))
        assert tree.overlapping(lo, hi) == [v for v in ref if v.vm_start < hi and lo < v.vm_end and lo < hi]
        if ref:
            i = rng.randrange(len(ref))
            assert tree.prev(ref[i]) is (ref[i - 1] if i else None)
            assert tree.next(ref[i]) is (ref[i + 1] if i + 1 < len(ref) else None)
        length = rng.choice([1, 1, 2, 3, 4, 7]) * P
        mask = rng.choice([0, 0, 0, P - 1 + P, 4 * P - 1])
        low = rng.randrange(npages) * P + rng.choice([0, 0, 17])
        high = rng.randrange(npages + 8) * P + rng.choice([0, 0, 5])
        for topdown in (True, False):
            fn = tree.unmapped_area_topdown if topdown else tree.unmapped_area
            got = fn(length, low, high, mask)
            want = ref_unmapped(ref, length, low, high, mask, tree, topdown)
            assert got == want, (step, topdown, length, low, high, mask, pages(tree))
            if got is not None:
                assert got % P == 0 and got & mask == 0 and low <= got and got + length <= high
                assert not tree.overlapping(got, got + length)


def test_unmapped_area_exhaustive_when_unaligned():
    """With align_mask 0 the kernel rule is exact: compare to a page-by-page scan."""
    rng = random.Random(99)
    npages = 48
    for _ in range(200):
        t = SmallTree(mmap_min_addr=0, task_size=npages * P)
        used = [False] * npages
        for _ in range(rng.randrange(12)):
            s = rng.randrange(npages)
            e = min(npages, s + rng.randrange(1, 6))
            if not any(used[s:e]):
                t.insert(V(s * P, e * P))
                used[s:e] = [True] * (e - s)
        t.check()
        length = rng.randrange(1, 8)
        low, high = sorted(rng.randrange(npages + 1) for _ in range(2))
        fits = [a for a in range(low, high - length + 1) if not any(used[a:a + length])]
        assert t.unmapped_area_topdown(length * P, low * P, high * P) == (max(fits) * P if fits else None)
        assert t.unmapped_area(length * P, low * P, high * P) == (min(fits) * P if fits else None)


def test_many_vmas_default_load():
    """Real block size: a few thousand VMAs, sequential and shuffled, with removals."""
    rng = random.Random(7)
    t = VmaTree()
    vmas = [V(0x10000 + i * 3 * P, 0x10000 + i * 3 * P + rng.choice([P, 2 * P, 3 * P])) for i in range(3000)]
    order = vmas[:]
    rng.shuffle(order)
    for v in order:
        t.insert(v)
    t.check()
    assert list(t) == vmas
    for v in order[:2500]:
        t.remove(v)
    t.check()
    assert list(t) == [v for v in vmas if v in set(order[2500:])]
    for v in order[2500:]:
        t.remove(v)
    t.check()
    assert len(t) == 0 and t.gap_count == 0


# ---- maple node cost model ----------------------------------------------------------------

# Linux 6.18 slab deltas, docs/costs.md, "The maple tree": (VMAs, slots, maple_node measured).
MEASURED = [
    (4095, 4095, 348),     # contiguous split VMAs, no gap slots
    (16383, 16383, 1290),
    (59999, 59999, 4508),
    (65394, 65394, 4937),  # at the max_map_count wall
    (8191, 16382, 1207),   # isolated mappings, one gap slot each
    (29999, 59998, 4211),
]


@pytest.mark.parametrize("vmas, slots, measured", MEASURED)
def test_node_count_calibration(vmas, slots, measured):
    model = maple_node_count(slots)
    assert abs(model - measured) / measured <= 0.05, (model, measured)


def test_node_count_calibration_from_tree_layouts():
    # The slot-count fallback (no node model): the node model's own counts follow the order of
    # the stores, see tests/test_maple.py.
    t = VmaTree(mmap_min_addr=0, nodes=False)
    for i in range(4095):                      # contiguous from 0: no gap slot below
        t.insert(V(i * P, (i + 1) * P))
    assert t.slot_count == 4096 and abs(t.node_count() - 348) / 348 <= 0.05
    t = VmaTree(mmap_min_addr=0, nodes=False)
    for i in range(8191):                      # isolated, each with a gap below
        t.insert(V((2 * i + 1) * P, (2 * i + 2) * P))
    assert t.slot_count == 16383 and abs(t.node_count() - 1207) / 1207 <= 0.05


def test_node_count_small_trees():
    assert maple_node_count(0) == 0
    assert all(maple_node_count(s) == 1 for s in range(1, 17))
    assert maple_node_count(17) >= 3                          # two leaves and a root at least
    counts = [maple_node_count(s) for s in range(0, 70000, 97)]
    assert counts == sorted(counts)                           # monotone in slots
    # never better than perfectly full nodes, never worse than the minimum fill (~0.21/slot)
    for s in (100, 1000, 10_000, 100_000, 1_000_000):
        assert s / 16 < maple_node_count(s) < 0.21 * s


class _Entry:
    """A reserved (non-VMA) entry, as the tree design's GuardEntry."""

    __slots__ = ("vm_start", "vm_end")
    is_guard_entry = True

    def __init__(self, start: int, end: int) -> None:
        self.vm_start, self.vm_end = start, end


class _Vma(_Entry):
    __slots__ = ()
    is_guard_entry = False


def test_reserved_entries_take_slots_but_not_map_count():
    from sparsemm.model.vma_tree import VmaTree

    page, base = 4096, 0x100000
    tree = VmaTree()
    entry, vma = _Entry(base, base + page), _Vma(base + page, base + 2 * page)
    tree.insert(entry)
    tree.insert(vma)
    assert len(tree) == 1 and tree.reserved_count == 1
    assert tree.slot_count == 2 + tree.gap_count
    # Gap searches treat the reserved entry as occupied.
    assert tree.unmapped_area(page, base, base + 3 * page) == base + 2 * page
    with pytest.raises(ValueError):
        tree.insert(_Entry(base, base + page))  # overlaps: the count is unchanged
    assert tree.reserved_count == 1
    tree.check()
    tree.remove(entry)
    assert len(tree) == 1 and tree.reserved_count == 0
    assert tree.last() is vma
    tree.check()
