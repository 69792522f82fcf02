"""The ``vma`` guard design: the status quo, a guard is a ``PROT_NONE`` VMA made with mprotect.

Owns what the guard advice becomes under it (``mprotect`` to PROT_NONE and back) and the
protection each guarded range had (``saved``, a ``RangeMap`` of pages). Takes the advice
as one call over the whole range (``whole_range``) through the ``MmCore`` contract.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from sparsemm import abi
from sparsemm._invariant import InvariantError
from sparsemm._ranges import RangeMap
from sparsemm.abi import PAGE_SHIFT, Madv
from sparsemm.model._util import kerr
from sparsemm.model.designs.registry import GuardDesign, GuardShape, KernelForm, register

if TYPE_CHECKING:
    from sparsemm.model.core import MmCore

_PROT_MASK = abi.PROT_READ | abi.PROT_WRITE | abi.PROT_EXEC


@register
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
    order = 10
    kernel_form = KernelForm.MPROTECT
    guards_count_toward_max_map_count = True
    guard_shape = GuardShape.VMA
    description = "status quo: every guard is a PROT_NONE VMA (mprotect)"
    status_quo = True
    whole_range = True
    __slots__ = ("saved", "_busy")

    def __init__(self) -> None:
        self.saved = RangeMap()  # page numbers -> PROT_* the range had before its guard
        self._busy = False  # our own mprotect calls must not clear `saved` (on_mprotect)

    def guard_range(self, mm: "MmCore", addr: int, length: int, advice: int) -> None:
        """The guard advice as mprotect calls: install or remove, as the class says.
        O(k log n + log s) for k VMAs and s saved ranges touched."""
        if advice == Madv.GUARD_INSTALL:
            self._install(mm, addr, length)
        else:
            self._remove(mm, addr, length)

    def _plan(self, mm: "MmCore", start: int, end: int) -> list[tuple[int, int, int]]:
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

    def _install(self, mm: "MmCore", addr: int, length: int) -> None:
        end = _range_end(addr, length)
        records = self._plan(mm, addr, end) if end is not None else []
        self._busy = True
        try:
            mm.mprotect(addr, length, abi.PROT_NONE)
        finally:
            self._busy = False
            for ps, pe, prot in records:  # what mprotect reached before any error
                if mm.tree.find(ps << PAGE_SHIFT) is not None:
                    self.saved.assign(ps, pe, prot)

    def _remove(self, mm: "MmCore", addr: int, length: int) -> None:
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

    def has_state(self, mm: "MmCore") -> bool:
        return bool(len(self.saved)) or super().has_state(mm)

    def check(self, mm: "MmCore") -> None:
        """``saved`` is a well-formed RangeMap of protections, and no call is half done."""
        self.saved.check()
        if self._busy:
            raise InvariantError("vma design: a guard call did not finish")
        for _, _, prot in self.saved:
            if prot & ~_PROT_MASK:
                raise InvariantError(f"vma design: saved protection {prot:#x} is not PROT_*")


def _range_end(addr: int, length: int) -> int | None:
    """``addr + PAGE_ALIGN(length)``, or None when it wraps (as the syscalls compute it)."""
    end = (addr + (abi.page_align(length) & abi.ULONG_MAX)) & abi.ULONG_MAX
    return end if end >= addr else None
