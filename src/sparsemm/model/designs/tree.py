"""The ``tree`` guard design: the never-built proposal of guard entries in the maple tree.

Owns ``GuardEntry`` (a reserved tree entry, no ``vm_area_struct``) and rules T1..T11 of
docs/tree-guards.md: install replaces a VMA piece with an entry, remove puts the VMA back.
Works on one VMA or entry piece at a time inside the madvise walk, through ``MmCore``; the
walkers that skip entries elsewhere in the model test ``Vma.is_guard_entry``.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from sparsemm._invariant import InvariantError
from sparsemm.abi import PAGE_SHIFT
from sparsemm.model._flags import _GUARD_INSTALL_INELIGIBLE
from sparsemm.model._util import kerr
from sparsemm.model.designs.registry import GuardDesign, GuardShape, KernelForm, register
from sparsemm.model.merge import VMA_MERGE_SUCCESS, MergeState, merge_new_range, split_vma
from sparsemm.model.vma import Vma

if TYPE_CHECKING:
    from sparsemm.model.core import MmCore

__all__ = ["GuardEntry", "TreeDesign"]


class GuardEntry(Vma):
    """A reserved maple-tree entry of the ``tree`` design (T1): a range with no VMA.

    It is stored in the VMA tree (so it occupies a slot, blocks placement and
    takes part in gap searches) but ``VmaTree`` does not count it in
    ``map_count``. ``pieces`` remembers, for each part of the range, the VMA it
    replaced (T2), so that removing the guard can put that VMA back (T3): a list of
    ``(start, end, template Vma)`` that tiles ``[vm_start, vm_end)`` exactly, in order
    (``check``). Its ``vm_flags`` are 0 (no access, no VM_MAY*), so nothing ever
    merges with it.
    """

    __slots__ = ("pieces",)
    is_guard_entry = True

    def __init__(self, start: int, end: int, pieces: list[tuple[int, int, Vma]]):
        super().__init__(start, end, 0, start >> PAGE_SHIFT)
        self.pieces = pieces

    def __repr__(self) -> str:
        return f"<GuardEntry {self.vm_start:#x}-{self.vm_end:#x} pieces={len(self.pieces)}>"

    def copy(self) -> "GuardEntry":
        """A detached copy (split, fork); the templates are shared until ``for_child``."""
        return GuardEntry(self.vm_start, self.vm_end, list(self.pieces))

    def clip_pieces(self) -> None:
        """Drop what lies outside ``[vm_start, vm_end)`` after a split (``split_vma``), so
        that ``pieces`` tiles exactly the entry's range again. O(pieces)."""
        lo, hi = self.vm_start, self.vm_end
        self.pieces = [(max(s, lo), min(e, hi), t) for s, e, t in self.pieces if s < hi and e > lo]

    def for_child(self) -> None:
        """In a fork child (T9): the templates lose their anon_vma, since the child's
        restored ranges start empty and must not share the parent's anon_vma."""
        pieces = []
        for s, e, t in self.pieces:
            t = t.copy()
            t.anon_vma, t.anon_vma_forked = None, False
            pieces.append((s, e, t))
        self.pieces = pieces

    def check(self) -> None:
        """``pieces`` tile ``[vm_start, vm_end)``: in order, contiguous, none empty; no flags.
        ``InvariantError`` otherwise. O(pieces)."""
        if int(self.vm_flags):
            raise InvariantError(f"{self!r}: a guard entry has flags {self.vm_flags!r}")
        cursor = self.vm_start
        for s, e, _ in self.pieces:
            if s != cursor or s >= e:
                raise InvariantError(f"{self!r}: pieces do not tile its range at {s:#x}")
            cursor = e
        if cursor != self.vm_end:
            raise InvariantError(f"{self!r}: pieces end at {cursor:#x}")


def _entry_at(tree, addr: int) -> GuardEntry | None:
    """The guard entry holding ``addr``, or None (a VMA or nothing there). O(log n)."""
    found = tree.find(addr)
    return found if found is not None and found.is_guard_entry else None


@register
class TreeDesign(GuardDesign):
    """The proposal: guard entries in the maple tree, no ``vm_area_struct`` (T1..T11)."""

    name = "tree"
    order = 30
    kernel_form = KernelForm.NONE
    guards_count_toward_max_map_count = False
    guard_shape = GuardShape.ENTRY
    description = "proposal: guards are maple-tree entries without a vm_area_struct (model only)"
    __slots__ = ()

    def install(self, mm: "MmCore", vma: Vma, start: int, end: int) -> int:
        """T2: split ``[start, end)`` off ``vma``, drop its pages, and put a guard entry in its
        place (joined with adjacent entries, T1); an entry already there stays. EINVAL on a
        special, hugetlb or locked VMA; ENOMEM when a split would pass ``max_map_count``
        (nothing changed then). O(log n + zap + pieces of the entries joined)."""
        if vma.is_guard_entry:
            return max(end, vma.vm_end)  # T2: already guarded
        if int(vma.vm_flags) & _GUARD_INSTALL_INELIGIBLE:
            raise kerr(errno.EINVAL, "guard install: ineligible vma")
        tree = mm.tree
        splits = (start > vma.vm_start) + (end < vma.vm_end)
        if splits and mm.map_count + splits - 1 >= mm.max_map_count:
            raise kerr(errno.ENOMEM, "guard install: a split would exceed vm.max_map_count")
        if start > vma.vm_start:
            vma = split_vma(tree, vma, start, mm.max_map_count)
        if end < vma.vm_end:
            split_vma(tree, vma, end, mm.max_map_count)
        mm.zap_range(start, end, drop_markers=True)  # contents go, as under a marker (docs/rules.md R-C1)
        entry = GuardEntry(start, end, [(start, end, vma)])
        prev = _entry_at(tree, start - 1) if start else None
        nxt = _entry_at(tree, end)
        if prev is not None and prev.vm_end == start or nxt is not None and nxt.vm_start == end:
            tree.remove(vma)
            self._coalesce(tree, entry)
        else:  # no entry to join (T1): the entry takes the VMA's slot
            tree.replace(vma, entry)
        return end

    @staticmethod
    def _coalesce(tree, entry: GuardEntry) -> GuardEntry:
        """Insert ``entry``, joining adjacent guard entries into one (T1)."""
        prev = _entry_at(tree, entry.vm_start - 1) if entry.vm_start else None
        nxt = _entry_at(tree, entry.vm_end)
        start, end, pieces = entry.vm_start, entry.vm_end, entry.pieces
        if prev is not None and prev.vm_end == start:
            tree.remove(prev)
            start, pieces = prev.vm_start, prev.pieces + pieces
        if nxt is not None and nxt.vm_start == end:
            tree.remove(nxt)
            end, pieces = nxt.vm_end, pieces + nxt.pieces
        merged = GuardEntry(start, end, pieces)
        tree.insert(merged)
        return merged

    def remove(self, mm: "MmCore", vma: Vma, start: int, end: int) -> int:
        """T3: delete the guard entry's part ``[start, end)`` (what lies outside stays an
        entry) and put back the VMAs it replaced, merged like new mappings; a VMA piece has
        nothing to remove. O(log n + pieces)."""
        if not vma.is_guard_entry:
            return end  # T3: nothing to remove in a VMA
        entry, tree = vma, mm.tree
        tree.remove(entry)
        pieces = entry.pieces  # they tile exactly [vm_start, vm_end) (GuardEntry.check)
        left = [(s, min(e, start), t) for s, e, t in pieces if s < start]
        right = [(max(s, end), e, t) for s, e, t in pieces if e > end]
        restore = [(max(s, start), min(e, end), t) for s, e, t in pieces if s < end and e > start]
        if left:
            tree.insert(GuardEntry(left[0][0], left[-1][1], left))
        if right:
            tree.insert(GuardEntry(right[0][0], right[-1][1], right))
        resume = end
        for s, e, template in restore:
            resume = max(end, self._restore(mm, s, e, template).vm_end)
        return resume

    @staticmethod
    def _restore(mm: "MmCore", start: int, end: int, t: Vma) -> Vma:
        """Put back ``[start, end)`` of the VMA ``t`` described, merging like a new mapping (T3)."""
        pgoff = t.vm_pgoff + ((start - t.vm_start) >> PAGE_SHIFT)
        tree = mm.tree
        prev = tree.find(start - 1) if start else None
        nxt = tree.find(end)
        vmg = MergeState(prev if prev is not None and not prev.is_guard_entry else None, None,
                         nxt if nxt is not None and not nxt.is_guard_entry else None,
                         start, end, pgoff, t.vm_flags, t.vm_file, t.anon_vma)
        if merge_new_range(tree, vmg) is VMA_MERGE_SUCCESS:
            return vmg.target
        new = Vma(start, end, t.vm_flags, pgoff, t.vm_file, t.anon_vma, t.anon_vma_forked)
        tree.insert(new)
        return new

    def after_fork(self, child: "MmCore") -> None:
        if child.tree.reserved_count:
            for entry in child.tree:
                if entry.is_guard_entry:
                    entry.for_child()

    def check(self, mm: "MmCore") -> None:
        """Every guard entry tiles its range with its pieces; no two entries touch (T1).
        O(n + pieces)."""
        if not mm.tree.reserved_count:
            return
        prev = None
        for entry in mm.tree:
            if entry.is_guard_entry:
                entry.check()
                if prev is not None and prev.is_guard_entry and prev.vm_end == entry.vm_start:
                    raise InvariantError(f"adjacent guard entries {prev!r} {entry!r} not joined")
            prev = entry

