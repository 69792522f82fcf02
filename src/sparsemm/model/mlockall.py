"""mlockall(2)/munlockall(2) on the model (mm/mlock.c ``apply_mlockall_flags``).

Owns ``sys_mlockall``/``sys_munlockall``: every VMA gets (or loses) VM_LOCKED /
VM_LOCKONFAULT through mlock's per-VMA fixup, MCL_CURRENT populates. ``MCL_FUTURE`` is
``mm->def_flags``, which the model's mmap does not read: the caller keeps it and locks new
ranges itself (docs/divergences.md).
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm.abi import VmFlag
from sparsemm.model._util import kerr
from sparsemm.model.merge import vma_modify_flags
from sparsemm.model.vma import VM_LOCKED_MASK, VM_SPECIAL

__all__ = ["sys_mlockall", "sys_munlockall", "mlockall_def_flags"]

_MCL_ALL = abi.MCL_CURRENT | abi.MCL_FUTURE | abi.MCL_ONFAULT


def mlockall_def_flags(flags: int) -> int:
    """The ``mm->def_flags`` lock bits ``mlockall(flags)`` leaves (0 without MCL_FUTURE)."""
    if not flags & abi.MCL_FUTURE:
        return 0
    return int(VmFlag.LOCKED | (VmFlag.LOCKONFAULT if flags & abi.MCL_ONFAULT else 0))


def _relock_all(mm, to_add: int) -> None:
    vma = mm.tree.find_vma(0)
    while vma is not None:
        nxt_start = vma.vm_end
        if not vma.is_guard_entry and not vma.vm_flags & (VM_SPECIAL | VmFlag.HUGETLB):
            newflags = (int(vma.vm_flags) & ~int(VM_LOCKED_MASK)) | to_add
            if newflags != int(vma.vm_flags):  # mlock_fixup() on the whole VMA
                vma = vma_modify_flags(mm.tree, mm.tree.prev(vma), vma, vma.vm_start, vma.vm_end,
                                       newflags, mm.max_map_count)
                nxt_start = vma.vm_end
        vma = mm.tree.find_vma(nxt_start)


def sys_mlockall(mm, flags: int) -> None:
    """mm/mlock.c: mlockall(). EINVAL for no or unknown flags, or MCL_ONFAULT alone. O(n log n),
    plus populating the address space with MCL_CURRENT (without MCL_ONFAULT)."""
    if not flags or flags & ~_MCL_ALL or flags == abi.MCL_ONFAULT:
        raise kerr(errno.EINVAL, "mlockall: flags")
    if flags & abi.MCL_CURRENT:
        to_add = int(VmFlag.LOCKED | (VmFlag.LOCKONFAULT if flags & abi.MCL_ONFAULT else 0))
        _relock_all(mm, to_add)
        if not flags & abi.MCL_ONFAULT:
            for vma in list(mm.tree):
                if not vma.is_guard_entry:
                    mm.mm_populate(vma.vm_start, vma.vm_end - vma.vm_start, ignore_errors=True)


def sys_munlockall(mm) -> None:
    """mm/mlock.c: munlockall(): clear the lock bits of every VMA. O(n log n)."""
    _relock_all(mm, 0)
