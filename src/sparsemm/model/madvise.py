"""madvise(2) on the model: validation, the VMA walk, flag advice, zaps, populate, collapse.

Owns MADV_* semantics and MADV_POPULATE_*; the guard advice goes to the address space's
guard design (``designs``), per VMA piece or, for a ``whole_range`` design, as a whole.
Mixed into ``AddressSpace``: needs ``MmCore``'s ``tree``, ``pt``, ``design``,
``set_pte``/``clear_pte``, ``zap_range`` and, from the other parts, ``gup_check``,
``gup_page`` and ``punch_hole``.
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm.abi import ULONG_MAX, Madv, VmFlag
from sparsemm.model._util import PAGE_SHIFT, PAGE_SIZE, FaultError, kerr
from sparsemm.model.core import HPAGE_SHIFT, MmCore
from sparsemm.model.frames import FRAME_ANON, FRAME_FILE, Frame
from sparsemm.model.merge import vma_modify_flags
from sparsemm.model import readahead
from sparsemm.model.pagetable import HPAGE_PMD_NR, PTE_SHIFT, pmd_start
from sparsemm.model.vma import VM_SPECIAL, Vma

_HPAGE = 1 << HPAGE_SHIFT  # a hugetlb page, bytes

#: mm/madvise.c: is_discard(): the advice a sealed read-only private anonymous VMA refuses.
_DISCARD_ADVICE = frozenset(int(m) for m in (
    Madv.FREE, Madv.DONTNEED, Madv.DONTNEED_LOCKED, Madv.REMOVE, Madv.DONTFORK, Madv.WIPEONFORK,
    Madv.GUARD_INSTALL))

#: The advice values madvise_behavior_valid() accepts on this kernel config (THP on, KSM on,
#: CONFIG_MEMORY_FAILURE off: MADV_HWPOISON/SOFT_OFFLINE are EINVAL here).
_VALID_ADVICE = frozenset(int(m) for m in (
    Madv.NORMAL, Madv.RANDOM, Madv.SEQUENTIAL, Madv.WILLNEED, Madv.DONTNEED, Madv.FREE,
    Madv.REMOVE, Madv.DONTFORK, Madv.DOFORK, Madv.MERGEABLE, Madv.UNMERGEABLE, Madv.HUGEPAGE,
    Madv.NOHUGEPAGE, Madv.DONTDUMP, Madv.DODUMP, Madv.WIPEONFORK, Madv.KEEPONFORK, Madv.COLD,
    Madv.PAGEOUT, Madv.POPULATE_READ, Madv.POPULATE_WRITE, Madv.DONTNEED_LOCKED, Madv.COLLAPSE,
    Madv.GUARD_INSTALL, Madv.GUARD_REMOVE))


class MadviseMixin(MmCore):
    """``madvise()`` of ``AddressSpace`` (mm/madvise.c, mm/khugepaged.c madvise_collapse).

    The per-VMA steps return the address the walk resumes at (``_resume_after``): the end
    of their piece, or beyond it when the VMA now covering that end reaches further.
    """

    __slots__ = ()

    # ------------------------------------------------------------------ madvise

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """mm/madvise.c: do_madvise(): apply ``advice`` (an MADV_ value) to
        ``[addr, addr + length)``, VMA by VMA; ENOMEM for holes after the mapped parts
        were done (docs/rules.md R-A3), the first per-VMA error stops the walk (R-A4). O(k log n) plus
        the page-table work: zaps O(t + f), guard install/remove O(log r + runs touched +
        t) (docs/model.md "Complexity"); populate O(p)."""
        if advice not in _VALID_ADVICE:
            raise kerr(errno.EINVAL, "madvise: bad advice")
        design = self.design
        if design.whole_range and (advice == Madv.GUARD_INSTALL or advice == Madv.GUARD_REMOVE):
            design.guard_range(self, addr, length, advice)  # e.g. the vma design's mprotect
            return
        if addr & ~abi.PAGE_MASK:
            raise kerr(errno.EINVAL, "madvise: unaligned")  # R-A1
        end_len = abi.page_align(length) & ULONG_MAX
        if length and not end_len:
            raise kerr(errno.EINVAL, "madvise: length rounds to 0")
        end = (addr + end_len) & ULONG_MAX
        if end < addr:
            raise kerr(errno.EINVAL, "madvise: wraps")
        if end == addr:
            return
        if advice in (Madv.POPULATE_READ, Madv.POPULATE_WRITE):
            self._madvise_populate(addr, end, advice == Madv.POPULATE_WRITE)
            return
        # madvise_walk_vmas(): apply per VMA in order, remember holes (R-A3, R-A4)
        unmapped = False
        start = addr
        while True:
            vma = self.tree.find_vma(start)
            if vma is None:
                raise kerr(errno.ENOMEM, "madvise: no vma")
            if start < vma.vm_start:
                unmapped = True
                start = vma.vm_start
                if start >= end:
                    break
            tmp = min(vma.vm_end, end)
            start = self._madvise_vma(vma, start, tmp, advice)
            if start >= end:
                break
        if unmapped:
            raise kerr(errno.ENOMEM, "madvise: range has holes")

    def _madvise_populate(self, start: int, end: int, write: bool) -> None:
        """mm/madvise.c: madvise_populate(): GUP without FOLL_FORCE, page by page. O(p)."""
        addr = start
        while addr < end:
            vma = self.tree.find(addr)
            if vma is None:
                raise kerr(errno.ENOMEM, "populate: no vma")
            if vma.is_guard_entry:  # tree design T7: a guard faults, as a marker does
                raise kerr(errno.EFAULT, "populate: guard entry")
            if not self.gup_check(vma, write, force=False):
                raise kerr(errno.EINVAL, "populate: incompatible vma")
            stop = min(end, vma.vm_end)
            while addr < stop:
                try:
                    self.gup_page(vma, addr, write)
                except FaultError:
                    raise kerr(errno.EFAULT, "populate: fault (guard or SIGBUS)") from None
                addr += PAGE_SIZE

    def _madvise_vma(self, vma: Vma, start: int, end: int, advice: int) -> int:
        """mm/madvise.c: madvise_vma_behavior() on ``[start, end)`` of one VMA (or guard
        entry); returns the address the walk resumes at."""
        if vma.is_guard_entry:  # tree design: only the guard advice acts on an entry (T7)
            if advice == Madv.GUARD_INSTALL:
                return self.design.install(self, vma, start, end)
            if advice == Madv.GUARD_REMOVE:
                return self.design.remove(self, vma, start, end)
            return _resume_after(vma, end)
        f = vma.vm_flags
        if f & VmFlag.SEALED and advice in _DISCARD_ADVICE and vma.is_anonymous() \
                and not f & VmFlag.WRITE:  # can_madvise_modify(): per VMA, earlier ones done
            raise kerr(errno.EPERM, "madvise: discard on a sealed read-only anonymous vma")
        new = f
        if advice == Madv.REMOVE:
            return self._madvise_remove(vma, start, end)
        if advice == Madv.WILLNEED:
            # no swap here; a shmem file has no readahead (generic_fadvise() skips it), a
            # disk file reads the range into its page cache (madvise_willneed())
            if vma.vm_file is not None and vma.vm_file.disk:
                readahead.willneed(vma.vm_file, vma.file_pgoff(start), vma.file_pgoff(end - 1))
            return end
        if advice in (Madv.COLD, Madv.PAGEOUT):
            if f & (VmFlag.LOCKED | VmFlag.PFNMAP | VmFlag.HUGETLB):
                raise kerr(errno.EINVAL, "madvise: cold/pageout on locked vma")
            if advice == Madv.PAGEOUT:
                self._pageout(vma, start, end)
            return end
        if advice in (Madv.DONTNEED, Madv.DONTNEED_LOCKED, Madv.FREE) and f & VmFlag.HUGETLB:
            # madvise_dontneed_free_valid_vma(): no MADV_FREE, a huge-page aligned start, and
            # only the whole huge pages of the range go (its end rounds down)
            if advice == Madv.FREE or start & (_HPAGE - 1):
                raise kerr(errno.EINVAL, "madvise: hugetlb free, or dontneed from inside a huge page")
            if not f & VmFlag.SHARED:
                self.hugetlb_zap_private(vma, start, end & ~(_HPAGE - 1))
            self.zap_range(start, end & ~(_HPAGE - 1))
            return end
        if advice in (Madv.DONTNEED, Madv.DONTNEED_LOCKED, Madv.FREE):
            forbidden = VmFlag.PFNMAP | (0 if advice == Madv.DONTNEED_LOCKED else VmFlag.LOCKED)
            if f & forbidden:
                raise kerr(errno.EINVAL, "madvise: dontneed on locked vma")
            if advice == Madv.FREE:
                if not vma.is_anonymous():
                    raise kerr(errno.EINVAL, "madvise: MADV_FREE on non-anon")
                self._free(start, end)  # pages stay mapped until reclaim (R-F2)
                return end
            self.zap_range(start, end)  # R-F1: guard markers survive
            self.pt.reclaim_pte_tables(start >> PAGE_SHIFT, end >> PAGE_SHIFT)
            return end
        if advice == Madv.GUARD_INSTALL:
            return self.design.install(self, vma, start, end)
        if advice == Madv.GUARD_REMOVE:
            return self.design.remove(self, vma, start, end)
        if advice == Madv.COLLAPSE:
            return self._collapse(vma, start, end)
        if advice in (Madv.MERGEABLE, Madv.UNMERGEABLE):
            if advice == Madv.MERGEABLE:
                if f & (VmFlag.SHARED | VmFlag.MAYSHARE | VM_SPECIAL | VmFlag.HUGETLB | VmFlag.MIXEDMAP):
                    return end
                new = f | VmFlag.MERGEABLE
            else:
                new = f & ~VmFlag.MERGEABLE
        elif advice == Madv.NORMAL:
            new = f & ~(VmFlag.RAND_READ | VmFlag.SEQ_READ)
        elif advice == Madv.SEQUENTIAL:
            new = (f & ~VmFlag.RAND_READ) | VmFlag.SEQ_READ
        elif advice == Madv.RANDOM:
            new = (f & ~VmFlag.SEQ_READ) | VmFlag.RAND_READ
        elif advice == Madv.DONTFORK:
            new = f | VmFlag.DONTCOPY
        elif advice == Madv.DOFORK:
            if f & VmFlag.IO:
                raise kerr(errno.EINVAL, "madvise: dofork on VM_IO")
            new = f & ~VmFlag.DONTCOPY
        elif advice == Madv.WIPEONFORK:
            if vma.vm_file is not None or f & VmFlag.SHARED:
                raise kerr(errno.EINVAL, "madvise: wipeonfork on non-anon")
            new = f | VmFlag.WIPEONFORK
        elif advice == Madv.KEEPONFORK:
            if f & VmFlag.DROPPABLE:  # a droppable VMA is always wiped on fork
                raise kerr(errno.EINVAL, "madvise: keeponfork on a droppable vma")
            new = f & ~VmFlag.WIPEONFORK
        elif advice == Madv.DONTDUMP:
            new = f | VmFlag.DONTDUMP
        elif advice == Madv.DODUMP:
            # hugetlb (VM_DONTEXPAND) may be dumped; a droppable VMA never is
            if (f & VM_SPECIAL and not f & VmFlag.HUGETLB) or f & VmFlag.DROPPABLE:
                raise kerr(errno.EINVAL, "madvise: dodump on special or droppable vma")
            new = f & ~VmFlag.DONTDUMP
        elif advice == Madv.HUGEPAGE:
            new = (f & ~VmFlag.NOHUGEPAGE) | VmFlag.HUGEPAGE  # hugepage_madvise()
        elif advice == Madv.NOHUGEPAGE:
            new = (f & ~VmFlag.HUGEPAGE) | VmFlag.NOHUGEPAGE
        # madvise_update_vma()
        if new == f:
            return _resume_after(vma, end)
        prev = self.tree.prev(vma) if start == vma.vm_start else vma
        try:
            vma = vma_modify_flags(self.tree, prev, vma, start, end, new, self.max_map_count)
        except OSError as exc:  # madvise_vma_behavior(): a split over max_map_count is EAGAIN
            if exc.errno == errno.ENOMEM:
                raise kerr(errno.EAGAIN, "madvise: split over max_map_count") from None
            raise
        return _resume_after(vma, end)

    def _collapse(self, vma: Vma, start: int, end: int) -> int:
        """mm/khugepaged.c: madvise_collapse(): collapse each aligned 2 MiB of the range into a THP.
        Fails (EINVAL) over guard markers (R-F16); anon needs a writable VMA with at least one
        written page (a zero-page-only range is SCAN_PAGE_RO). Approximation: no other SCAN_ cause.
        Returns the resume address."""
        span = HPAGE_PMD_NR << PAGE_SHIFT
        hstart = (start + span - 1) & ~(span - 1)
        hend = end & ~(span - 1)
        if vma.vm_file is not None and vma.vm_file.disk:
            # file_thp_enabled(): a regular file takes a THP only while no one has it open for
            # writing; an op script's disk file always has a writable descriptor open.
            raise kerr(errno.EINVAL, "madvise: collapse of a file open for writing")
        # thp_vma_allowable_order() (thp_vma_suitable_order()): a VMA with no aligned 2 MiB
        # block in it is not eligible, nor a file VMA whose offset is not 2 MiB aligned with
        # its address, nor an anonymous VMA without an anon_vma (nothing ever written). An
        # eligible range holding no aligned block collapses nothing and succeeds (hstart ==
        # hend), also in a file VMA; one that ends before it starts (hstart > hend, inside one
        # block) fails. Measured on 6.18.
        no_block = ((vma.vm_start + span - 1) & ~(span - 1)) + span > vma.vm_end
        if vma.vm_flags & VmFlag.HUGETLB:
            eligible = False  # no THP in a hugetlbfs file (neither shmem nor file_thp_enabled())
        elif vma.is_anonymous():
            eligible = vma.anon_vma is not None and not no_block
        else:
            eligible = not no_block and not ((vma.vm_start >> PAGE_SHIFT) - vma.vm_pgoff) % HPAGE_PMD_NR
        if vma.vm_flags & VmFlag.NOHUGEPAGE or hstart > hend or not eligible:
            raise kerr(errno.EINVAL, "madvise: nothing to collapse")
        if hstart == hend:
            return _resume_after(vma, end)
        failed = False
        for h in range(hstart, hend, span):
            if h < vma.vm_start or h + span > vma.vm_end:
                failed = True
                continue
            p0 = h >> PAGE_SHIFT
            ents = [None] * HPAGE_PMD_NR
            for p, e in self.pt.frames(p0, p0 + HPAGE_PMD_NR):
                ents[p - p0] = e
            if vma.is_anonymous():
                if self.pt.has_markers_in(p0, p0 + HPAGE_PMD_NR) or not vma.vm_flags & VmFlag.WRITE or not any(
                        e is not None and e.kind == FRAME_ANON for e in ents):
                    failed = True
                    continue
                for i, e in enumerate(ents):
                    if e is None or e.kind != FRAME_ANON:
                        self.set_pte(p0 + i, Frame(0, FRAME_ANON))
                    else:
                        e.lazyfree = False  # copied into a new, swap-backed folio
                self.pt.map_huge_pmd(p0, deposit=True)  # the old PTE table is deposited
            else:
                if not self._collapse_file(vma, p0, ents):
                    failed = True
        if failed:
            raise kerr(errno.EINVAL, "madvise: collapse failed")
        return _resume_after(vma, end)

    def _collapse_file(self, vma: Vma, p0: int, ents: list) -> bool:
        """The file part of madvise_collapse() for the block at page ``p0``: collapse_file()
        builds the large folio in the page cache, then collapse_pte_mapped_thp() maps it with
        one PMD. The folio stays built when the mapping step fails: a guard marker in the
        block or a private CoW copy there gives EINVAL, and other mappings still see the
        folio. Needs the file offset 2 MiB aligned with the address and the block starting
        before EOF (shmem builds the rest past EOF). Returns whether the block is now
        PMD-mapped."""
        f = vma.vm_file
        start = vma.file_pgoff(p0 << PAGE_SHIFT)
        if start % HPAGE_PMD_NR or start >= f.npages:
            return False  # (a folio reaching past EOF is built: shmem maps PMDs across i_size)
        built = f.folios.get(start) != HPAGE_PMD_NR  # else only this VMA's mapping changes
        if built:  # collapse_file(): the new folio replaces the small ones, unmapped everywhere
            for b in [b for b in f.folios if start <= b < start + HPAGE_PMD_NR]:
                del f.folios[b]
            f.folios[start] = HPAGE_PMD_NR
            for mm in list(f.users):
                mm._unmap_file_pages(f, start, start + HPAGE_PMD_NR - 1, None)
        mapped = not self.pt.has_markers_in(p0, p0 + HPAGE_PMD_NR) and not any(
            e is not None and e.kind == FRAME_ANON for e in ents)
        if mapped:
            get = self.pt.get
            for i in range(HPAGE_PMD_NR):
                if get(p0 + i) is None:
                    self.set_pte(p0 + i, f.folio_page(start + i))
            self.pt.map_huge_pmd(p0)  # no deposited table for a page-cache folio
        if built:  # collapse_file() ends with retract_page_tables()
            for mm in list(f.users):
                mm.retract_page_tables(f, start)
        return mapped

    def retract_page_tables(self, f, start: int) -> None:
        """mm/khugepaged.c: retract_page_tables() in this mm, after a collapse built the folio
        at ``start`` (pgoff) of ``f``: a VMA that maps the folio's range whole and 2 MiB
        aligned, has no anon_vma and no guard (VM_MAYBE_GUARD), loses the PTE table there
        (with the page-cache entries it held); a later fault maps the folio afresh.
        O(VMAs + HPAGE_PMD_NR per table retracted)."""
        for vma in list(self.tree):
            if vma.is_guard_entry or vma.vm_file is not f or vma.anon_vma is not None \
                    or vma.vm_flags & VmFlag.MAYBE_GUARD:
                continue
            addr = vma.vm_start + ((start - vma.vm_pgoff) << PAGE_SHIFT)
            if start < vma.vm_pgoff or addr % (HPAGE_PMD_NR << PAGE_SHIFT) \
                    or addr + (HPAGE_PMD_NR << PAGE_SHIFT) > vma.vm_end:
                continue
            p0 = addr >> PAGE_SHIFT
            if p0 >> PTE_SHIFT not in self.pt.pte_tables or self.pt.has_markers_in(p0, p0 + HPAGE_PMD_NR):
                continue
            for page, _ in self.pt.frames(p0, p0 + HPAGE_PMD_NR):
                self.clear_pte(page)
            self.pt.reclaim_pte_tables(p0, p0 + HPAGE_PMD_NR)

    def _madvise_remove(self, vma: Vma, start: int, end: int) -> int:
        """mm/madvise.c: madvise_remove(): punch a hole in the shmem file (R-F6); returns
        the resume address."""
        if vma.vm_flags & VmFlag.LOCKED:
            raise kerr(errno.EINVAL, "madvise: remove on locked vma")
        if vma.vm_file is None:
            raise kerr(errno.EINVAL, "madvise: remove on anon")
        if (vma.vm_flags & (VmFlag.SHARED | VmFlag.MAYWRITE)) != (VmFlag.SHARED | VmFlag.MAYWRITE):
            raise kerr(errno.EACCES, "madvise: remove needs a shared writable mapping")
        first = vma.file_pgoff(start)
        if vma.vm_flags & VmFlag.HUGETLB:
            self._hugetlb_punch(vma.vm_file, first, first + ((end - start) >> PAGE_SHIFT))
            return end
        self.punch_hole(vma.vm_file, first << PAGE_SHIFT, (end - start))
        return end

    def _hugetlb_punch(self, f, first: int, end: int) -> None:
        """hugetlbfs_punch_hole() of pages ``[first, end)`` of hugetlbfs file ``f``: the huge
        pages wholly inside that the file holds go (unmapped everywhere, back to the pool;
        their reservations were used: a refault needs an unreserved page), reservations of
        pages never faulted in stay (remove_inode_hugepages() only visits folios; measured);
        the part of a huge page the range covers is zeroed (hugetlbfs_zero_partial_page()).
        O(pages in range)."""
        span = HPAGE_PMD_NR
        h0, h1 = -(-first // span), end // span
        if h0 >= h1:
            partial = range(first, end)
        else:
            partial = [*range(first, h0 * span), *range(h1 * span, end)]
        for pgoff in partial:
            frame = f.cache.get(pgoff)
            if frame is not None:
                frame.byte = 0
        for idx in range(h0, h1):
            base = idx * span
            if base in f.cache:
                for mm in list(f.users):
                    mm._unmap_file_pages(f, base, base + span - 1, None)
                for pgoff in range(base, base + span):
                    f.cache.pop(pgoff, None)
                self.hugetlb_pool[0] += 1

    def _free(self, start: int, end: int) -> None:
        """mm/madvise.c: madvise_free_single_vma() for ``[start, end)`` of an anonymous VMA:
        the anon pages mapped only here become lazyfree (clean; the next reclaim discards
        them unless they are written first); pages shared with a fork are left alone
        (``folio_maybe_mapped_shared()``). A THP the range covers in part is split first
        (``madvise_free_huge_pmd()``), so only the covered pages become lazyfree; a whole
        THP becomes lazyfree as one folio. O(frames in range)."""
        first, last = start >> PAGE_SHIFT, end >> PAGE_SHIFT
        for p0 in {pmd_start(first), pmd_start(last - 1)}:
            if self.pt.is_huge(p0) and not (first <= p0 and p0 + HPAGE_PMD_NR <= last):
                head = self.pt.get(p0)  # the huge zero page and a shared THP stay whole
                if head is not None and head.kind == FRAME_ANON and head.mapcount == 1:
                    self.pt.split_huge_pmd(p0)
        for _, entry in self.pt.frames(first, last):
            if entry.kind == FRAME_ANON and entry.mapcount == 1:
                entry.lazyfree = True

    def _pageout(self, vma: Vma, start: int, end: int) -> None:
        """mm/madvise.c: madvise_pageout() with no swap device: page-cache pages mapped once
        are unmapped (they stay cached); anon pages mapped once are discarded when lazyfree
        (``MADV_FREE``, not written since) or in a ``VM_DROPPABLE`` VMA, and stay otherwise
        (nothing to swap to). A THP holding a discarded page is split first: its PTE table
        stays (measured: a later read maps base pages, not the huge zero page). A disk
        file's page mapped once is reclaimed: a clean one leaves the page cache (its byte
        stays on disk), a dirty one stays cached, marked ``PG_reclaim`` (shrink_folio_list()
        does not write file pages back from here), which fault-around skips as it skips
        ``PG_readahead``, the same bit. A disk file's large folio the range covers in part
        is split (unmapped everywhere, not remapped) and nothing of it is reclaimed
        (measured). O(frames in range)."""
        droppable = bool(vma.vm_flags & VmFlag.DROPPABLE)
        f = vma.vm_file
        disk = f is not None and f.disk
        if disk and f.folios:
            self._pageout_split(vma, start, end)
        for page, entry in self.pt.frames(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
            if entry.mapcount != 1:
                continue
            if entry.kind == FRAME_FILE:
                self.clear_pte(page)
                if disk:
                    self._reclaim_disk_page(f, vma.file_pgoff(page << PAGE_SHIFT), entry)
            elif entry.kind == FRAME_ANON and (entry.lazyfree or droppable):
                self.pt.split_huge_pmd(page)
                self.clear_pte(page)

    def _pageout_split(self, vma: Vma, start: int, end: int) -> None:
        """madvise_cold_or_pageout_pte_range(): a disk file's large folio mapped in
        ``[start, end)`` but reaching past it is split to base pages; a page-cache folio's
        split unmaps it from every mapping. O(pages in range + folio pages)."""
        f = vma.vm_file
        first, last = vma.file_pgoff(start), vma.file_pgoff(end - 1)
        for head, n in list(f.folios.items()):
            if head <= last and head + n - 1 >= first and (head < first or head + n - 1 > last):
                del f.folios[head]
                for mm in list(f.users):
                    mm._unmap_file_pages(f, head, head + n - 1, None)

    def _reclaim_disk_page(self, f, pgoff: int, frame: Frame) -> None:
        """shrink_folio_list() of a disk file's folio holding page ``pgoff`` (``frame``, just
        unmapped here): dirty stays cached and marked; clean, unmapped everywhere, is evicted
        (a large folio whole, once none of its pages is mapped). O(folio pages)."""
        if f.cache.get(pgoff) is not frame:
            return
        folio = f.folio_of(pgoff) if f.folios else None
        first, n = folio if folio is not None else (pgoff, 1)
        frames = [f.cache[first + i] for i in range(n) if first + i in f.cache]
        if any(fr.dirty for fr in frames):
            for fr in frames:
                fr.ra_mark = True
            return
        if any(fr.mapcount for fr in frames):
            return
        for i in range(n):
            fr = f.cache.pop(first + i, None)
            if fr is not None and fr.byte:
                f.on_disk[first + i] = fr.byte
        f.folios.pop(first, None)


def _resume_after(vma: Vma, end: int) -> int:
    """Where the madvise walk goes on after a step that left ``vma`` covering ``end``: past
    ``vma`` when a merge took it beyond ``end`` (``madvise_walk_vmas()``'s ``prev``)."""
    return vma.vm_end if vma.vm_end > end else end
