"""brk(2) on the model: the program break (mm/mmap.c ``SYSCALL_DEFINE1(brk)``, mm/vma.c ``do_brk_flags``).

Owns ``BrkState`` (``mm->start_brk`` and ``mm->brk``, kept beside an ``AddressSpace``,
which has no slot for them) and ``sys_brk``. Uses the address space's unmap and merge
paths; never touches page tables itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsemm import abi
from sparsemm.abi import VmFlag
from sparsemm.model._util import TASK_SIZE
from sparsemm.model.merge import VMA_MERGE_SUCCESS, MergeState, merge_new_range
from sparsemm.model.vma import Vma

__all__ = ["BrkState", "sys_brk", "STACK_GUARD_GAP", "VM_DATA_DEFAULT_FLAGS"]

#: mm/mmap.c: stack_guard_gap, 256 pages (the ``stack_guard_gap=`` boot default).
STACK_GUARD_GAP = 256 << abi.PAGE_SHIFT
#: arch/x86: VM_DATA_DEFAULT_FLAGS = VM_DATA_FLAGS_TSK_EXEC without READ_IMPLIES_EXEC.
VM_DATA_DEFAULT_FLAGS = (VmFlag.READ | VmFlag.WRITE | VmFlag.MAYREAD | VmFlag.MAYWRITE
                         | VmFlag.MAYEXEC)


@dataclass(slots=True)
class BrkState:
    """``mm->start_brk`` and ``mm->brk`` in bytes. After execve both equal the page-aligned
    end of the loaded image (randomized): /proc/PID/stat field 47 shows ``start_brk``."""

    start_brk: int
    brk: int

    def copy(self) -> "BrkState":
        return BrkState(self.start_brk, self.brk)


def _vm_start_gap(vma: Vma) -> int:
    """include/linux/mm.h: vm_start_gap(): a stack keeps stack_guard_gap free below it."""
    start = vma.vm_start
    if vma.vm_flags & VmFlag.GROWSDOWN:
        start = max(start - STACK_GUARD_GAP, 0)
    return start


def sys_brk(mm, state: BrkState, brk: int, *, def_flags: int = 0) -> int:
    """mm/mmap.c: brk(): move the break to ``brk``; returns the new break, or the old one when
    the request is refused (brk never fails with an errno). O(k log n) like munmap/mmap.

    Shrinking unmaps ``[PAGE_ALIGN(brk), PAGE_ALIGN(old))`` (do_vmi_align_munmap) if a VMA
    lies there. Growing refuses a range within ``stack_guard_gap`` of a stack above it or
    beyond TASK_SIZE, then ``do_brk_flags()``: extend the VMA ending at the old break when
    its flags equal ``VM_DATA_DEFAULT_FLAGS | VM_ACCOUNT`` (``vma_merge_new_range`` with
    ``just_expand``: never with the VMA above), else a new anonymous VMA. RLIMIT_DATA and
    overcommit are not modelled. ``def_flags``: ``mm->def_flags`` (VM_LOCKED after
    ``mlockall(MCL_FUTURE)``), which also populates the new range.
    """
    orig = state.brk
    if brk < state.start_brk:
        return orig
    newbrk, oldbrk = abi.page_align(brk), abi.page_align(state.brk)
    if oldbrk == newbrk:
        state.brk = brk
        return brk
    if brk <= state.brk:  # always allow shrinking
        first = mm.tree.find_vma(newbrk)  # vma_find(&vmi, oldbrk) from newbrk
        if first is None or first.vm_start >= oldbrk:
            return orig
        state.brk = brk
        try:
            mm.munmap(newbrk, oldbrk - newbrk)
        except OSError:
            state.brk = orig
            return orig
        return brk
    # check_brk_limits(): get_unmapped_area(MAP_FIXED) only checks the range fits
    if newbrk - oldbrk > TASK_SIZE or oldbrk > TASK_SIZE - (newbrk - oldbrk):
        return orig
    nxt = mm.tree.find_vma(oldbrk)
    if nxt is not None and nxt.vm_start < newbrk + abi.PAGE_SIZE + STACK_GUARD_GAP \
            and newbrk + abi.PAGE_SIZE > _vm_start_gap(nxt):
        return orig
    if mm.map_count > mm.max_map_count:
        return orig
    flags = int(VM_DATA_DEFAULT_FLAGS | VmFlag.ACCOUNT) | def_flags
    prev = mm.tree.find(oldbrk - 1) if oldbrk else None
    if prev is not None and prev.vm_start < state.start_brk:
        prev = None  # vma_prev_limit(&vmi, mm->start_brk)
    pgoff = oldbrk >> abi.PAGE_SHIFT
    merged = False
    if prev is not None and prev.vm_end == oldbrk:
        vmg = MergeState(prev, None, None, oldbrk, newbrk, pgoff, flags, None, None, just_expand=True)
        merged = merge_new_range(mm.tree, vmg) is VMA_MERGE_SUCCESS
    if not merged:
        mm.tree.insert(Vma(oldbrk, newbrk, flags, pgoff))
    state.brk = brk
    if def_flags & VmFlag.LOCKED:
        mm.mm_populate(oldbrk, newbrk - oldbrk, ignore_errors=True)
    return brk
