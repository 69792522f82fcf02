"""Guard designs: what MADV_GUARD_INSTALL / MADV_GUARD_REMOVE do in the model.

``pte`` is upstream Linux (PTE markers; the per-VMA code lives in ``madvise``),
``vma`` the status quo (a guard is a PROT_NONE VMA, made with mprotect), and
``tree`` the never-built proposal of guard entries in the maple tree
(docs/tree-guards.md, rules T1..T11). ``AddressSpace`` owns one design object
and calls its hooks; a design never walks page tables itself.
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm._ranges import RangeMap
from sparsemm.abi import Madv, VmFlag
from sparsemm.model._util import PAGE_SHIFT, U64, kerr
from sparsemm.model.merge import MergeState, merge_new_range, split_vma
from sparsemm.model.vma import VM_SPECIAL, Vma

DESIGNS = ("pte", "vma", "tree")
#: The advice a design handles; no other op reaches a design with an effect.
GUARD_ADVICE = (Madv.GUARD_INSTALL, Madv.GUARD_REMOVE)
_PROT_MASK = abi.PROT_READ | abi.PROT_WRITE | abi.PROT_EXEC


class GuardDesign:
    """The ``pte`` design and the base of the others: every hook is a no-op.

    Hooks, called by ``AddressSpace``:
    - ``madvise(mm, addr, length, advice)``: return True if the design handled a
      guard advice as a whole (the ``vma`` design replaces madvise with mprotect);
    - ``install(mm, vma, start, end)`` / ``remove(...)``: per-VMA guard work inside
      the madvise walk; return the VMA the walk continues after, or None;
    - ``on_unmap(start, end)`` / ``on_mprotect(start, end)``: a range was unmapped
      or had its protection set by the program;
    - ``fork()``: the child's design state.
    """

    name = "pte"
    __slots__ = ()

    def madvise(self, mm, addr: int, length: int, advice: int) -> bool:
        return False

    def install(self, mm, vma: Vma, start: int, end: int):
        return mm._guard_install(vma, start, end)

    def remove(self, mm, vma: Vma, start: int, end: int):
        return mm._guard_remove(vma, start, end)

    def on_unmap(self, start: int, end: int) -> None:
        pass

    def on_mprotect(self, start: int, end: int) -> None:
        pass

    def fork(self) -> "GuardDesign":
        return self

    def after_fork(self, child) -> None:
        """The child ``AddressSpace`` is built; adjust what the design keeps in it."""


class VmaDesign(GuardDesign):
    """Status quo: a guard is a ``PROT_NONE`` VMA.

    ``GUARD_INSTALL`` over ``[addr, addr+len)`` is exactly ``mprotect(PROT_NONE)``
    (splits, merges, ``max_map_count``, errno, contents kept); ``GUARD_REMOVE``
    is, for each mapped piece of the range, ``mprotect`` back to the protection
    the piece had before it was guarded (or, for a piece never guarded, its
    current one); holes are skipped. ``saved`` (pages -> prot) forgets a range
    when the program unmaps it or sets its protection itself: as on the kernel,
    an ``mprotect`` over a PROT_NONE guard VMA simply ends it.
    """

    name = "vma"
    __slots__ = ("saved", "_busy")

    def __init__(self) -> None:
        self.saved = RangeMap()  # page numbers -> PROT_* the range had before its guard
        self._busy = False

    def madvise(self, mm, addr: int, length: int, advice: int) -> bool:
        if advice not in GUARD_ADVICE:
            return False
        if advice == Madv.GUARD_INSTALL:
            self._install(mm, addr, length)
        else:
            self._remove(mm, addr, length)
        return True

    def _plan(self, mm, start: int, end: int) -> list[tuple[int, int, int]]:
        """``(first_page, end_page, prot)`` for every mapped piece of ``[start, end)``: the
        protection saved when it was guarded, or (never guarded) its current one."""
        plan = []
        for vma in mm.tree.overlapping(start, end):
            prot = int(vma.vm_flags) & _PROT_MASK
            cursor, pe = max(vma.vm_start, start) >> PAGE_SHIFT, min(vma.vm_end, end) >> PAGE_SHIFT
            for rs, re_, saved in self.saved.items(cursor, pe):
                if cursor < rs:
                    plan.append((cursor, rs, prot))
                plan.append((rs, re_, saved))  # guarded twice: the first protection wins
                cursor = re_
            if cursor < pe:
                plan.append((cursor, pe, prot))
        return plan

    def _install(self, mm, addr: int, length: int) -> None:
        end = _range_end(addr, length)
        records = self._plan(mm, addr, end) if end is not None else []
        self._busy = True
        try:
            mm.mprotect(addr, length, abi.PROT_NONE)
        finally:
            self._busy = False
            for ps, pe, prot in records:
                if mm.tree.find(ps << PAGE_SHIFT) is not None:
                    self.saved.assign(ps, pe, prot)

    def _remove(self, mm, addr: int, length: int) -> None:
        # mprotect's own argument checks, for the range as a whole.
        if addr & ~abi.PAGE_MASK:
            raise kerr(errno.EINVAL, "guard remove (vma design): unaligned")
        if not length:
            return
        end = _range_end(addr, length)
        if end is None:
            raise kerr(errno.ENOMEM, "guard remove (vma design): wraps")
        self._busy = True
        try:
            for ps, pe, prot in self._plan(mm, addr, end):
                self.saved.clear(ps, pe)
                mm.mprotect(ps << PAGE_SHIFT, (pe - ps) << PAGE_SHIFT, prot)
        finally:
            self._busy = False

    def on_unmap(self, start: int, end: int) -> None:
        self.saved.clear(start >> PAGE_SHIFT, end >> PAGE_SHIFT)

    def on_mprotect(self, start: int, end: int) -> None:
        if not self._busy:
            self.saved.clear(start >> PAGE_SHIFT, end >> PAGE_SHIFT)

    def fork(self) -> "VmaDesign":
        child = VmaDesign()
        child.saved = self.saved.copy()
        return child


class GuardEntry(Vma):
    """A reserved maple-tree entry of the ``tree`` design (T1): a range with no VMA.

    It is stored in the VMA tree (so it occupies a slot, blocks placement and
    takes part in gap searches) but ``VmaTree`` does not count it in
    ``map_count``. ``pieces`` remembers, for each part of the range, the VMA it
    replaced (T2), so that removing the guard can put that VMA back (T3). Its
    ``vm_flags`` are 0 (no access, no VM_MAY*), so nothing ever merges with it.
    """

    __slots__ = ("pieces",)
    is_guard_entry = True

    def __init__(self, start: int, end: int, pieces: list[tuple[int, int, Vma]]):
        super().__init__(start, end, 0, start >> PAGE_SHIFT)
        self.pieces = pieces  # [(start, end, template Vma)] covering [start, end), in order

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

    def check(self) -> None:
        """``pieces`` tile ``[vm_start, vm_end)``: in order, contiguous, none empty."""
        cursor = self.vm_start
        for s, e, _ in self.pieces:
            assert s == cursor and s < e, f"{self!r}: pieces do not tile its range at {s:#x}"
            cursor = e
        assert cursor == self.vm_end, f"{self!r}: pieces end at {cursor:#x}"

    def for_child(self) -> None:
        """In a fork child (T9): the templates lose their anon_vma, since the child's
        restored ranges start empty and must not share the parent's anon_vma."""
        pieces = []
        for s, e, t in self.pieces:
            t = t.copy()
            t.anon_vma, t.anon_vma_forked = None, False
            pieces.append((s, e, t))
        self.pieces = pieces


def is_guard_entry(vma) -> bool:
    return getattr(vma, "is_guard_entry", False)


class TreeDesign(GuardDesign):
    """The proposal: guard entries in the maple tree, no ``vm_area_struct`` (T1..T11)."""

    name = "tree"
    __slots__ = ()

    def after_fork(self, child) -> None:
        if child.tree.reserved_count:
            for entry in child.tree:
                if entry.is_guard_entry:
                    entry.for_child()

    def install(self, mm, vma: Vma, start: int, end: int):
        if is_guard_entry(vma):
            return vma  # T2: already guarded
        if vma.vm_flags & (VM_SPECIAL | VmFlag.HUGETLB | VmFlag.LOCKED):
            raise kerr(errno.EINVAL, "guard install: ineligible vma")
        tree = mm.tree
        splits = (start > vma.vm_start) + (end < vma.vm_end)
        if splits and mm.map_count + splits - 1 >= mm.max_map_count:
            raise kerr(errno.ENOMEM, "guard install: a split would exceed vm.max_map_count")
        if start > vma.vm_start:
            vma = split_vma(tree, vma, start, mm.max_map_count)
        if end < vma.vm_end:
            split_vma(tree, vma, end, mm.max_map_count)
        mm._zap_range(start, end, drop_markers=True)  # contents go, as under a marker (R-C1)
        entry = GuardEntry(start, end, [(start, end, vma)])
        prev = tree.find(start - 1) if start else None
        nxt = tree.find(end)
        if is_guard_entry(prev) and prev.vm_end == start or is_guard_entry(nxt) and nxt.vm_start == end:
            tree.remove(vma)
            self._coalesce(tree, entry)
        else:  # no entry to join (T1): the entry takes the VMA's slot
            tree.replace(vma, entry)
        return None

    @staticmethod
    def _coalesce(tree, entry: GuardEntry) -> GuardEntry:
        """Insert ``entry``, joining adjacent guard entries into one (T1)."""
        prev = tree.find(entry.vm_start - 1) if entry.vm_start else None
        nxt = tree.find(entry.vm_end)
        start, end, pieces = entry.vm_start, entry.vm_end, entry.pieces
        if prev is not None and is_guard_entry(prev) and prev.vm_end == start:
            tree.remove(prev)
            start, pieces = prev.vm_start, prev.pieces + pieces
        if nxt is not None and is_guard_entry(nxt) and nxt.vm_start == end:
            tree.remove(nxt)
            end, pieces = nxt.vm_end, pieces + nxt.pieces
        merged = GuardEntry(start, end, pieces)
        tree.insert(merged)
        return merged

    def remove(self, mm, vma: Vma, start: int, end: int):
        if not is_guard_entry(vma):
            return None  # T3: nothing to remove in a VMA
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
        last = None
        for s, e, template in restore:
            last = self._restore(mm, s, e, template)
        return last

    @staticmethod
    def _restore(mm, start: int, end: int, t: Vma) -> Vma:
        """Put back ``[start, end)`` of the VMA ``t`` described, merging like a new mapping (T3)."""
        pgoff = t.vm_pgoff + ((start - t.vm_start) >> PAGE_SHIFT)
        tree = mm.tree
        prev = tree.find(start - 1) if start else None
        nxt = tree.find(end)
        vmg = MergeState(prev if prev is not None and not is_guard_entry(prev) else None, None,
                         nxt if nxt is not None and not is_guard_entry(nxt) else None,
                         start, end, pgoff, t.vm_flags, t.vm_file, t.anon_vma)
        merged = merge_new_range(tree, vmg)
        if merged is not None:
            return merged
        new = Vma(start, end, t.vm_flags, pgoff, t.vm_file, t.anon_vma, t.anon_vma_forked)
        tree.insert(new)
        return new


def make_design(name: str) -> GuardDesign:
    """The design object for ``name`` (``pte``, ``vma`` or ``tree``); ValueError otherwise."""
    if name == "pte":
        return GuardDesign()
    if name == "vma":
        return VmaDesign()
    if name == "tree":
        return TreeDesign()
    raise ValueError(f"unknown guard design {name!r} (choose from {', '.join(DESIGNS)})")


def _range_end(addr: int, length: int) -> int | None:
    """``addr + PAGE_ALIGN(length)``, or None when it wraps (as the syscalls compute it)."""
    end = (addr + (abi.page_align(length) & U64)) & U64
    return end if end >= addr else None
