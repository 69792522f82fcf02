"""mremap(2) on the model: resize in place, move (one or many VMAs), MREMAP_DONTUNMAP.

Owns the checks and steps of mm/mremap.c (Linux 6.17+ multi-VMA moves) and copy_vma();
page-table entries, guard markers included, move by offset (docs/rules.md R-F12). Mixed into
``AddressSpace``: needs ``MmCore``'s ``tree``, ``pt``, ``unmap_range``,
``get_unmapped_area`` and ``mm_populate``.
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm.abi import ULONG_MAX, MremapFlag, VmFlag
from sparsemm.model._util import PAGE_SHIFT, TASK_SIZE, kerr
from sparsemm.model.core import HPAGE_SHIFT, MmCore
from sparsemm.model.merge import VMA_MERGE_SUCCESS, MergeState, merge_new_range
from sparsemm.model.pagetable import HPAGE_PMD_NR
from sparsemm.model.uffd import VM_UFFD_FLAGS
from sparsemm.model.vma import VM_LOCKED_MASK, Vma

_HPAGE = 1 << HPAGE_SHIFT  # a hugetlb page, bytes


class MremapMixin(MmCore):
    """``mremap()`` of ``AddressSpace``."""

    __slots__ = ()

    # ------------------------------------------------------------------ mremap

    def mremap(self, addr: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0) -> int:
        """mm/mremap.c: do_mremap(): resize ``[addr, addr + old_len)`` to ``new_len`` in
        place, or move it (MREMAP_MAYMOVE/FIXED/DONTUNMAP in ``flags``, ``new_addr``).
        Returns the (possibly new) address. O(k log n + t + f + log r + runs moved)."""
        old_len = abi.page_align(old_len) & ULONG_MAX
        new_len = abi.page_align(new_len) & ULONG_MAX
        # check_mremap_params()
        if flags & ~(MremapFlag.FIXED | MremapFlag.MAYMOVE | MremapFlag.DONTUNMAP):
            raise kerr(errno.EINVAL, "mremap: bad flags")
        if addr & ~abi.PAGE_MASK:
            raise kerr(errno.EINVAL, "mremap: unaligned")
        if not new_len or new_len > TASK_SIZE:
            raise kerr(errno.EINVAL, "mremap: bad new_len")
        implies_new = bool(flags & (MremapFlag.FIXED | MremapFlag.DONTUNMAP))
        if implies_new:
            if new_addr > TASK_SIZE - new_len or new_addr < 0:
                raise kerr(errno.EINVAL, "mremap: bad new address")
            if new_addr & ~abi.PAGE_MASK:
                raise kerr(errno.EINVAL, "mremap: unaligned new address")
            if not flags & MremapFlag.MAYMOVE:
                raise kerr(errno.EINVAL, "mremap: fixed without maymove")
            if flags & MremapFlag.DONTUNMAP and old_len != new_len:
                raise kerr(errno.EINVAL, "mremap: dontunmap resize")
            # unsigned sums: an old_len near 2**64 wraps below addr and overlaps nothing
            if (addr + old_len) & ULONG_MAX > new_addr and new_addr + new_len > addr:
                raise kerr(errno.EINVAL, "mremap: overlap")
            # only a call with a new address must stay 4 VMAs below the limit here; an
            # in-place resize meets it only where it splits or moves (model/mremap_max_map_count)
            if self.map_count + 2 >= self.max_map_count - 3:
                raise kerr(errno.ENOMEM, "mremap: near max_map_count")
        if flags & MremapFlag.FIXED and old_len == new_len:  # vrm_move_only()
            return self._remap_move(addr, old_len, new_addr, flags)
        vma = self.tree.find(addr)
        if _is_hugetlb(vma):
            old_len, new_len = _align_hugetlb(addr, old_len, new_len, new_addr)
        populate = self._check_prep_vma(vma, addr, old_len, new_len, flags)
        delta = abs(new_len - old_len)
        if implies_new:
            res = self._mremap_to(addr, old_len, new_len, flags, new_addr)
        elif old_len == new_len:
            return addr
        elif old_len > new_len:
            self.do_munmap(addr + new_len, old_len - new_len)  # shrink_vma()
            return addr
        else:
            res = self._expand_vma(vma, addr, old_len, new_len, flags)
        if populate:
            self.mm_populate(res + old_len, delta, ignore_errors=True)
        return res

    def _check_prep_vma(self, vma: Vma | None, addr: int, old_len: int, new_len: int, flags: int) -> bool:
        """mm/mremap.c: check_prep_vma(); returns whether a locked expand must populate."""
        if vma is None or vma.is_guard_entry:
            raise kerr(errno.EFAULT, "mremap: no vma at addr")
        if vma.vm_flags & VmFlag.SEALED:
            raise kerr(errno.EPERM, "mremap: sealed vma")
        expand = new_len > old_len
        if not expand and not flags & (MremapFlag.FIXED | MremapFlag.DONTUNMAP):
            return False
        if not old_len and not vma.vm_flags & (VmFlag.SHARED | VmFlag.MAYSHARE):
            raise kerr(errno.EINVAL, "mremap: duplicating a private mapping")
        if flags & MremapFlag.DONTUNMAP and vma.vm_flags & (VmFlag.DONTEXPAND | VmFlag.PFNMAP):
            raise kerr(errno.EINVAL, "mremap: dontunmap on special vma")
        olen = new_len if old_len > new_len else old_len
        if olen > vma.vm_end - addr:
            raise kerr(errno.EFAULT, "mremap: range crosses the vma end")
        if new_len == olen:
            return False
        if vma.vm_flags & (VmFlag.DONTEXPAND | VmFlag.PFNMAP):
            raise kerr(errno.EFAULT, "mremap: cannot expand special vma")
        return bool(vma.vm_flags & VmFlag.LOCKED)

    def _remap_move(self, start: int, length: int, new_addr: int, flags: int) -> int:
        """mm/mremap.c: remap_move(): a fixed, same-size move of every VMA in the range,
        keeping the gaps between them."""
        end = start + length
        target = new_addr
        res = None
        last_end = 0
        cursor = start
        while cursor < end:
            vma = self.tree.find_vma(cursor)
            if vma is None or vma.vm_start >= end:
                break
            if res is None and start < vma.vm_start:
                raise kerr(errno.EFAULT, "mremap: gap at the start")
            a = max(vma.vm_start, start)
            n = min(end, vma.vm_end) - a
            offset = vma.vm_start - last_end if res is not None else 0
            last_end = vma.vm_end
            dst = target + offset
            if not _multi_allowed(vma) and (res is not None or vma.vm_end < end):
                raise kerr(errno.EFAULT, "mremap: this VMA cannot move with others")
            if _is_hugetlb(vma):
                n = _align_hugetlb(a, n, n, dst)[0]
            self._check_prep_vma(vma, a, n, n, flags)
            got = self._mremap_to(a, n, n, flags, dst)
            if res is None:
                res = got
            target = got + n
            cursor = a + n
        if res is None:
            raise kerr(errno.EFAULT, "mremap: no vma")
        return res

    def _mremap_to(self, addr: int, old_len: int, new_len: int, flags: int, new_addr: int) -> int:
        """mm/mremap.c: mremap_to()."""
        if flags & MremapFlag.FIXED:
            self.do_munmap(new_addr, new_len)
            if self.tree.find(addr) is None:
                raise kerr(errno.EFAULT, "mremap: source gone")
        if old_len > new_len:
            # shrink_vma(): do_vmi_munmap() refuses an old_len reaching past TASK_SIZE (EINVAL),
            # after the MREMAP_FIXED target above is already unmapped
            self.do_munmap(addr + new_len, old_len - new_len)
            if self.tree.find(addr) is None:
                raise kerr(errno.EFAULT, "mremap: source gone")
            old_len = new_len
        # vrm_set_new_addr(): get_unmapped_area(), MAP_FIXED for a fixed target, whose
        # security_mmap_addr() may refuse it (EPERM) after the target was unmapped above
        if flags & MremapFlag.FIXED:
            self.security_mmap_addr(new_addr)
        else:
            new_addr = self.get_unmapped_area(new_addr if flags & MremapFlag.DONTUNMAP else 0, new_len)
        return self._move_vma(addr, old_len, new_len, new_addr, flags)

    def _expand_vma(self, vma: Vma, addr: int, old_len: int, new_len: int, flags: int) -> int:
        """mm/mremap.c: expand_vma(): in place when the range ends at vm_end and the tail is free."""
        delta = new_len - old_len
        if vma.vm_end - addr == old_len and vma.vm_end + delta <= TASK_SIZE \
                and not self.tree.overlapping(vma.vm_end, vma.vm_end + delta):
            # vma_merge_extend(): vma is prev, the extension a new range
            if vma.vm_flags & VmFlag.ACCOUNT:  # vrm_calc_charge()
                self.vm_enough_memory(delta >> PAGE_SHIFT)
            vmg = MergeState(vma, None, self.tree.next(vma), vma.vm_end, vma.vm_end + delta,
                             vma.file_pgoff(vma.vm_end), vma.vm_flags, vma.vm_file, vma.anon_vma)
            if merge_new_range(self.tree, vmg) is not VMA_MERGE_SUCCESS:
                raise kerr(errno.ENOMEM, "mremap: expand failed")
            return addr
        if not flags & MremapFlag.MAYMOVE:
            raise kerr(errno.ENOMEM, "mremap: cannot expand in place")
        new_addr = self.get_unmapped_area(0, new_len)
        return self._move_vma(addr, old_len, new_len, new_addr, flags)

    def _move_vma(self, addr: int, old_len: int, new_len: int, new_addr: int, flags: int) -> int:
        """mm/mremap.c: move_vma(): copy_vma() + move_page_tables() + unmap the source."""
        if self.map_count >= self.max_map_count - 3:
            raise kerr(errno.ENOMEM, "mremap: near max_map_count")
        vma = self.tree.find(addr)
        if vma.vm_flags & VmFlag.ACCOUNT:  # vrm_calc_charge(): DONTUNMAP keeps the old pages
            self.vm_enough_memory((new_len if flags & MremapFlag.DONTUNMAP
                                   else abs(new_len - old_len)) >> PAGE_SHIFT)
        new_vma = self._copy_vma(vma, addr, new_addr, new_len)
        # move_page_tables(): entries, guard markers included, keep their offsets (R-F12)
        src0, dst0 = addr >> PAGE_SHIFT, new_addr >> PAGE_SHIFT
        src_end = src0 + (old_len >> PAGE_SHIFT)
        self.split_huge_range(src0, src_end)
        if (dst0 - src0) % HPAGE_PMD_NR:  # not moved at the PMD level: file PMDs unmapped
            for p0 in self.pt.file_huge_in(src0, src_end):
                self.drop_huge_block(p0)
        self.pt.move_range(src0, src_end, dst0)
        # mremap_userfaultfd_prep(): the one context this model opens lacks
        # UFFD_FEATURE_EVENT_REMAP, so the destination drops its registration (the source of
        # a DONTUNMAP move keeps it).
        new_vma.vm_flags &= ~VM_UFFD_FLAGS
        if flags & MremapFlag.DONTUNMAP:
            old = self.tree.find(addr)
            if old is not None:
                old.vm_flags = int(old.vm_flags & ~VM_LOCKED_MASK)  # dontunmap_complete(): no merge attempted
                if old.vm_start == addr and old.vm_end == addr + old_len and old is not new_vma:
                    old.anon_vma, old.anon_vma_forked = None, False
        else:
            self.unmap_range(addr, addr + old_len)
        return new_addr

    def _copy_vma(self, vma: Vma, addr: int, new_addr: int, new_len: int) -> Vma:
        """mm/vma.c: copy_vma(): merge the destination with its neighbours or link a copy."""
        pgoff = vma.file_pgoff(addr)
        if vma.is_anonymous() and vma.anon_vma is None:
            pgoff = new_addr >> PAGE_SHIFT
        nxt = self.tree.find_vma(new_addr)
        prev = self.tree.prev(nxt) if nxt is not None else self.tree.last()
        vmg = MergeState(prev, None, nxt, new_addr, new_addr + new_len, pgoff, vma.vm_flags,
                         vma.vm_file, vma.anon_vma, copied_from=vma)
        if merge_new_range(self.tree, vmg) is VMA_MERGE_SUCCESS:
            return vmg.target
        new = vma.copy()
        new.vm_start, new.vm_end, new.vm_pgoff = new_addr, new_addr + new_len, pgoff
        self.tree.insert(new)
        return new


def _is_hugetlb(vma: Vma | None) -> bool:
    """A hugetlb VMA that mremap may get as far as aligning (not sealed: EPERM first)."""
    return (vma is not None and not vma.is_guard_entry and bool(vma.vm_flags & VmFlag.HUGETLB)
            and not vma.vm_flags & VmFlag.SEALED)


def _align_hugetlb(addr: int, old_len: int, new_len: int, new_addr: int) -> tuple[int, int]:
    """mm/mremap.c: align_hugetlb(): both lengths round up to the huge page; ``addr`` and
    ``new_addr`` (the syscall's, used or not) must be huge-page aligned, and the mapping
    may not grow (EINVAL). Returns the aligned ``(old_len, new_len)``."""
    old_len = (old_len + _HPAGE - 1) & ~(_HPAGE - 1) & ULONG_MAX
    new_len = (new_len + _HPAGE - 1) & ~(_HPAGE - 1) & ULONG_MAX
    if addr & (_HPAGE - 1) or new_addr & (_HPAGE - 1):
        raise kerr(errno.EINVAL, "mremap: hugetlb address not huge-page aligned")
    if new_len > old_len:
        raise kerr(errno.EINVAL, "mremap: hugetlb mappings cannot grow")
    return old_len, new_len


def _multi_allowed(vma: Vma) -> bool:
    """mm/mremap.c: vma_multi_allowed(): a VMA that may move with others in one
    MREMAP_FIXED move. On 6.18 only a uffd-registered one may not: a file with its own
    ``get_unmapped_area`` that is not shmem would not either, but memfds are shmem and
    neither ext4 nor hugetlbfs has one (measured: both move with a gap after them)."""
    return not vma.vm_flags & VM_UFFD_FLAGS
