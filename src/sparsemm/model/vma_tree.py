"""VmaTree: the model's index of VMAs by address, standing in for the kernel's maple tree ``mm->mm_mt``.

Owns the address order of VMAs and the free-gap bookkeeping behind ``vm_unmapped_area()``;
reports every range it stores or erases to its node model (``model.maple``), which counts the
maple nodes. It never touches a VMA's other fields and makes no OS calls.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from itertools import chain, compress
from typing import Any, ClassVar, Iterator

from sparsemm._invariant import InvariantError
from sparsemm.abi import PAGE_SIZE, ULONG_MAX
from sparsemm.model.maple import MapleTree

__all__ = ["VmaTree", "maple_node_count"]

_PAGE_MASK = PAGE_SIZE - 1

# --- maple-node cost model -------------------------------------------------------------------
# include/linux/maple_tree.h: maple_leaf_64 has 16 slots, maple_arange_64 (internal nodes of an
# MT_FLAGS_ALLOC_RANGE tree such as mm_mt) has 10.  The effective fills below are calibrated on
# the slab deltas of docs/costs.md, "The maple tree" (Linux 6.18); see maple_node_count().
MAPLE_LEAF_SLOTS = 16
MAPLE_ARANGE_SLOTS = 10
LEAF_FILL_X2 = 31         # effective slots per maple_leaf_64, doubled: 15.5 of 16
INTERNAL_FILL = 10        # effective children per maple_arange_64 (max 10)
RAGGED_SLOTS = 80         # one extra, partly filled node per this many slots ...
RAGGED_MAX = 65           # ... up to this many in all


def maple_node_count(slots: int) -> int:
    """Maple nodes the kernel needs for a tree of ``slots`` slots (VMAs + NULL gap ranges). O(log S).

    Model: 0 slots -> 0 nodes; 1..16 slots -> 1 leaf (the root); otherwise
    ``leaves = ceil(S / 15.5)``, then ``ceil(prev / 10)`` per internal level until one root, plus
    ``min(65, ceil(S / 80))`` ragged nodes.  The fills are effective, fitted values (minimax
    relative error), not occupancies: the measured nodes per slot fall as trees grow (0.085 at
    4k slots, 0.075 at 65k), which a pure ``S / fill`` chain cannot follow (its best fit is off
    by 9% at both ends); the capped ragged term -- partly filled nodes at the tree's edges and
    split points -- absorbs that.  Below ~1000 slots it is a guess (the kernel data are noisy).

    Calibration against Linux 6.18 slab deltas (docs/costs.md, "The maple tree"; S = slots added):

    ==============================  ======  =====  =====  ========  =====
    layout                           VMAs     S    model  measured  error
    ==============================  ======  =====  =====  ========  =====
    contiguous (no gap slots)         4095   4095    348       348   0.0%
    contiguous                       16383  16383   1242      1290  -3.7%
    contiguous                       59999  59999   4368      4508  -3.1%
    contiguous, max_map_count wall   65394  65394   4755      4937  -3.7%
    isolated (one gap slot each)      8191  16382   1242      1207  +2.9%
    isolated                         29999  59998   4368      4211  +3.7%
    ==============================  ======  =====  =====  ========  =====

    The two layouts at equal S differ by 7% in the measurements themselves (gap slots come out
    slightly cheaper), so no slot-only formula beats about +-3.5% on both.
    """
    if slots <= 0:
        return 0
    if slots <= MAPLE_LEAF_SLOTS:
        return 1
    level = -(-slots * 2 // LEAF_FILL_X2)            # ceil(S / 15.5)
    nodes = level
    while level > 1:
        level = -(-level // INTERNAL_FILL)
        nodes += level
    return nodes + min(RAGGED_MAX, -(-slots // RAGGED_SLOTS))


class VmaTree:
    """The VMAs of one mm, in address order, with free-gap tracking; the model of ``mm->mm_mt``.

    Stored objects need integer ``vm_start``/``vm_end`` (byte addresses, page aligned, half open)
    and must not overlap.  Bounds of a stored VMA change only through :meth:`set_bounds`.

    Layout: a B+-tree of height 2 in the manner of ``sortedcontainers.SortedList`` (its
    load-factor blocks), written out here rather than built on ``SortedKeyList`` because each
    block needs parallel gap data that SortedKeyList cannot carry or keep in step.  The VMAs sit
    in blocks of about ``LOAD/2..2*LOAD``; per block three parallel sequences: ``vm_start``
    (``array('Q')``), the VMA references (list), and the free bytes just below each VMA
    (``array('Q')``: the NULL range the maple tree holds there, 0 if adjacent).  ``_mins``
    (first start per block) routes a lookup to its block with one bisect.  A max segment tree
    over the blocks -- the analogue of the ``gap[]`` array in ``maple_arange_64`` nodes -- holds
    an upper bound of each block's largest gap, so a search descends to a fitting block in
    O(log n) instead of scanning every gap.  A leaf is raised at once when a gap grows; when a
    gap shrinks the leaf stays high and the first search misled by it makes it exact.

    Complexity, n VMAs, B = 2*LOAD a constant: lookups O(log n); insert/remove/set_bounds
    O(log n) Python steps plus a C-level memmove of at most B references; a block split or merge
    rebuilds the segment tree in O(n/B) at C speed, amortised O(1) over the >= LOAD/2 updates
    between two.  unmapped_area*: amortised O(log n + B) (one C-level scan of the final block;
    correcting a stale leaf costs O(B), charged to the update that made it stale).
    Memory: about 28 bytes per VMA for the index (three 8-byte entries plus slack).
    """

    __slots__ = ("mmap_min_addr", "task_size", "_mins", "_starts", "_vmas", "_gaps",
                 "_seg", "_seg_size", "_len", "_nonzero_gaps", "_reserved", "maple", "_load")

    LOAD: ClassVar[int] = 256   # blocks hold LOAD//2 .. 2*LOAD VMAs (sortedcontainers' load-factor scheme)
    NODE_MODEL: ClassVar[bool] = True  # whether new trees keep a node model by default
                                       # (bench/bench_maple.py turns it off to measure its cost)

    def __init__(self, mmap_min_addr: int = 0x10000, task_size: int = 0x7FFF_FFFF_F000,
                 nodes: bool | None = None, load: int = 0) -> None:
        """An empty tree for an address space ``[0, task_size)``.  O(1).

        ``mmap_min_addr`` is the floor for :meth:`unmapped_area` searches (vm.mmap_min_addr);
        :meth:`insert` accepts VMAs below it, as the kernel does for privileged callers.
        ``nodes``: keep a node model (:attr:`maple`, a ``MapleTree``) that every store and erase
        is reported to (default :attr:`NODE_MODEL`); without one :meth:`node_count` falls back
        to :func:`maple_node_count`. ``load``: the block load factor (default :attr:`LOAD`;
        tests pass a tiny one so a few VMAs exercise block splits and merges).
        """
        if task_size & _PAGE_MASK or mmap_min_addr < 0 or task_size <= mmap_min_addr:
            raise ValueError("need 0 <= mmap_min_addr < task_size, task_size page aligned")
        if load < 0 or load == 1:
            raise ValueError("need load >= 2 (0: the default)")
        self.mmap_min_addr = mmap_min_addr
        self.task_size = task_size
        self._load = load or self.LOAD
        self._mins: list[int] = []               # _mins[b] == _starts[b][0]
        self._starts: list[array] = []           # per block: vm_start of each VMA, ascending
        self._vmas: list[list[Any]] = []         # per block: the VMAs, parallel to _starts
        self._gaps: list[array] = []             # per block: free bytes below each VMA
        self._seg: list[int] = [-1, -1]          # max segment tree over blocks; leaf b = max(_gaps[b])
        self._seg_size = 1                       # leaves start at index _seg_size (a power of 2)
        self._len = 0
        self._nonzero_gaps = 0                   # VMAs whose gap below is > 0
        self._reserved = 0                       # stored entries that are not VMAs (see below)
        self.maple: MapleTree | None = MapleTree() if (self.NODE_MODEL if nodes is None else nodes) else None

    # ---- size and iteration ------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of VMAs (the kernel's ``mm->map_count``).  O(1).

        Reserved entries (objects whose ``is_guard_entry`` is true: the ``tree`` guard
        design's guard entries) occupy tree slots and take part in lookups and gap
        searches, but are not VMAs and do not count here.
        """
        return self._len - self._reserved

    @property
    def reserved_count(self) -> int:
        """Stored reserved (non-VMA) entries.  O(1)."""
        return self._reserved

    def __iter__(self) -> Iterator[Any]:
        """The VMAs in address order (``for_each_vma``).  O(1) per step; do not mutate meanwhile."""
        return chain.from_iterable(self._vmas)

    def __repr__(self) -> str:
        return f"<VmaTree map_count={len(self)} reserved={self._reserved} gaps={self.gap_count} nodes={self.node_count()}>"

    # ---- lookups -----------------------------------------------------------------------------

    def find(self, addr: int) -> Any:
        """The VMA containing ``addr`` (``vma_lookup()``), or None.  O(log n)."""
        b = bisect_right(self._mins, addr) - 1
        if b < 0:
            return None
        starts = self._starts[b]
        vma = self._vmas[b][bisect_right(starts, addr) - 1]
        return vma if addr < vma.vm_end else None

    def find_vma(self, addr: int) -> Any:
        """The first VMA with ``vm_end > addr`` (mm/mmap.c ``find_vma()``), or None.  O(log n)."""
        b = bisect_right(self._mins, addr) - 1
        if b < 0:
            return self._vmas[0][0] if self._len else None
        k = bisect_right(self._starts[b], addr) - 1
        vmas = self._vmas[b]
        vma = vmas[k]
        if addr < vma.vm_end:
            return vma
        return self._at(b, k + 1)

    def find_vma_prev(self, addr: int) -> tuple[Any, Any]:
        """``(find_vma(addr), the entry before it)`` in one descent (mm/mmap.c ``find_vma_prev()``).

        When no VMA ends above ``addr`` the first item is None and the second is :meth:`last`.
        O(log n).
        """
        vmas_by_block = self._vmas
        b = bisect_right(self._mins, addr) - 1
        if b < 0:
            return (vmas_by_block[0][0] if self._len else None), None
        vmas = vmas_by_block[b]
        k = bisect_right(self._starts[b], addr) - 1
        vma = vmas[k]
        if addr < vma.vm_end:
            if k:
                return vma, vmas[k - 1]
            return vma, (vmas_by_block[b - 1][-1] if b else None)
        return self._at(b, k + 1), vma

    def last(self) -> Any:
        """The highest entry, or None.  O(1)."""
        return self._vmas[-1][-1] if self._len else None

    def prev(self, vma: Any) -> Any:
        """The VMA before ``vma`` in address order (``vma_prev()``), or None.  O(log n)."""
        b, k = self._locate(vma)
        if k:
            return self._vmas[b][k - 1]
        return self._vmas[b - 1][-1] if b else None

    def next(self, vma: Any) -> Any:
        """The VMA after ``vma`` in address order (``vma_next()``), or None.  O(log n)."""
        b, k = self._locate(vma)
        return self._at(b, k + 1)

    def overlapping(self, start: int, end: int) -> list:
        """The VMAs intersecting ``[start, end)``, in order (``for_each_vma_range``).  O(log n + k)."""
        out: list = []
        if start >= end or not self._len:
            return out
        b = bisect_right(self._mins, start) - 1
        if b < 0:
            b, k = 0, 0
        else:
            k = bisect_right(self._starts[b], start) - 1
            if self._vmas[b][k].vm_end <= start:
                k += 1
        nblocks = len(self._vmas)
        while b < nblocks:
            vmas = self._vmas[b]
            for i in range(k, len(vmas)):
                vma = vmas[i]
                if vma.vm_start >= end:
                    return out
                out.append(vma)
            b += 1
            k = 0
        return out

    # ---- counters for the cost model ---------------------------------------------------------

    @property
    def gap_count(self) -> int:
        """NULL ranges the kernel's tree over ``[0, ULONG_MAX]`` holds for this layout.  O(1).

        One below the first VMA unless it starts at 0, one between each pair of non-adjacent
        VMAs, and one above the last VMA (always: ``vm_end <= task_size < ULONG_MAX``).  An
        empty tree holds nothing (the kernel's root is NULL), so 0.
        """
        return self._nonzero_gaps + 1 if self._len else 0

    @property
    def slot_count(self) -> int:
        """Maple-tree slots: VMAs + reserved entries + :attr:`gap_count`.  O(1)."""
        return self._len + self._nonzero_gaps + 1 if self._len else 0

    def node_count(self) -> int:
        """``maple_node`` objects (256 B each) the kernel would use.  O(log n).

        The node model's count (:attr:`maple`, which followed every store in order), else the
        slot-count estimate :func:`maple_node_count`.
        """
        if self.maple is not None:
            return self.maple.node_count()
        return maple_node_count(self.slot_count)

    def dup_nodes(self, parent: "VmaTree") -> None:
        """Fork's tree copy (``dup_mmap`` -> ``__mt_dup``): take a node-for-node copy of
        ``parent``'s node model, then erase the parent's entries this tree does not hold
        (``VM_DONTCOPY``), one NULL store each as ``dup_mmap`` does; a parent without a node
        model has a child without one.  O(n)."""
        if parent.maple is None:
            self.maple = None
            return
        if self.maple is None:
            return
        maple = parent.maple.copy()
        mine = {(v.vm_start, v.vm_end) for v in self}
        for v in parent:
            if (v.vm_start, v.vm_end) not in mine:
                maple.flush()
                maple.erase(v.vm_start, v.vm_end)
        self.maple = maple

    # ---- mutation ----------------------------------------------------------------------------

    def insert(self, vma: Any) -> None:
        """Add ``vma`` (``vma_iter_store()``).  ValueError if it overlaps a stored VMA.  O(log n)*.

        (*) Here and below: plus a C-level memmove of at most 2*LOAD entries, and an O(n/LOAD)
        segment-tree rebuild amortised over the LOAD/2 or more updates between block splits.
        """
        start, end = vma.vm_start, vma.vm_end
        self._check_bounds(start, end)
        if getattr(vma, "is_guard_entry", False):
            self._reserved += 1  # undone below if the insert fails
            try:
                self._insert(vma, start, end)
            except ValueError:
                self._reserved -= 1
                raise
        else:
            self._insert(vma, start, end)
        if self.maple is not None:
            self.maple.store(start, end, vma)

    def _insert(self, vma: Any, start: int, end: int) -> None:
        if not self._len:
            gap = start
            self._mins.append(start)
            self._starts.append(array("Q", (start,)))
            self._vmas.append([vma])
            self._gaps.append(array("Q", (gap,)))
            self._len = 1
            self._nonzero_gaps = 1 if gap else 0
            self._rebuild_seg()
            return
        mins = self._mins
        b = bisect_right(mins, start) - 1
        if b < 0:                       # new lowest VMA: goes first in block 0
            b = k = 0
            prev_end = 0
        else:
            k = bisect_right(self._starts[b], start)
            prev = self._vmas[b][k - 1]
            prev_end = prev.vm_end
            if prev_end > start:
                raise ValueError(f"[{start:#x}, {end:#x}) overlaps [{prev.vm_start:#x}, {prev_end:#x})")
        starts = self._starts[b]
        gaps = self._gaps[b]
        # The VMA after the insertion point, which owns the gap being split.
        if k < len(starts):
            nb, nk = b, k
        elif b + 1 < len(mins):
            nb, nk = b + 1, 0
        else:
            nb = -1
        if nb >= 0:
            nxt_start = self._starts[nb][nk]
            if nxt_start < end:
                raise ValueError(f"[{start:#x}, {end:#x}) overlaps the VMA at {nxt_start:#x}")
        gap = start - prev_end
        starts.insert(k, start)
        self._vmas[b].insert(k, vma)
        gaps.insert(k, gap)
        if k == 0:
            mins[b] = start
        self._len += 1
        if gap:
            self._nonzero_gaps += 1
            seg = self._seg
            if gap > seg[self._seg_size + b]:
                self._seg_raise(b, gap)
        if nb >= 0:
            if nb == b:
                nk += 1
            self._set_gap(nb, nk, nxt_start - end)
        if len(starts) > 2 * self._load:
            self._split(b)

    def remove(self, vma: Any) -> None:
        """Remove ``vma`` (``vma_iter_clear()``); ValueError if not stored.  O(log n)*."""
        b, k = self._locate(vma)
        if getattr(vma, "is_guard_entry", False):
            self._reserved -= 1
        if self.maple is not None:
            self.maple.erase(vma.vm_start, vma.vm_end)
        starts = self._starts[b]
        gaps = self._gaps[b]
        gap = gaps[k]
        del starts[k]
        del self._vmas[b][k]
        del gaps[k]
        self._len -= 1
        if gap:
            self._nonzero_gaps -= 1
        if not starts:
            self._drop_block(b)
            nb = b            # the next VMA (if any) is now first of block b
            nk = 0
            b = -1
        else:
            if k == 0:
                self._mins[b] = starts[0]
            nb, nk = b, k
            if k == len(starts):
                nb, nk = b + 1, 0
        if nb < len(self._starts):
            # The next VMA's gap absorbs the removed VMA and its gap (it only grows).
            self._set_gap(nb, nk, self._gaps[nb][nk] + gap + (vma.vm_end - vma.vm_start))
        if b >= 0:
            if len(starts) < self._load // 2 and len(self._starts) > 1:
                self._merge(b)

    def replace(self, old: Any, new: Any) -> None:
        """Store ``new`` where ``old`` is; they must have the same bounds (the tree design
        turning a VMA into a guard entry).  Gaps and order are unchanged.  O(log n).
        """
        if (new.vm_start, new.vm_end) != (old.vm_start, old.vm_end):
            raise ValueError("replace needs equal bounds")
        b, k = self._locate(old)
        self._vmas[b][k] = new
        self._reserved += bool(getattr(new, "is_guard_entry", False)) - bool(
            getattr(old, "is_guard_entry", False))
        if self.maple is not None:
            self.maple.store(new.vm_start, new.vm_end, new)

    def split(self, vma: Any, addr: int, upper: Any) -> None:
        """Cut the stored ``vma`` at ``addr`` (``__split_vma()``'s tree update): ``vma`` keeps
        ``[vm_start, addr)`` and ``upper`` (``vm_start == addr``, ``vm_end`` the old end) is
        stored right after it.  One lookup: no overlap search is needed, the new gap is 0
        and the next VMA's gap is unchanged.  ValueError (nothing changed) for a bad cut.
        O(log n)*.
        """
        if not (vma.vm_start < addr < vma.vm_end) or addr & _PAGE_MASK or \
                upper.vm_start != addr or upper.vm_end != vma.vm_end:
            raise ValueError(f"bad split of [{vma.vm_start:#x}, {vma.vm_end:#x}) at {addr:#x} "
                             f"into [{upper.vm_start:#x}, {upper.vm_end:#x})")
        b, k = self._locate(vma)
        vma.vm_end = addr
        k += 1
        starts = self._starts[b]
        starts.insert(k, addr)
        self._vmas[b].insert(k, upper)
        self._gaps[b].insert(k, 0)
        self._len += 1
        if getattr(upper, "is_guard_entry", False):
            self._reserved += 1
        if self.maple is not None:  # __split_vma stores one part over the old entry's range
            self.maple.store(addr, upper.vm_end, upper)
        if len(starts) > 2 * self._load:
            self._split(b)

    def set_bounds(self, vma: Any, vm_start: int, vm_end: int) -> None:
        """Change a stored VMA's bounds (split, merge, expand, move).  O(log n)*.

        ValueError (and nothing changed) if the new range overlaps another VMA.  When the VMA
        stays between its neighbours this is an in-place update; otherwise remove + insert.
        """
        self._check_bounds(vm_start, vm_end)
        b, k = self._locate(vma)
        starts = self._starts[b]
        if k:
            prev_end = self._vmas[b][k - 1].vm_end
        elif b:
            prev_end = self._vmas[b - 1][-1].vm_end
        else:
            prev_end = 0
        if k + 1 < len(starts):
            nb, nk = b, k + 1
        elif b + 1 < len(self._starts):
            nb, nk = b + 1, 0
        else:
            nb = -1
        nxt_start = self._starts[nb][nk] if nb >= 0 else self.task_size
        if prev_end <= vm_start and vm_end <= nxt_start:
            if self.maple is not None:
                self._report_bounds(vma, vm_start, vm_end)
            if k == 0 and vm_start != starts[0]:
                self._mins[b] = vm_start
            starts[k] = vm_start
            vma.vm_start = vm_start
            vma.vm_end = vm_end
            self._set_gap(b, k, vm_start - prev_end)
            if nb >= 0:
                self._set_gap(nb, nk, nxt_start - vm_end)
            return
        old_start, old_end = vma.vm_start, vma.vm_end
        self.remove(vma)
        vma.vm_start, vma.vm_end = vm_start, vm_end
        try:
            self.insert(vma)
        except ValueError:
            vma.vm_start, vma.vm_end = old_start, old_end
            self.insert(vma)
            raise

    def _report_bounds(self, vma: Any, vm_start: int, vm_end: int) -> None:
        """New bounds in place: the part given up is erased, a grown range is stored
        (``vma_expand``/``commit_merge`` store the VMA over its whole new range)."""
        maple = self.maple
        if maple is None:
            return
        old_start, old_end = vma.vm_start, vma.vm_end
        if old_start < vm_start:
            maple.erase(old_start, min(vm_start, old_end))
        if vm_end < old_end:
            maple.erase(max(vm_end, old_start), old_end)
        if vm_start < old_start or vm_end > old_end:
            maple.store(vm_start, vm_end, vma)

    # ---- vm_unmapped_area() --------------------------------------------------------------------

    def unmapped_area_topdown(self, length: int, low: int, high: int, align_mask: int = 0) -> int | None:
        """Top-down ``vm_unmapped_area()`` (mm/vma.c ``unmapped_area_topdown()``).  Amortised O(log n + B).

        Returns the highest page-aligned ``A`` with ``low <= A``, ``A + length <= high`` and
        ``[A, A + length)`` free, or None (the kernel's -ENOMEM).  Kernel rules kept: ``low`` is
        raised to ``mmap_min_addr`` (``high`` is capped at ``task_size``); with an ``align_mask``
        the gap must hold ``length + align_mask`` bytes (worst-case alignment slack) and ``A`` is
        rounded down to ``align_mask + 1``, so an aligned fit in a tighter gap is not found,
        exactly as in the kernel.  Not modelled: ``stack_guard_gap`` (no VM_GROWSDOWN/UP
        retry), ``start_gap`` and ``align_offset``.
        """
        need, low, high = self._search_args(length, low, high, align_mask)
        if need is None:
            return None
        clear = ~align_mask
        # p = position of the first VMA with vm_start >= high; its gap straddles high.
        mins = self._mins
        b = bisect_left(mins, high) - 1
        if b < 0:
            prev_end = 0
            b = k = 0
        else:
            k = bisect_left(self._starts[b], high)
            prev_end = self._vmas[b][k - 1].vm_end
        if prev_end < high and high - max(prev_end, low) >= need:
            return (high - length) & clear
        # Highest VMA j before p whose gap below holds `need` bytes.
        found = self._last_gap(b, k, need)
        if found is None:
            return None
        fb, fk = found
        gap_end = self._starts[fb][fk]
        gap_start = gap_end - self._gaps[fb][fk]
        if gap_end - max(gap_start, low) < need:
            return None                 # the gap straddles low; every lower gap is below low
        return (gap_end - length) & clear

    def unmapped_area(self, length: int, low: int, high: int, align_mask: int = 0) -> int | None:
        """Bottom-up ``vm_unmapped_area()`` (mm/vma.c ``unmapped_area()``).  Amortised O(log n + B).

        The lowest page-aligned ``A`` with ``low <= A``, ``A + length <= high``, ``[A, A+length)``
        free, or None; same kernel rules and limits as :meth:`unmapped_area_topdown` (``A`` is
        rounded up to ``align_mask + 1``).
        """
        need, low, high = self._search_args(length, low, high, align_mask)
        if need is None:
            return None
        # (b, k) = position of the first VMA with vm_start > low; its gap may straddle low.
        mins = self._mins
        n = self._len
        b = bisect_right(mins, low) - 1
        if b < 0:
            b = k = 0
            prev_end = 0
        else:
            k = bisect_right(self._starts[b], low)
            prev_end = self._vmas[b][k - 1].vm_end
        if n and k == len(self._starts[b]) and b + 1 < len(mins):
            b, k = b + 1, 0
        nxt_start = self._starts[b][k] if n and k < len(self._starts[b]) else ULONG_MAX
        if prev_end <= low:
            if min(nxt_start, high) - low >= need:
                return low + (-low & align_mask)
            if nxt_start == ULONG_MAX:
                return None
            k += 1                      # that gap is done; search above it
        found = self._first_gap(b, k, need) if n else None
        if found is not None:
            fb, fk = found
            gap_end = self._starts[fb][fk]
            gap_start = gap_end - self._gaps[fb][fk]
        else:                           # the gap above the last VMA, up to ULONG_MAX
            gap_start = self._vmas[-1][-1].vm_end if n else 0
            gap_end = ULONG_MAX
        if min(gap_end, high) - gap_start < need:
            return None                 # gap_start >= low here; higher gaps start even higher
        return gap_start + (-gap_start & align_mask)

    # ---- invariants --------------------------------------------------------------------------

    def check(self) -> None:
        """Verify every invariant and recount every cached counter; ``InvariantError`` if
        broken.  O(n)."""
        def fail(msg: str) -> None:
            raise InvariantError(f"VmaTree: {msg}")

        nblocks = len(self._starts)
        if not (len(self._mins) == len(self._vmas) == len(self._gaps) == nblocks):
            fail("per-block lists differ in length")
        total = 0
        nonzero = 0
        reserved = 0
        prev_end = 0
        prev = None
        for b in range(nblocks):
            starts, vmas, gaps = self._starts[b], self._vmas[b], self._gaps[b]
            if not starts:
                fail(f"block {b} is empty")
            if not (len(starts) == len(vmas) == len(gaps)):
                fail(f"block {b}: parallel lists differ in length")
            if len(starts) > 2 * self._load:
                fail(f"block {b} holds {len(starts)} > 2*LOAD")
            if self._mins[b] != starts[0]:
                fail(f"_mins[{b}]={self._mins[b]:#x} != first start {starts[0]:#x}")
            for k, vma in enumerate(vmas):
                s, e = vma.vm_start, vma.vm_end
                if starts[k] != s:
                    fail(f"block {b}[{k}]: stored start {starts[k]:#x} != vma.vm_start {s:#x}")
                if not (0 <= s < e <= self.task_size) or (s | e) & _PAGE_MASK:
                    fail(f"bad bounds [{s:#x}, {e:#x})")
                if s < prev_end:
                    fail(f"[{s:#x}, {e:#x}) overlaps or precedes {prev!r} ending {prev_end:#x}")
                if gaps[k] != s - prev_end:
                    fail(f"block {b}[{k}]: gap {gaps[k]:#x} != {s - prev_end:#x}")
                if s != prev_end:
                    nonzero += 1
                reserved += bool(getattr(vma, "is_guard_entry", False))
                prev_end, prev = e, vma
            total += len(starts)
            if self._seg[self._seg_size + b] < max(gaps):
                fail(f"segment leaf {b} = {self._seg[self._seg_size + b]:#x} < block max {max(gaps):#x}")
        if total != self._len:
            fail(f"_len {self._len} != recount {total}")
        if reserved != self._reserved:
            fail(f"_reserved {self._reserved} != recount {reserved}")
        if nonzero != self._nonzero_gaps:
            fail(f"_nonzero_gaps {self._nonzero_gaps} != recount {nonzero}")
        size, seg = self._seg_size, self._seg
        if size < nblocks or len(seg) != 2 * size:
            fail("segment tree too small")
        if any(v != -1 for v in seg[size + nblocks:]):
            fail("unused segment leaves are not -1")
        for i in range(1, size):
            if seg[i] != max(seg[2 * i], seg[2 * i + 1]):
                fail(f"segment node {i} is not the max of its children")
        if self.maple is not None:  # the node model holds exactly the stored ranges
            self.maple.check()
            stored = [(lo, hi + 1) for lo, hi, entry in self.maple.ranges() if entry is not None]
            expect = [(v.vm_start, v.vm_end) for v in self]
            if stored != expect:
                bad = next((i for i, (a, b) in enumerate(zip(stored, expect)) if a != b),
                           min(len(stored), len(expect)))
                fail(f"node model range {bad}: {stored[bad:bad + 1]} != VMA {expect[bad:bad + 1]}")

    # ---- internals -----------------------------------------------------------------------------

    def _check_bounds(self, start: int, end: int) -> None:
        if not (0 <= start < end <= self.task_size) or (start | end) & _PAGE_MASK:
            raise ValueError(f"bad VMA bounds [{start:#x}, {end:#x}): need page-aligned "
                             f"0 <= vm_start < vm_end <= task_size ({self.task_size:#x})")

    def _search_args(self, length: int, low: int, high: int, align_mask: int):
        if length <= 0 or length & _PAGE_MASK:
            raise ValueError(f"length {length:#x} must be a positive multiple of PAGE_SIZE")
        if align_mask < 0 or align_mask & (align_mask + 1):
            raise ValueError(f"align_mask {align_mask:#x} must be 2**k - 1")
        low = max(low, self.mmap_min_addr)
        low += -low & _PAGE_MASK
        high = min(high, self.task_size) & ~_PAGE_MASK
        need = length + align_mask
        if high - low < need:
            return None, low, high
        return need, low, high

    def _at(self, b: int, k: int) -> Any:
        """The VMA at block b, index k, where k may be one past the block's end."""
        vmas = self._vmas
        if k < len(vmas[b]):
            return vmas[b][k]
        return vmas[b + 1][0] if b + 1 < len(vmas) else None

    def _locate(self, vma: Any) -> tuple[int, int]:
        start = vma.vm_start
        b = bisect_right(self._mins, start) - 1
        if b >= 0:
            k = bisect_left(self._starts[b], start)
            vmas = self._vmas[b]
            if k < len(vmas) and vmas[k] is vma:
                return b, k
        raise ValueError(f"{vma!r} is not in this VmaTree")

    def _set_gap(self, b: int, k: int, gap: int) -> None:
        gaps = self._gaps[b]
        old = gaps[k]
        if gap == old:
            return
        gaps[k] = gap
        if not old:
            self._nonzero_gaps += 1
        elif not gap:
            self._nonzero_gaps -= 1
        # Growth raises the block's leaf now; shrinkage leaves it an upper bound, which the
        # next search that trusts it in vain corrects (an O(B) max() off the update path).
        if gap > self._seg[self._seg_size + b]:
            self._seg_raise(b, gap)

    def _seg_raise(self, b: int, value: int) -> None:
        """Leaf b grew to value: raise ancestors until one already holds more."""
        seg = self._seg
        i = self._seg_size + b
        while i and seg[i] < value:
            seg[i] = value
            i >>= 1

    def _seg_set(self, b: int, value: int) -> None:
        seg = self._seg
        i = self._seg_size + b
        if seg[i] == value:
            return
        seg[i] = value
        i >>= 1
        while i:
            left = seg[2 * i]
            right = seg[2 * i + 1]
            value = left if left > right else right
            if seg[i] == value:
                return
            seg[i] = value
            i >>= 1

    def _block_maxes(self) -> list[int]:
        """The current per-block maximum gaps (the segment tree's leaves).  O(n/B)."""
        size = self._seg_size
        return self._seg[size:size + len(self._gaps)]

    def _rebuild_seg(self, leaves: list[int] | None = None) -> None:
        """Rebuild the segment tree from per-block maxima; O(n/B), C-level max() per level.

        Runs only after a block split, merge or drop (amortised over >= LOAD/2 updates).
        """
        if leaves is None:
            leaves = [max(g) for g in self._gaps]
        nblocks = len(leaves)
        size = 1
        while size < nblocks:
            size *= 2
        level = leaves + [-1] * (size - nblocks)
        levels = [level]
        while len(level) > 1:
            level = list(map(max, level[0::2], level[1::2]))
            levels.append(level)
        seg = [-1]
        for level in reversed(levels):
            seg += level
        self._seg = seg
        self._seg_size = size

    def _split(self, b: int) -> None:
        leaves = self._block_maxes()
        half = len(self._starts[b]) // 2
        lists: list[Any]
        for lists in (self._starts, self._vmas, self._gaps):
            block: Any = lists[b]
            lists.insert(b + 1, block[half:])
            del block[half:]
        self._mins.insert(b + 1, self._starts[b + 1][0])
        leaves[b:b + 1] = [max(self._gaps[b]), max(self._gaps[b + 1])]
        self._rebuild_seg(leaves)

    def _merge(self, b: int) -> None:
        """Block b is underfull: fold it into a neighbour, re-splitting if that overflows."""
        a = b - 1 if b else b          # merge blocks a and a+1
        leaves = self._block_maxes()
        for lists in (self._starts, self._vmas, self._gaps):
            lists[a].extend(lists[a + 1])
            del lists[a + 1]
        del self._mins[a + 1]
        leaves[a:a + 2] = [max(leaves[a], leaves[a + 1])]
        self._rebuild_seg(leaves)
        if len(self._starts[a]) > 2 * self._load:
            self._split(a)

    def _drop_block(self, b: int) -> None:
        leaves = self._block_maxes()
        del leaves[b]
        del self._starts[b], self._vmas[b], self._gaps[b], self._mins[b]
        self._rebuild_seg(leaves)

    def _last_gap(self, b: int, k: int, need: int) -> tuple[int, int] | None:
        """Highest position before (b, k) whose gap is >= need.

        A leaf may overstate its block's largest gap (see _set_gap); a block found that way is
        scanned in vain, its leaf is made exact, and the search goes on to its left.
        """
        seg, size = self._seg, self._seg_size
        if k and seg[size + b] >= need:
            gaps = self._gaps[b]
            hit = next(compress(range(k - 1, -1, -1), map(need.__le__, reversed(gaps[:k]))), None)
            if hit is not None:
                return b, hit
        while True:
            # Rightmost block < b with a big enough leaf: walk up the right edge of [0, b).
            hi = size + b
            while hi > 1:
                if hi & 1:
                    hi -= 1
                    if seg[hi] >= need:
                        break
                hi >>= 1
            else:
                return None
            while hi < size:
                hi = 2 * hi + 1 if seg[2 * hi + 1] >= need else 2 * hi
            b = hi - size
            gaps = self._gaps[b]
            hit = next(compress(range(len(gaps) - 1, -1, -1), map(need.__le__, reversed(gaps))), None)
            if hit is not None:
                return b, hit
            self._seg_set(b, max(gaps))

    def _first_gap(self, b: int, k: int, need: int) -> tuple[int, int] | None:
        """Lowest position at or after (b, k) whose gap is >= need (stale leaves as in _last_gap)."""
        seg, size = self._seg, self._seg_size
        gaps = self._gaps[b]
        if k < len(gaps) and seg[size + b] >= need:
            hit = next(compress(range(k, len(gaps)), map(need.__le__, gaps[k:])), None)
            if hit is not None:
                return b, hit
        while True:
            # Leftmost block > b with a big enough leaf: walk up the left edge of [b+1, size).
            lo = size + b + 1
            while lo > 1:
                if lo & 1:
                    if seg[lo] >= need:
                        break
                    lo += 1
                lo >>= 1
            else:
                return None
            while lo < size:
                lo = 2 * lo if seg[2 * lo] >= need else 2 * lo + 1
            b = lo - size
            gaps = self._gaps[b]
            hit = next(compress(range(len(gaps)), map(need.__le__, gaps)), None)
            if hit is not None:
                return b, hit
            self._seg_set(b, max(gaps))
