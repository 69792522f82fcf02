"""MapleTree: the node structure of the kernel's maple tree ``mm->mm_mt``, to count ``maple_node`` objects.

Owns a node-level model of an allocation-range maple tree in RCU mode as lib/maple_tree.c
(Linux 6.18) builds it for the VMA tree: leaves ``maple_leaf_64`` (16 slots), internal nodes
``maple_arange_64`` (10 slots), NULL ranges in slots, and the write paths that allocate and
free nodes. It knows ranges and whether an entry is NULL, nothing of VMAs: ``VmaTree`` reports
each store and erase here. Pure Python, no OS calls.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterator, Tuple

__all__ = ["MapleTree", "MapleInvariantError", "ULONG_MAX", "LEAF_SLOTS", "ARANGE_SLOTS"]

ULONG_MAX = (1 << 64) - 1

# include/linux/maple_tree.h and mt_min_slots[] in lib/maple_tree.c.
LEAF_SLOTS = 16     # MAPLE_RANGE64_SLOTS: maple_leaf_64
ARANGE_SLOTS = 10   # MAPLE_ARANGE64_SLOTS: maple_arange_64 (internal nodes of an alloc tree)
LEAF_MIN = 6        # mt_min_slots[maple_leaf_64] = 16 / 2 - 2
ARANGE_MIN = 4      # mt_min_slots[maple_arange_64] = 10 / 2 - 1


class MapleInvariantError(Exception):
    """The node model broke one of its invariants (a bug in the model, never bad input)."""


class _Node:
    """One ``struct maple_node``: ``piv[i]`` is the last index slot ``i`` covers (inclusive),
    the last one the node's own maximum; ``slot[i]`` an entry (None = NULL) in a leaf, a child
    node in an internal node. ``len(piv) == len(slot)`` (the kernel's data end + 1)."""

    __slots__ = ("leaf", "piv", "slot")

    def __init__(self, leaf: bool, piv: list[int], slot: list) -> None:
        self.leaf = leaf
        self.piv = piv
        self.slot = slot


# A position on a root-to-node path: (node, offset of the slot taken or written, node min, node max).
# Typed (not a bare tuple) so that the compiled build (sparsemm._compiled) works on native fields.
_Step = Tuple["_Node", int, int, int]


class MapleTree:
    """The nodes of one mm's maple tree, driven by range stores; :meth:`node_count` is what the
    ``maple_node`` slab holds for it once RCU-deferred frees have run.

    Indices are byte addresses, ranges half open (``store(start, end, entry)`` writes
    ``[start, end - 1]`` as the kernel's ``mas_store`` does). Every write follows the kernel's
    choice of store type (``mas_wr_store_type``): an exact fit, slot store or node store keeps
    the node count (in RCU mode a node store replaces the node, one allocated, one freed); a
    split (``mas_split``) first tries to push entries into a sibling with room
    (``mas_push_data``) and otherwise adds a node, possibly up to a new root; a node left under
    its minimum fill is rebalanced with a sibling (``mas_rebalance``) and a write across nodes is
    rebuilt (``mas_wr_spanning_store``), both through ``mas_spanning_rebalance``.

    Erases are held back one step: the kernel overwrites a VMA it merges away or replaces with
    the surviving VMA's single store, and unmaps a range with one NULL store, while ``VmaTree``
    reports a removal first. A pending erase that the next store covers is dropped; adjacent
    erases join; anything else writes it first.

    Complexity: a store or erase is O(log n) steps (the height) plus O(k) for the k nodes a
    spanning write replaces; :meth:`node_count` O(1); :meth:`check` and :meth:`copy` O(n).
    Memory: about 1/15 of a node (two list cells and a pivot) per slot.
    """

    __slots__ = ("_root", "_height", "_nodes", "_pending", "_last_leaf", "stats")

    def __init__(self) -> None:
        """An empty tree (the kernel's NULL root).  O(1)."""
        self._root: _Node | None = None
        self._height = 0
        self._nodes = 0
        self._pending: list[int] | None = None   # [start, end) of an erase not yet written
        # (leaf, min, max, is root) of the last write's leaf, like the kernel's iterator keeping
        # its position; dropped by every write that changes the tree's shape.
        self._last_leaf: tuple[_Node, int, int, bool] | None = None
        # Write paths taken: "split" mas_split calls, "level" their iterations (one per level
        # split or pushed: the kernel allocates two nodes for each), "push" of those pushed.
        self.stats = {"split": 0, "level": 0, "push": 0, "rebalance": 0, "spanning": 0,
                      "new_root": 0}

    # ---- the interface VmaTree uses ----------------------------------------------------------

    def store(self, start: int, end: int, entry: Any) -> None:
        """Write ``entry`` (not None) over ``[start, end)`` (``vma_iter_store_*``).  O(log n)*."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            if not (start <= pending[0] and pending[1] <= end):
                self._write(pending[0], pending[1] - 1, None)
        self._write(start, end - 1, entry)

    def erase(self, start: int, end: int) -> None:
        """Write NULL over ``[start, end)`` (``vma_iter_clear``), held back as described above.  O(log n)*."""
        pending = self._pending
        if pending is not None:
            if pending[1] == start:
                pending[1] = end
                return
            if pending[0] == end:
                pending[0] = start
                return
            self._write(pending[0], pending[1] - 1, None)
        self._pending = [start, end]

    def flush(self) -> None:
        """Write a held-back erase now.  O(log n)*."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._write(pending[0], pending[1] - 1, None)

    def node_count(self) -> int:
        """``maple_node`` objects in the tree (after RCU frees have run).  O(log n) (a flush)."""
        self.flush()
        return self._nodes

    @property
    def height(self) -> int:
        """Levels of nodes (``mt_height``): 0 empty, 1 a root leaf.  O(1) after a flush."""
        self.flush()
        return self._height

    def copy(self) -> "MapleTree":
        """A node-for-node copy (``__mt_dup``, used by fork's ``dup_mmap``).  O(n)."""
        self.flush()
        new = MapleTree()
        new._root = _copy(self._root)
        new._height, new._nodes = self._height, self._nodes
        return new

    def ranges(self) -> Iterator[tuple[int, int, Any]]:
        """Every slot as ``(first, last, entry)`` (inclusive, entry None for NULL), in order.  O(n)."""
        self.flush()
        lo = 0
        for leaf in self._leaves():
            for p, s in zip(leaf.piv, leaf.slot):
                yield lo, p, s
                lo = p + 1

    def leaf_fill(self) -> list[int]:
        """Slots used in each leaf, left to right (for benchmarks and tests).  O(n)."""
        self.flush()
        return [len(leaf.piv) for leaf in self._leaves()]

    def __repr__(self) -> str:
        return f"<MapleTree nodes={self._nodes} height={self._height}>"

    # ---- invariants ---------------------------------------------------------------------------

    def check(self) -> None:
        """Verify the tree's shape and counters; MapleInvariantError naming the first break.  O(n).

        Every leaf at depth ``height``; pivots strictly increasing inside each node and ending at
        the node's maximum (the parent's pivot, ULONG_MAX for the root); an internal node's
        pivots equal its children's maxima; node sizes within 1..16 (leaf) and 1..10 (internal);
        the leaves cover ``[0, ULONG_MAX]`` with no two NULL slots in a row; a tree with no entry
        has no node; the node count and height match a recount.
        """
        self.flush()

        def fail(msg: str) -> None:
            raise MapleInvariantError(f"MapleTree: {msg}")

        root = self._root
        if root is None:
            if self._nodes or self._height:
                fail(f"empty tree with nodes={self._nodes} height={self._height}")
            return
        count = 0
        prev_null = False
        entries = 0
        stack = [(root, 0, ULONG_MAX, 1)]
        while stack:
            node, lo, hi, depth = stack.pop()
            count += 1
            piv, slot = node.piv, node.slot
            n = len(piv)
            cap = LEAF_SLOTS if node.leaf else ARANGE_SLOTS
            if n != len(slot) or not 1 <= n <= cap:
                fail(f"node [{lo:#x}, {hi:#x}] holds {n} pivots, {len(slot)} slots (cap {cap})")
            if piv[-1] != hi:
                fail(f"node [{lo:#x}, {hi:#x}] ends at {piv[-1]:#x}")
            last = lo - 1
            for p in piv:
                if p <= last:
                    fail(f"node [{lo:#x}, {hi:#x}]: pivots not increasing at {p:#x}")
                last = p
            if node.leaf:
                if depth != self._height:
                    fail(f"leaf [{lo:#x}, {hi:#x}] at depth {depth}, height {self._height}")
                for s in slot:
                    if s is None and prev_null:
                        fail(f"two NULL slots in a row in or before leaf [{lo:#x}, {hi:#x}]")
                    prev_null = s is None
                    entries += not prev_null
            else:
                children = []
                c_lo = lo
                for p, child in zip(piv, slot):
                    if not isinstance(child, _Node):
                        fail(f"internal node [{lo:#x}, {hi:#x}] holds a non-node")
                    if child.piv[-1] != p:
                        fail(f"child ends at {child.piv[-1]:#x}, parent pivot {p:#x}")
                    children.append((child, c_lo, p, depth + 1))
                    c_lo = p + 1
                stack.extend(reversed(children))
        if not entries:
            fail("a tree with no entry keeps nodes")
        if count != self._nodes:
            fail(f"node count {self._nodes} != recount {count}")

    # ---- writes (lib/maple_tree.c) ------------------------------------------------------------

    def _write(self, index: int, last: int, entry: Any) -> None:
        """``mas_store``: write ``entry`` over ``[index, last]``."""
        node: _Node
        cached = self._last_leaf
        if cached is not None and entry is not None and cached[1] <= index and last <= cached[2]:
            node = cached[0]
            if self._in_place(node, bisect_left(node.piv, index), cached[1], index, last, entry,
                              cached[3]):
                return
        self._last_leaf = None
        root = self._root
        if root is None:                                    # mas_store_root
            if entry is not None:
                self._root_expand(index, last, entry)
            return
        # mas_wr_walk: descend to the leaf, stopping where the write spans (mas_is_span_wr).
        node = root
        piv: list[int]
        lo, hi = 0, ULONG_MAX
        depth = 1
        while not node.leaf:
            piv = node.piv
            off = bisect_left(piv, index)
            r_max = piv[off]
            if last > r_max or (last == r_max and entry is None and last != ULONG_MAX):
                return self._spanning_store(index, last, entry)
            if off:
                lo = piv[off - 1] + 1
            hi = r_max
            node = node.slot[off]
            depth += 1
        if last > hi or (last == hi and entry is None and hi != ULONG_MAX):
            return self._spanning_store(index, last, entry)
        piv = node.piv
        off = bisect_left(piv, index)
        if entry is not None and self._in_place(node, off, lo, index, last, entry, depth == 1):
            self._last_leaf = (node, lo, hi, depth == 1)
            return
        path = self._walk(index)                            # the parents, for a split or rebalance
        slot: list[Any] = node.slot
        end = len(piv) - 1
        r_min = piv[off - 1] + 1 if off else lo
        r_max = piv[off]
        oe = off if last <= r_max else bisect_left(piv, last, off)   # mas_wr_end_piv
        end_piv = piv[oe]
        content = slot[off]
        if entry is None:                                   # mas_wr_extend_null
            if slot[oe] is None:
                last = end_piv
            elif last == end_piv and oe != end and slot[oe + 1] is None:
                oe += 1
                last = end_piv = piv[oe]
            if content is None:
                index = r_min
            elif index == r_min and off and slot[off - 1] is None:
                off -= 1
                r_min = index = piv[off - 1] + 1 if off else lo
                r_max = piv[off]
        if r_min == index and r_max == last:                # wr_exact_fit
            slot[off] = entry
            return
        if not index and last == ULONG_MAX:                 # wr_new_root
            return self._new_root(entry)
        new_end = end + 2 - (oe - off) - (r_min == index) - (end_piv == last)   # mas_wr_new_end
        # mas_store_b_node: the node's content with the write applied.
        bp = piv[:off]
        bs = slot[:off]
        if r_min < index:
            bp.append(index - 1)
            bs.append(content)
        bp.append(last)
        bs.append(entry)
        if last < hi:
            p = piv[oe]
            if p > last:
                bp.append(p)
                bs.append(slot[oe])
            bp += piv[oe + 1:]
            bs += slot[oe + 1:]
        if len(bp) != new_end + 1:
            raise MapleInvariantError(f"MapleTree: new end {new_end} but {len(bp)} slots")
        if new_end < LEAF_MIN and len(path) > 1:            # wr_rebalance
            self._rebalance(path, bp, bs)
        elif new_end >= LEAF_SLOTS:                         # wr_split_store
            self._split(path, bp, bs)
        else:                                               # wr_node_store / wr_slot_store
            node.piv = bp
            node.slot = bs

    @staticmethod
    def _in_place(node: _Node, off: int, lo: int, index: int, last: int, entry: Any,
                  is_root: bool) -> bool:
        """A write of an entry inside one slot of ``node`` (a VMA split, a VMA placed in a gap):
        the common case. Done here when it is an exact fit or a node store that leaves the node
        within its bounds (``mas_wr_store_type``), which keeps the node count; False otherwise."""
        piv: list[int] = node.piv
        r_max = piv[off]
        if last > r_max:
            return False
        slot: list[Any] = node.slot
        if (piv[off - 1] + 1 if off else lo) == index:
            if last == r_max:                               # wr_exact_fit
                slot[off] = entry
                return True
            new_end = len(piv)                              # end + 1
            if not (LEAF_MIN <= new_end < LEAF_SLOTS or (is_root and new_end < LEAF_SLOTS)):
                return False
            piv.insert(off, last)
            slot.insert(off, entry)
        elif last == r_max:
            new_end = len(piv)
            if not (LEAF_MIN <= new_end < LEAF_SLOTS or (is_root and new_end < LEAF_SLOTS)):
                return False
            piv.insert(off, index - 1)
            slot.insert(off + 1, entry)
        else:
            new_end = len(piv) + 1
            if not (LEAF_MIN <= new_end < LEAF_SLOTS or (is_root and new_end < LEAF_SLOTS)):
                return False
            piv[off:off] = [index - 1, last]
            slot[off:off] = [slot[off], entry]
        return True

    def _root_expand(self, index: int, last: int, entry: Any) -> None:
        """``mas_root_expand``: the first entry makes a root leaf, NULL around it."""
        piv: list[int] = []
        slot: list = []
        if index:
            piv.append(index - 1)
            slot.append(None)
        piv.append(last)
        slot.append(entry)
        if last != ULONG_MAX:
            piv.append(ULONG_MAX)
            slot.append(None)
        self._root = _Node(True, piv, slot)
        self._height = self._nodes = 1

    def _new_root(self, entry: Any) -> None:
        """``mas_new_root``: a write of ``[0, ULONG_MAX]`` drops every node."""
        self.stats["new_root"] += 1
        if entry is None:
            self._root, self._height, self._nodes = None, 0, 0
        else:
            self._root = _Node(True, [ULONG_MAX], [entry])
            self._height = self._nodes = 1

    # ---- mas_split ----------------------------------------------------------------------------

    def _split(self, path: list[_Step], bp: list[int], bs: list) -> None:
        """``mas_split``: the node at the end of ``path`` overflows with ``bp``/``bs``; push into
        a sibling with room (``mas_push_data``) or split in two (``mab_calc_split``), upwards
        until a parent has room or a new root is made."""
        self.stats["split"] += 1
        level = len(path) - 1
        split_min = 0                  # mas_split's first mab_calc_split gets a fresh state's min
        while True:
            node, _, lo, hi = path[level]
            leaf = node.leaf
            cap = LEAF_SLOTS if leaf else ARANGE_SLOTS
            self.stats["level"] += 1
            if level:
                parent, poff = path[level - 1][0], path[level - 1][1]
                if self._push(parent, poff, leaf, cap, bp, bs, True, hi == ULONG_MAX):
                    return
                if self._push(parent, poff, leaf, cap, bp, bs, False, False):
                    return
            split, _ = _calc_split(bp, bs, cap, leaf, split_min)
            left = _Node(leaf, bp[:split + 1], bs[:split + 1])
            right = _Node(leaf, bp[split + 1:], bs[split + 1:])
            self._nodes += 1                                # one node became two
            if not level:                                   # the root split: a new root above
                self._root = _Node(False, [bp[split], hi], [left, right])
                self._nodes += 1
                self._height += 1
                return
            pp, ps = parent.piv, parent.slot
            bp = pp[:poff] + [bp[split]] + pp[poff:]
            bs = ps[:poff] + [left, right] + ps[poff + 1:]
            level -= 1
            split_min = path[level][2]
            if len(bp) <= ARANGE_SLOTS:                     # mas_split_final_node
                parent.piv, parent.slot = bp, bs
                return

    def _push(self, parent: _Node, poff: int, leaf: bool, cap: int, bp: list[int], bs: list,
              left: bool, rightmost: bool) -> bool:
        """``mas_push_data``: share the overflowing node with its left (or right) sibling when
        both fit in two nodes with room to spare; the count does not change."""
        sib: _Node
        if left:
            if not poff:
                return False
            sib = parent.slot[poff - 1]
        else:
            if poff >= len(parent.slot) - 1:
                return False
            sib = parent.slot[poff + 1]
        slot_total = len(bp) - 1 + len(sib.piv) - 1
        space = 2 * cap - 2 - leaf - rightmost
        if slot_total >= space:
            return False
        if left:
            cp, cs = sib.piv + bp, sib.slot + bs
            split = _no_null_split(cs, cap - 2, cap, leaf, len(cp) - 1)
            i = poff - 1
        else:
            cp, cs = bp + sib.piv, bs + sib.slot
            split = _no_null_split(cs, slot_total - (cap - 2), cap, leaf, len(cp))
            i = poff
        parent.piv[i] = cp[split]
        parent.slot[i] = _Node(leaf, cp[:split + 1], cs[:split + 1])
        parent.slot[i + 1] = _Node(leaf, cp[split + 1:], cs[split + 1:])
        self.stats["push"] += 1
        return True

    # ---- mas_rebalance, mas_wr_spanning_store, mas_spanning_rebalance --------------------------

    def _rebalance(self, path: list[_Step], bp: list[int], bs: list) -> None:
        """``mas_rebalance``: a non-root leaf fell under ``LEAF_MIN``: join it with its next
        sibling (else its previous one) and rebuild from there up."""
        self.stats["rebalance"] += 1
        node, off, lo, hi = path[-1]
        parent, poff, plo, phi = path[-2]
        left = right = path
        if poff < len(parent.slot) - 1:                     # mas_next_sibling
            sib = parent.slot[poff + 1]
            bp, bs = bp + sib.piv, bs + sib.slot
            right = path[:-2] + [(parent, poff + 1, plo, phi), (sib, 0, hi + 1, sib.piv[-1])]
        elif poff:                                          # mas_prev_sibling
            sib = parent.slot[poff - 1]
            bp, bs = sib.piv + bp, sib.slot + bs
            sib_lo = parent.piv[poff - 2] + 1 if poff >= 2 else plo
            left = path[:-2] + [(parent, poff - 1, plo, phi), (sib, len(sib.piv) - 1, sib_lo, lo - 1)]
        self._rebuild(left, right, bp, bs, self._height)

    def _spanning_store(self, index: int, last: int, entry: Any) -> None:
        """``mas_wr_spanning_store``: a write across leaves (or a NULL ending a leaf) joins the
        leaf of ``index`` with the leaf after ``last`` and rebuilds from there up."""
        self.stats["spanning"] += 1
        if not index and last == ULONG_MAX:
            return self._new_root(entry)
        left = self._walk(index)
        right = self._walk(last + 1 if last != ULONG_MAX else last)
        lnode, loff, llo, _ = left[-1]
        rnode, roff, _, rhi = right[-1]
        lpiv, lslot = lnode.piv, lnode.slot
        l_rmin = lpiv[loff - 1] + 1 if loff else llo
        content = lslot[loff]
        if entry is None:                                   # mas_extend_spanning_null
            if content is None:
                index = l_rmin
            if index == l_rmin and loff and lslot[loff - 1] is None:
                index = lpiv[loff - 2] + 1 if loff >= 2 else llo
                loff -= 1
            if rnode.slot[roff] is None:
                last = max(last, rnode.piv[roff])
                roff += 1
            if not index and last == ULONG_MAX:
                return self._new_root(None)
        bp = lpiv[:loff]
        bs = lslot[:loff]
        if (lpiv[loff - 1] + 1 if loff else llo) < index:
            bp.append(index - 1)
            bs.append(content)
        bp.append(last)
        bs.append(entry)
        if rhi > last:
            bp += rnode.piv[roff:]
            bs += rnode.slot[roff:]
        self._rebuild(left, right, bp, bs, self._height + 1)

    def _rebuild(self, left: list[_Step], right: list[_Step], bp: list[int], bs: list,
                 count: int) -> None:
        """``mas_spanning_rebalance``: ``bp``/``bs`` replace every node from ``left[-1]`` to
        ``right[-1]`` on their level; cut it into one to three nodes, put them in the parents'
        place of the old ones, and go up, pulling in a neighbour (``mast_spanning_rebalance``)
        wherever a level is left under its minimum, until the root is rewritten."""
        leaf = left[-1][0].leaf
        lo, hi = left[-1][2], right[-1][3]
        if (lo or hi != ULONG_MAX) and len(bp) <= (LEAF_MIN if leaf else ARANGE_MIN):
            left, right, bp, bs, _ = self._pull(left, right, bp, bs)
            lo, hi = left[-1][2], right[-1][3]
        destroyed = _count_between(left, right)           # the nodes being replaced, this level
        created = 0
        above_root = False
        while count:
            count -= 1
            cap = LEAF_SLOTS if leaf else ARANGE_SLOTS
            if len(bp) <= cap:                              # mas_mab_to_node: one node
                new = [_Node(leaf, bp, bs)]
            else:
                split, mid = _calc_split(bp, bs, cap, leaf, lo)
                if mid:
                    new = [_Node(leaf, bp[:split + 1], bs[:split + 1]),
                           _Node(leaf, bp[split + 1:mid + 1], bs[split + 1:mid + 1]),
                           _Node(leaf, bp[mid + 1:], bs[mid + 1:])]
                else:
                    new = [_Node(leaf, bp[:split + 1], bs[:split + 1]),
                           _Node(leaf, bp[split + 1:], bs[split + 1:])]
            created += len(new)
            if len(new) == 1 and not lo and hi == ULONG_MAX:   # the new root; every old
                for k in range(len(left) - 1, 0, -1):           # ancestor goes
                    destroyed += _count_between(left[:k], right[:k])
                self._install(new[0], None, created, destroyed)
                return
            tops = [n.piv[-1] for n in new]
            if len(left) == 1:                              # the root was split: one level more
                bp, bs, above_root = tops, new, True
                break
            # mast_ascend + mast_combine_cp_left/right: the parents' other children around them.
            pl, loff = left[-2][0], left[-2][1]
            pr, roff = right[-2][0], right[-2][1]
            bp = pl.piv[:loff] + tops + pr.piv[roff + 1:]
            bs = pl.slot[:loff] + new + pr.slot[roff + 1:]
            left, right = left[:-1], right[:-1]
            leaf = False
            lo, hi = left[-1][2], right[-1][3]
            destroyed += _count_between(left, right)
            if len(bp) > ARANGE_MIN or len(bp) >= ARANGE_SLOTS:   # mast_sufficient / mast_overflow
                continue
            if len(left) == 1:                              # the root may hold few children
                break
            left, right, bp, bs, pulled = self._pull(left, right, bp, bs)
            lo, hi = left[-1][2], right[-1][3]
            destroyed += pulled
            if not count:
                count = 1
        top = _Node(False, bp, bs)
        self._install(top, None if above_root or len(left) == 1 else (left, right), created + 1, destroyed)

    def _install(self, top: _Node, where, created: int, destroyed: int) -> None:
        """Put the rebuilt subtree in place: as the root (``where`` None), else in the
        grandparent's slots of the old nodes ``where`` = (left, right) paths spans."""
        if where is None:
            self._root = top
            height = 1
            node = top
            while not node.leaf:
                node = node.slot[0]
                height += 1
            self._height = height
        else:
            left, right = where
            gp, loff = left[-2][0], left[-2][1]
            if right[-2][0] is not gp:
                raise MapleInvariantError("MapleTree: a rebuild ended under two parents")
            roff = right[-2][1]
            gp.piv[loff:roff + 1] = [top.piv[-1]]
            gp.slot[loff:roff + 1] = [top]
        self._nodes += created - destroyed

    def _pull(self, left: list[_Step], right: list[_Step], bp: list[int], bs: list):
        """``mast_spanning_rebalance``: add the nearest node on the same level to the right (else
        to the left), found by going up until one exists, to the content being rebuilt.
        Returns the new left and right paths, the content and how many nodes it added (0 or 1)."""
        depth = len(left) - 1
        for j in range(depth - 1, -1, -1):
            rnode, roff, rlo, rhi = right[j]
            if roff < len(rnode.slot) - 1:
                path = right[:j] + [(rnode, roff + 1, rlo, rhi)]
                lo, hi, node = rnode.piv[roff] + 1, rnode.piv[roff + 1], rnode.slot[roff + 1]
                for _ in range(j + 1, depth):
                    path.append((node, 0, lo, hi))
                    hi = node.piv[0]
                    node = node.slot[0]
                path.append((node, 0, lo, hi))
                return left, path, bp + node.piv, bs + node.slot, 1
            lnode, loff, llo, lhi = left[j]
            if loff:
                path = left[:j] + [(lnode, loff - 1, llo, lhi)]
                lo = lnode.piv[loff - 2] + 1 if loff >= 2 else llo
                hi, node = lnode.piv[loff - 1], lnode.slot[loff - 1]
                for _ in range(j + 1, depth):
                    last = len(node.piv) - 1
                    path.append((node, last, lo, hi))
                    if last:
                        lo = node.piv[last - 1] + 1
                    node = node.slot[last]
                path.append((node, len(node.piv) - 1, lo, hi))
                return path, right, node.piv + bp, node.slot + bs, 1
        return left, right, bp, bs, 0

    # ---- helpers ------------------------------------------------------------------------------

    def _walk(self, index: int) -> list[_Step]:
        """The path from the root to the leaf holding ``index`` (``mas_wr_walk_index``)."""
        root = self._root
        if root is None:
            raise MapleInvariantError("MapleTree: a walk in an empty tree")
        node: _Node = root
        piv: list[int]
        lo, hi = 0, ULONG_MAX
        path: list[_Step] = []
        while True:
            piv = node.piv
            off = bisect_left(piv, index)
            path.append((node, off, lo, hi))
            if node.leaf:
                return path
            if off:
                lo = piv[off - 1] + 1
            hi = piv[off]
            node = node.slot[off]

    def _leaves(self) -> Iterator[_Node]:
        if self._root is None:
            return
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.leaf:
                yield node
            else:
                stack.extend(reversed(node.slot))


def _no_null_split(bs: list, split: int, cap: int, leaf: bool, b_end: int) -> int:
    """``mab_no_null_split``: a node must not end on a NULL slot."""
    if bs[split] is None:
        if split < cap - 1 and b_end - split > (LEAF_MIN if leaf else ARANGE_MIN):
            return split + 1
        return split - 1
    return split


def _calc_split(bp: list[int], bs: list, cap: int, leaf: bool, lo: int) -> tuple[int, int]:
    """``mab_calc_split``: where to cut an overflowing node's content (the last slot index of the
    left part), and a second cut for a three-way split (``mab_middle_node``), else 0."""
    b_end = len(bp) - 1
    split = b_end // 2
    if b_end >= 2 * cap or (bs[split] is None and b_end >= 2 * cap - 1):
        split = b_end // 3
        return (_no_null_split(bs, split, cap, leaf, b_end),
                _no_null_split(bs, 2 * split, cap, leaf, b_end))
    slot_min = LEAF_MIN if leaf else ARANGE_MIN
    # Avoid ranges shorter than the node's slot count (only ever true near index 0).
    while split < cap - 1 and bp[split] - lo < cap - 1 and b_end - split > slot_min:
        split += 1
    return _no_null_split(bs, split, cap, leaf, b_end), 0


def _count_between(left: list[_Step], right: list[_Step]) -> int:
    """Nodes on the level of ``left[-1]`` from it to ``right[-1]`` inclusive.  O(nodes between)."""
    if left[-1][0] is right[-1][0]:
        return 1
    cur = [left[0][0]]
    for k in range(len(left) - 1):
        nxt: list[_Node] = []
        last = len(cur) - 1
        for i, node in enumerate(cur):
            a = left[k][1] if i == 0 else 0
            b = right[k][1] if i == last else len(node.slot) - 1
            nxt += node.slot[a:b + 1]
        cur = nxt
    return len(cur)


def _copy(node: _Node | None) -> _Node | None:
    if node is None:
        return None
    if node.leaf:
        return _Node(True, node.piv[:], node.slot[:])
    return _Node(False, node.piv[:], [_copy(c) for c in node.slot])
