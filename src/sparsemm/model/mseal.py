"""mseal(2) on the model: seal VMAs (mm/mseal.c ``do_mseal``).

Owns ``sys_mseal``: validation, the no-gap rule and ``VM_SEALED`` set through
``vma_modify_flags`` (so sealing splits and merges like any flag change). What a seal
forbids afterwards (munmap, mremap, mprotect, MAP_FIXED, discarding madvise: EPERM) is not
enforced by the other model syscalls; docs/divergences.md lists it.
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm.abi import VmFlag
from sparsemm.model._util import kerr
from sparsemm.model.merge import vma_modify_flags

__all__ = ["sys_mseal"]


def sys_mseal(mm, addr: int, length: int, flags: int = 0) -> None:
    """mm/mseal.c: do_mseal(). EINVAL for flags, an unaligned start, a length that rounds to
    0 or wraps; ENOMEM when the range holds a gap; else every VMA piece gains VM_SEALED
    (already sealed pieces are left alone). O(k log n)."""
    if flags:
        raise kerr(errno.EINVAL, "mseal: flags")
    if addr & ~abi.PAGE_MASK:
        raise kerr(errno.EINVAL, "mseal: unaligned start")
    aligned = abi.page_align(length) & abi.ULONG_MAX
    if length and not aligned:
        raise kerr(errno.EINVAL, "mseal: length rounds to 0")
    end = addr + aligned
    if end > abi.ULONG_MAX:
        raise kerr(errno.EINVAL, "mseal: wraps")
    if end == addr:
        return
    prev_end = addr
    vmas = mm.tree.overlapping(addr, end)
    for vma in vmas:  # range_contains_unmapped()
        if vma.vm_start > prev_end or vma.is_guard_entry:
            raise kerr(errno.ENOMEM, "mseal: unmapped range")
        prev_end = vma.vm_end
    if prev_end < end:
        raise kerr(errno.ENOMEM, "mseal: unmapped range")
    cursor = addr
    while cursor < end:
        vma = mm.tree.find(cursor)
        nend = min(vma.vm_end, end)
        if not vma.vm_flags & VmFlag.SEALED:
            prev = mm.tree.prev(vma) if cursor == vma.vm_start else vma
            vma = vma_modify_flags(mm.tree, prev, vma, cursor, nend, int(vma.vm_flags) | int(VmFlag.SEALED),
                                   mm.max_map_count)
        cursor = nend
