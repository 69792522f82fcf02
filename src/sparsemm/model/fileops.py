"""File operations that reach into mappings: hole punch, truncate, memfd seals.

Owns what shmem_fallocate(), shmem_setattr() and memfd_add_seals() do to the page cache
and to every address space mapping the file. Mixed into ``AddressSpace``: needs
``MmCore``'s ``tree`` and ``zap_range``, and provides ``punch_hole`` to madvise.
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm.abi import VmFlag
from sparsemm.abi import ULONG_MAX
from sparsemm.model._util import PAGE_SHIFT, PAGE_SIZE, kerr
from sparsemm.model.core import MmCore
from sparsemm.model.frames import FRAME_FILE, MemFile


class FileOpsMixin(MmCore):
    """shmem/memfd operations of ``AddressSpace`` (mm/shmem.c, mm/memfd.c)."""

    __slots__ = ()

    # ------------------------------------------------------------------ files

    def punch_hole(self, file: MemFile, offset: int, length: int) -> None:
        """shmem_fallocate(PUNCH_HOLE) of ``[offset, offset + length)`` bytes of ``file``: drop
        the cached pages and unmap them everywhere (``unmap_mapping_range(even_cows=0)``:
        private CoW copies stay, markers stay). O(users x n + pages)."""
        if offset < 0 or length <= 0:
            raise kerr(errno.EINVAL, "fallocate: bad range")  # fs/open.c: vfs_fallocate()
        if offset + length > abi.MAX_LFS_FILESIZE:  # vfs_fallocate(), before shmem's seal check
            raise kerr(errno.EFBIG, "fallocate: past the maximum file size")
        if file.seals & (abi.F_SEAL_WRITE | abi.F_SEAL_FUTURE_WRITE):
            raise kerr(errno.EPERM, "fallocate: write-sealed")
        end = offset + length
        self._split_folios(file, offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT)
        if file.disk:  # ext4_zero_partial_blocks(): the partial end pages are zeroed, dirty
            _dirty_partial(file, offset)
            _dirty_partial(file, end)
        # shmem_fallocate() unmaps [round_up(offset), round_down(end) - 1] first, in unsigned
        # arithmetic: a punch ending inside page 0 makes unmap_end -1, so the unmap runs from
        # page 0 (offset 0) or page 1 to the end of the file (measured on 6.18).
        unmap_start = (offset + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        unmap_end = ((end & ~(PAGE_SIZE - 1)) - 1) & ULONG_MAX
        if unmap_end > unmap_start:
            hba = unmap_start >> PAGE_SHIFT
            hlen = ((((1 + unmap_end - unmap_start) & ULONG_MAX) + PAGE_SIZE - 1) & ULONG_MAX) >> PAGE_SHIFT
            last_index = (hba + hlen - 1) & ULONG_MAX
            if last_index < hba:
                last_index = ULONG_MAX
            for mm in list(file.users):
                mm._unmap_file_pages(file, hba, min(last_index, 1 << 60), None)
        tail = end >> PAGE_SHIFT
        if end & (PAGE_SIZE - 1) and (tail << PAGE_SHIFT) >= offset:
            if tail in file.cache:
                file.cache[tail].byte = 0  # a partial last page is zeroed in place, byte 0 included
            file.on_disk.pop(tail, None)  # (a disk file's block, when the page is not cached)
        first = (offset + PAGE_SIZE - 1) >> PAGE_SHIFT
        last = (end >> PAGE_SHIFT) - 1
        if last < first:
            return
        victims = {id(file.cache[k]) for k in range(first, last + 1) if k in file.cache} \
            if last - first < 4096 else {id(v) for k, v in file.cache.items() if first <= k <= last}
        for mm in list(file.users):
            mm._unmap_file_pages(file, first, last, victims)
        file.drop_range(first, last)

    def add_seals(self, file: MemFile, seals: int) -> None:
        """mm/memfd.c: memfd_add_seals(): EPERM once sealed with F_SEAL_SEAL; F_SEAL_WRITE is
        EBUSY while any mapping is shared and may write (``mapping_deny_writable()``). O(users x n)."""
        known = (abi.F_SEAL_SEAL | abi.F_SEAL_SHRINK | abi.F_SEAL_GROW | abi.F_SEAL_WRITE
                 | abi.F_SEAL_FUTURE_WRITE)
        if file.disk:
            raise kerr(errno.EINVAL, "F_ADD_SEALS: not a shmem file")
        if seals & ~known:
            raise kerr(errno.EINVAL, "memfd: unknown seal")
        if file.seals & abi.F_SEAL_SEAL:
            raise kerr(errno.EPERM, "memfd: sealed against sealing")
        if seals & abi.F_SEAL_WRITE and not file.seals & abi.F_SEAL_WRITE:
            for mm in file.users:
                for vma in mm.tree:
                    if vma.vm_file is file and vma.vm_flags & VmFlag.SHARED \
                            and vma.vm_flags & VmFlag.MAYWRITE:
                        raise kerr(errno.EBUSY, "memfd: writable shared mapping exists")
        file.seals |= seals

    def truncate(self, file: MemFile, size: int) -> None:
        """shmem_setattr() size change: shrinking unmaps and drops pages past EOF (markers stay).
        O(users x n + pages)."""
        if (size < file.size and file.seals & abi.F_SEAL_SHRINK) or \
                (size > file.size and file.seals & abi.F_SEAL_GROW):
            raise kerr(errno.EPERM, "ftruncate: sealed")
        old = file.npages
        if size < file.size:
            self._split_folios(file, size >> PAGE_SHIFT, None)
        if file.disk and size < file.size:  # ext4_block_truncate_page(): the new tail is zeroed
            _dirty_partial(file, size)
        file.size = size
        new = file.npages
        if new < old:
            last = max(old - 1, max(file.cache, default=0))  # a collapsed folio may pass EOF
            victims = {id(v) for k, v in file.cache.items() if k >= new}
            for mm in list(file.users):
                mm._unmap_file_pages(file, new, last, victims, even_cows=True)
            file.drop_range(new, last)

    def _split_folios(self, file: MemFile, first: int, last: int | None) -> None:
        """shmem_undo_range()'s truncate_inode_partial_folio(): a large folio that pages
        ``first..last`` (``last`` None: to EOF) cover in part is split at ``first`` and at
        ``last``, and each split folio is first unmapped whole from every mapping (page-cache
        pages only; private CoW copies and markers stay). O(users x n + folio pages)."""
        for at in (first, last):
            if at is None:
                continue
            folio = file.folio_of(at)
            if folio is None:
                continue
            start, n = folio
            if first <= start and (last is not None and start + n - 1 <= last or last is None):
                continue  # the range covers it whole: truncated as one folio
            file.split_folio(at)
            for mm in list(file.users):
                mm._unmap_file_pages(file, start, start + n - 1, None)

    def _unmap_file_pages(self, file: MemFile, first: int, last: int, victims: set | None,
                          even_cows: bool = False) -> None:
        """unmap_mapping_range() in this mm: zap file pages ``first..last`` (inclusive, page
        offsets in ``file``) of every VMA mapping them; only the frames in ``victims``
        (ids), or every page-cache page when None; private CoW copies too if ``even_cows``.
        O(n + zaps)."""
        for vma in self.tree:
            if vma.vm_file is not file:
                continue
            lo = max(first, vma.vm_pgoff)
            hi = min(last, vma.vm_pgoff + vma.npages - 1)
            if lo > hi:
                continue
            s = vma.vm_start + ((lo - vma.vm_pgoff) << PAGE_SHIFT)
            e = vma.vm_start + ((hi + 1 - vma.vm_pgoff) << PAGE_SHIFT)
            if even_cows and not vma.vm_flags & VmFlag.SHARED:
                self.zap_range(s, e)
            elif victims is None:  # every page-cache page in the range (unmap_mapping_range)
                self.zap_range(s, e, only=lambda en: en.kind == FRAME_FILE)
            else:
                self.zap_range(s, e, only=lambda en: en.kind == FRAME_FILE and id(en) in victims)


def _dirty_partial(file: MemFile, offset: int) -> None:
    """A disk file's page holding byte ``offset`` in its middle is zeroed from or up to
    there through the page cache (ext4_block_zero_page_range()): dirty, so reclaim keeps
    it; a page that was not cached is brought in for its block only, not uptodate, which
    fault-around skips until a fault reads it (measured)."""
    pgoff = offset >> PAGE_SHIFT
    if offset & (PAGE_SIZE - 1) and pgoff < file.npages:
        stale = pgoff not in file.cache
        frame = file.get_page(pgoff)
        frame.dirty = True
        frame.stale = frame.stale or stale
