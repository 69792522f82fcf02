"""userfaultfd on the model: MISSING-mode registration and UFFDIO_COPY (fs/userfaultfd.c,
mm/userfaultfd.c).

Owns ``UffdMixin``: ``uffd_register``, ``uffd_unregister`` and ``uffd_copy`` of
``AddressSpace``, for the one context a process opens with ``UFFD_FEATURE_SIGBUS`` (a fault
it would report raises SIGBUS instead of waiting: ``fault`` asks ``uffd_missing``). Changes
VMA flags through ``merge.vma_modify_flags`` and PTEs through ``set_pte``; no other state.
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm.abi import VmFlag
from sparsemm.model._util import PAGE_SHIFT, PAGE_SIZE, TASK_SIZE, kerr
from sparsemm.model.core import MmCore, MMAP_MIN_ADDR
from sparsemm.model.frames import FRAME_ANON, FRAME_FILE, Frame
from sparsemm.model.merge import vma_modify_flags
from sparsemm.model.pagetable import GUARD
from sparsemm.model.vma import Vma

#: __VM_UFFD_FLAGS: what a registration sets and a fork child loses.
VM_UFFD_FLAGS = int(VmFlag.UFFD_MISSING | VmFlag.UFFD_WP)


def uffd_missing(vma: Vma) -> bool:
    """``userfaultfd_missing()``: is ``vma`` registered for missing-page faults?"""
    return bool(int(vma.vm_flags) & int(VmFlag.UFFD_MISSING))


def _is_shmem(vma: Vma) -> bool:
    """``vma_is_shmem()``: a memfd or shared-anonymous object (not a disk file)."""
    return vma.vm_file is not None and not vma.vm_file.disk


class UffdMixin(MmCore):
    """The userfaultfd ioctls of ``AddressSpace`` (one context per process, MISSING mode)."""

    __slots__ = ()

    @staticmethod
    def _uffd_range(start: int, length: int) -> int:
        """fs/userfaultfd.c: validate_range(): the end, or EINVAL."""
        if start & ~abi.PAGE_MASK or length & ~abi.PAGE_MASK or not length:
            raise kerr(errno.EINVAL, "userfaultfd: unaligned or empty range")
        if start < MMAP_MIN_ADDR or start >= TASK_SIZE or length > TASK_SIZE - start:
            raise kerr(errno.EINVAL, "userfaultfd: range outside the address space")
        return start + length

    def _uffd_vmas(self, start: int, end: int) -> list[Vma]:
        vmas = [v for v in self.tree.overlapping(start, end) if not v.is_guard_entry]
        if not vmas:
            raise kerr(errno.EINVAL, "userfaultfd: no vma in range")
        for v in vmas:  # vma_can_userfault() for MISSING: anon or shmem, never droppable
            if not (v.is_anonymous() or _is_shmem(v)) or v.vm_flags & VmFlag.DROPPABLE:
                raise kerr(errno.EINVAL, "userfaultfd: vma cannot take MISSING mode")
        return vmas

    def _uffd_set(self, start: int, end: int, set_flags: int) -> None:
        """userfaultfd_register_range() / unregister: the uffd flags of every VMA piece in
        ``[start, end)`` become ``set_flags`` (split, then merge where the flags allow)."""
        tmp = start
        for vma in self._uffd_vmas(start, end):
            tmp = max(tmp, vma.vm_start)
            vma = self.tree.find(tmp)
            nend = min(vma.vm_end, end)
            new = (int(vma.vm_flags) & ~VM_UFFD_FLAGS) | set_flags
            if new != int(vma.vm_flags):
                prev = self.tree.prev(vma) if tmp == vma.vm_start else vma
                vma_modify_flags(self.tree, prev, vma, tmp, nend, new, self.max_map_count)
            tmp = nend

    def uffd_register(self, start: int, length: int) -> None:
        """UFFDIO_REGISTER (mode MISSING) of ``[start, start + length)``: EINVAL for an
        unaligned or empty range, a range with no VMA, or one holding a VMA that is neither
        anonymous nor shmem; holes between VMAs are allowed. O(k log n)."""
        end = self._uffd_range(start, length)
        self._uffd_vmas(start, end)  # every VMA checked before any changes
        self._uffd_set(start, end, int(VmFlag.UFFD_MISSING))

    def uffd_unregister(self, start: int, length: int) -> None:
        """UFFDIO_UNREGISTER: the VMAs of the range lose their registration. O(k log n)."""
        end = self._uffd_range(start, length)
        self._uffd_vmas(start, end)
        self._uffd_set(start, end, 0)

    def uffd_copy(self, dst: int, length: int, value: int) -> tuple[int, int]:
        """UFFDIO_COPY of pages filled with ``value`` to ``[dst, dst + length)``: ``(bytes
        copied, errno or 0)`` as the ioctl reports them (``uffdio_copy.copy``). The range must
        lie in one registered VMA (else ENOENT). Page by page: a private page goes in as a new
        anon page where the PTE is empty **or holds a guard marker** (measured on 6.18: the
        marker is overwritten), EEXIST where a page is mapped; a shared (shmem) page is added
        to the file, EEXIST if the file has it. Past the file's EOF it is EFAULT, for a private
        file mapping too (checked first, before EEXIST). A copy that stops after
        some pages is EAGAIN. Raises EINVAL for a bad range. O(pages)."""
        end = self._uffd_range(dst, length)
        vma = self.tree.find(dst)
        if vma is None or vma.is_guard_entry or end > vma.vm_end or not uffd_missing(vma):
            return 0, errno.ENOENT
        shared = bool(int(vma.vm_flags) & int(VmFlag.SHARED))
        if not shared and not vma.is_anonymous() and not _is_shmem(vma):
            return 0, errno.EINVAL
        done, err = 0, 0
        for addr in range(dst, end, PAGE_SIZE):
            page = addr >> PAGE_SHIFT
            entry = self.pt.get(page)
            if vma.vm_file is not None and vma.file_pgoff(addr) >= vma.vm_file.npages:
                err = errno.EFAULT  # mfill_file_over_size(): past EOF, private mappings too
                break
            if entry is not None and entry is not GUARD:
                err = errno.EEXIST
                break
            if shared:
                f = vma.vm_file
                pgoff = vma.file_pgoff(addr)
                if pgoff >= f.npages or pgoff in f.cache:
                    err = errno.EFAULT if pgoff >= f.npages else errno.EEXIST
                    break
                frame = f.cache[pgoff] = Frame(value, FRAME_FILE)
            else:
                self.anon_vma_prepare(vma)
                frame = Frame(value, FRAME_ANON)
            if entry is GUARD:
                self.pt.remove_markers(page, page + 1)
            self.set_pte(page, frame)
            done += PAGE_SIZE
        if err and done:  # userfaultfd_copy(): a copy that stopped part way is EAGAIN
            err = errno.EAGAIN
        return done, err
