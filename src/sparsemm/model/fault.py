"""Page faults, GUP and populate: how a model address space gets pages mapped.

Owns anon_vma preparation, the fault handler (anon, zero page, CoW, file fault-around,
THP), the GUP checks behind ``touch`` and MADV_POPULATE/mlock, and CPU ``access``.
Mixed into ``AddressSpace`` (needs ``MmCore``'s ``tree``, ``pt`` and ``set_pte``);
never changes VMAs except their ``anon_vma``.
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm.abi import VmFlag
from sparsemm.model._util import PAGE_SHIFT, PAGE_SIZE, FaultError, SegFault, kerr
from sparsemm.model.core import MmCore
from sparsemm.model.frames import FRAME_ANON, FRAME_FILE, FRAME_ZERO, ZERO_PAGE, Frame
from sparsemm.model import readahead
from sparsemm.model.pagetable import GUARD, HPAGE_PMD_NR, PTRS_PER_TABLE, pmd_start, pte_index
from sparsemm.model.vma import VM_ACCESS_FLAGS, VM_IGNORE_MERGE, AnonVma, Vma
from sparsemm.model._flags import (_VM_ACCESS_FLAGS, _VM_HUGEPAGE, _VM_IO_PFNMAP, _VM_MAYREAD, _VM_MAYWRITE,
                                    _VM_NOHUGEPAGE, _VM_READ, _VM_SHARED, _VM_UFFD_MISSING, _VM_WRITE,
                                    _VM_HUGETLB)

#: mm/memory.c: fault_around_bytes default (64 KiB) in pages.
FAULT_AROUND_PAGES = 16


class FaultMixin(MmCore):
    """The fault paths of ``AddressSpace`` (mm/memory.c, mm/gup.c, mm/rmap.c).

    Provides ``anon_vma_prepare``, ``gup_check``, ``gup_page``, ``populate_vma_range`` and
    ``mm_populate`` to the other parts (the ``MmCore`` contract).
    """

    __slots__ = ()

    # ------------------------------------------------------------------ anon_vma

    def anon_vma_prepare(self, vma: Vma) -> None:
        """mm/rmap.c: __anon_vma_prepare(): give ``vma`` an anon_vma, reusing a neighbour's
        (``find_mergeable_anon_vma()``: next first, then prev) when compatible and unforked.
        Precondition: ``vma`` is in the tree. O(log n)."""
        if vma.anon_vma is not None:
            return
        nxt = self.tree.next(vma)
        if nxt is not None and _anon_vma_compatible(vma, nxt) and nxt.anon_vma is not None \
                and not nxt.anon_vma_forked:
            vma.anon_vma, vma.anon_vma_forked = nxt.anon_vma, False
            return
        prev = self.tree.prev(vma)
        if prev is not None and _anon_vma_compatible(prev, vma) and prev.anon_vma is not None \
                and not prev.anon_vma_forked:
            vma.anon_vma, vma.anon_vma_forked = prev.anon_vma, False
            return
        vma.anon_vma, vma.anon_vma_forked = AnonVma(), False

    # ------------------------------------------------------------------ faults

    def _thp_eligible(self, vma: Vma, page: int) -> bool:
        """Would an anon fault at ``page`` map a PMD THP? THP "madvise" mode: VM_HUGEPAGE,
        the aligned 2 MiB inside the VMA, and no PTE table there yet (``pmd_none``)."""
        f = int(vma.vm_flags)
        if not f & _VM_HUGEPAGE or f & _VM_NOHUGEPAGE or not vma.is_anonymous():
            return False
        p0 = pmd_start(page)
        if (p0 << PAGE_SHIFT) < vma.vm_start or ((p0 + HPAGE_PMD_NR) << PAGE_SHIFT) > vma.vm_end:
            return False
        return self.pt.pmd_none(page)

    def _fault_thp(self, vma: Vma, page: int, write: bool) -> None:
        """do_huge_pmd_anonymous_page(): a zeroed THP (write) or the huge zero page (read).
        Either way the VMA gets its anon_vma first (``vmf_anon_prepare()``), unlike a read
        fault mapping the small zero page, so fork copies the huge zero page's PMD."""
        p0 = pmd_start(page)
        self.anon_vma_prepare(vma)
        for p in range(p0, p0 + HPAGE_PMD_NR):
            self.set_pte(p, Frame(0, FRAME_ANON) if write else ZERO_PAGE)
        self.pt.map_huge_pmd(p0, deposit=True)  # no PTE table, but one deposited

    def _fault_hugetlb(self, vma: Vma, page: int) -> None:
        """hugetlb_fault() of a page not yet present: the whole 2 MiB page is mapped, zeroed
        (a private mapping's as anon memory, a shared one's in its hugetlbfs file)."""
        p0 = pmd_start(page)
        shared = bool(int(vma.vm_flags) & _VM_SHARED)
        pgoff = vma.file_pgoff(p0 << PAGE_SHIFT)
        if not (shared and pgoff in vma.vm_file.cache):  # a new page: from the pool
            self.hugetlb_alloc(vma, pgoff // HPAGE_PMD_NR)
        if not shared:
            self.anon_vma_prepare(vma)
        for p in range(p0, p0 + HPAGE_PMD_NR):
            self.set_pte(p, vma.vm_file.get_page(vma.file_pgoff(p << PAGE_SHIFT)) if shared
                         else Frame(0, FRAME_ANON))
        self.pt.map_huge_pmd(p0)

    def _hugetlb_wp(self, vma: Vma, page: int) -> None:
        """hugetlb_wp(): a write to a private huge page another process maps too (after
        fork) copies the whole huge page into a new one, which needs a free page nobody
        reserved (``alloc_hugetlb_folio()`` avoids the reserve here): SIGBUS when there is
        none. (The owner's fallback of unmapping the page from the child is not modelled.)
        O(HPAGE_PMD_NR)."""
        p0 = pmd_start(page)
        head = self.pt.get(p0)
        if head is None or head.kind != FRAME_ANON or head.mapcount == 1:
            return  # mapped here only: reused in place
        if self.hugetlb_pool[0] < 1:
            raise FaultError("SIGBUS")
        self.hugetlb_pool[0] -= 1
        for p, old in self.pt.frames(p0, p0 + HPAGE_PMD_NR):
            self.set_pte(p, Frame(old.byte, FRAME_ANON))

    def _fault_around(self, vma: Vma, addr: int) -> None:
        """mm/memory.c: do_fault_around() + filemap_map_pages(): map the cached file pages of
        the 16-page window around ``addr`` (clamped to the VMA, the PTE table and EOF),
        leaving present PTEs and guard markers alone. A folio marked ``PG_readahead`` is
        skipped (next_uptodate_folio()); each page mapped is an mmap hit of a disk file.
        For a disk file (6.18, "do not map PTEs past i_size"): when the first folio found
        holds the file's last page, large folios are mapped only within the window, and with
        no PTE table there yet nothing is mapped at all (the table is installed only on the
        other path; measured: a fault past EOF of a fresh mapping maps nothing)."""
        page = addr >> PAGE_SHIFT
        pte_off = pte_index(page)
        vma_off = vma.file_pgoff(addr) - vma.vm_pgoff
        from_pte = max(pte_off & ~(FAULT_AROUND_PAGES - 1), pte_off - min(pte_off, vma_off))
        to_pte = min(from_pte + FAULT_AROUND_PAGES, PTRS_PER_TABLE, pte_off + vma.npages - vma_off)
        f = vma.vm_file
        file_end = f.npages - 1
        base = page - pte_off
        get = self.pt.get
        mapped = 0
        can_map_large = None if f.disk else True  # decided by the first folio found
        for pte in range(from_pte, to_pte):
            p = base + pte
            pgoff = vma.file_pgoff(p << PAGE_SHIFT)
            if pgoff > file_end:
                continue
            folio = f.folio_of(pgoff) if f.folios else None
            if can_map_large is None:
                frame = f.cache.get(pgoff)
                if frame is None or frame.ra_mark or frame.stale:
                    continue
                can_map_large = (folio[0] + folio[1] if folio else pgoff + 1) < f.npages
                if not can_map_large and self.pt.pmd_none(page):
                    return
            elif f.disk:
                frame = f.cache.get(pgoff)
                if frame is not None and (frame.ra_mark or frame.stale):
                    continue
            if folio is not None:
                # filemap_map_folio_range() (6.18): a large folio that fits the VMA and the
                # PMD is mapped whole, beyond the window
                fp = p - (pgoff - folio[0])
                if can_map_large and fp << PAGE_SHIFT >= vma.vm_start and (fp + folio[1]) << PAGE_SHIFT <= vma.vm_end \
                        and pmd_start(fp) == pmd_start(fp + folio[1] - 1):
                    for i in range(folio[1]):
                        if get(fp + i) is None and folio[0] + i <= file_end:
                            self.set_pte(fp + i, f.get_page(folio[0] + i))
                            mapped += 1
                    continue
            if get(p) is not None:
                continue
            frame = f.cache.get(pgoff)
            if frame is not None:
                self.set_pte(p, frame)
                mapped += 1
        if f.disk:  # filemap_map_pages(): mmap hits pay back mmap_miss (workingset ignored)
            f.ra.mmap_miss = max(0, f.ra.mmap_miss - mapped)

    def _disk_page(self, vma: Vma, addr: int, pgoff: int, write: bool) -> Frame:
        """mm/filemap.c: filemap_fault() of a disk file's page ``pgoff`` (before EOF): a
        cached page is an mmap hit (async readahead at a marked folio); a missing one is
        read with the readahead ``vma`` asks for (readahead.py), one page at least. Either
        read drops the mmap lock and the fault is retried: a read fault's retry runs
        fault-around again over what is cached now. Returns the page."""
        f = vma.vm_file
        flags = int(vma.vm_flags)
        if pgoff in f.cache:
            retry = readahead.async_mmap_readahead(f, flags, pgoff)
            if f.cache[pgoff].stale:  # page_not_uptodate: read it, then retry
                f.cache[pgoff].stale = False
                retry = True
        else:
            readahead.sync_mmap_readahead(f, flags, pgoff)
            retry = True
        frame = f.get_page(pgoff)
        if retry and not write:
            self._fault_around(vma, addr)
        return frame

    def _finish_fault_disk(self, vma: Vma, page: int, pgoff: int) -> None:
        """mm/memory.c: finish_fault() of a disk file's page ``pgoff`` at ``page`` (not
        mapped yet): its whole large folio when the folio ends by EOF, fits the VMA and the
        PTE table around the fault and none of its PTEs is set (no marker either); else the
        one page."""
        f = vma.vm_file
        folio = f.folio_of(pgoff) if f.folios else None
        if folio is not None and folio[0] + folio[1] <= f.npages:
            first = page - (pgoff - folio[0])
            if first << PAGE_SHIFT >= vma.vm_start and (first + folio[1]) << PAGE_SHIFT <= vma.vm_end \
                    and pmd_start(first) == pmd_start(first + folio[1] - 1) \
                    and not any(True for _ in self.pt.frames(first, first + folio[1])) \
                    and not self.pt.has_markers_in(first, first + folio[1]):
                for i in range(folio[1]):
                    self.set_pte(first + i, f.cache[folio[0] + i])
                return
        self.set_pte(page, f.cache[pgoff])

    def _map_large_folio(self, vma: Vma, page: int) -> bool:
        """A read fault on a page of a PMD-sized large folio that ``vma`` maps whole and
        2 MiB aligned: ``do_set_pmd()`` maps it with one PMD when the PMD is empty and the VMA
        allows THPs (not VM_NOHUGEPAGE), else fault-around maps all its pages into the empty
        PTEs (6.18 maps a whole large folio that fits the VMA and the PMD). Returns whether
        it did; False leaves the ordinary fault path to run."""
        p0 = pmd_start(page)
        start = vma.file_pgoff(p0 << PAGE_SHIFT)
        f = vma.vm_file
        if f.disk and start + HPAGE_PMD_NR >= f.npages:
            return False  # filemap_map_pages(): a disk folio reaching EOF maps no PMD
        if f.folios.get(start) != HPAGE_PMD_NR or (p0 << PAGE_SHIFT) < vma.vm_start \
                or ((p0 + HPAGE_PMD_NR) << PAGE_SHIFT) > vma.vm_end:
            return False
        huge = self.pt.pmd_none(page) and not int(vma.vm_flags) & _VM_NOHUGEPAGE
        get = self.pt.get
        for i in range(HPAGE_PMD_NR):
            if get(p0 + i) is None and (huge or start + i < f.npages):
                self.set_pte(p0 + i, f.folio_page(start + i))
        if huge:
            self.pt.map_huge_pmd(p0)  # page cache folio: no table deposited
        return True

    def _handle_fault(self, vma: Vma, addr: int, write: bool, entry) -> None:
        """mm/memory.c: handle_mm_fault() for one page that needs it; ``entry`` is the page's
        current PTE (``self.pt.get(page)``). Raises FaultError."""
        page = addr >> PAGE_SHIFT
        if entry is GUARD:
            raise FaultError("SIGSEGV")  # handle_pte_marker(): VM_FAULT_SIGSEGV
        if int(vma.vm_flags) & _VM_HUGETLB:
            if entry is None:
                self._fault_hugetlb(vma, page)
            else:
                self._hugetlb_wp(vma, page)
            return
        if entry is None:
            # __handle_mm_fault() allocates the PUD and PMD tables first; they stay even
            # when the fault then fails (a read past EOF: SIGBUS)
            self.pt.alloc_pmd_table(page)
            if vma.is_anonymous():  # do_anonymous_page()
                if int(vma.vm_flags) & _VM_UFFD_MISSING:  # handle_userfault(): SIGBUS feature
                    raise FaultError("SIGBUS")
                if self._thp_eligible(vma, page):
                    self._fault_thp(vma, page, write)
                    return
                if not write:
                    self.set_pte(page, ZERO_PAGE)
                    return
                self.anon_vma_prepare(vma)
                self.set_pte(page, Frame(0, FRAME_ANON))
                return
            f = vma.vm_file
            pgoff = vma.file_pgoff(addr)
            # shmem_get_folio_gfp(): a page the file lacks goes to userfaultfd (SIGBUS feature)
            uffd_miss = bool(int(vma.vm_flags) & _VM_UFFD_MISSING) and pgoff not in f.cache
            if not write and f.folios and self._map_large_folio(vma, page):
                return
            if not write:  # do_read_fault(): fault-around first, even when addr is past EOF
                self._fault_around(vma, addr)
                if pgoff >= f.npages or uffd_miss:
                    raise FaultError("SIGBUS")
                if self.pt.get(page) is None:
                    if not f.disk:
                        self.set_pte(page, f.get_page(pgoff))
                    else:
                        self._disk_page(vma, addr, pgoff, False)
                        if self.pt.get(page) is None:  # the retry's fault-around did not map it
                            self._finish_fault_disk(vma, page, pgoff)
                return
            private = not int(vma.vm_flags) & _VM_SHARED
            if private:  # do_cow_fault() prepares the anon_vma before ->fault() can fail
                self.anon_vma_prepare(vma)
            if pgoff >= f.npages or uffd_miss:
                raise FaultError("SIGBUS")
            frame = self._disk_page(vma, addr, pgoff, True) if f.disk else f.get_page(pgoff)
            if private:
                self.set_pte(page, Frame(frame.byte, FRAME_ANON))
                return
            self.set_pte(page, frame)  # do_shared_fault()
            return
        if not write:
            return
        # do_wp_page(): the PTE is present and write-protected where a copy is due.
        if entry.kind == FRAME_ZERO and self.pt.is_huge(page):
            # do_huge_zero_wp_pmd(): a write to the huge zero page maps a zeroed THP in its
            # place (the deposited table stays); the kernel splits only when no THP can be had
            self.anon_vma_prepare(vma)
            p0 = pmd_start(page)
            for p in range(p0, p0 + HPAGE_PMD_NR):
                self.set_pte(p, Frame(0, FRAME_ANON))
        elif entry.kind == FRAME_ZERO:
            self.anon_vma_prepare(vma)
            self.set_pte(page, Frame(0, FRAME_ANON))
        elif int(vma.vm_flags) & _VM_SHARED:
            return
        elif entry.kind == FRAME_FILE or entry.mapcount > 1:  # wp_page_copy()
            if self.pt.is_file_huge(page):  # do_huge_pmd_wp_page(): split (unmap), then CoW
                self.drop_huge_block(pmd_start(page))
            else:  # a shared anonymous THP: the PMD is split, then one page copied
                self.pt.split_huge_pmd(page)
            self.anon_vma_prepare(vma)
            self.set_pte(page, Frame(entry.byte, FRAME_ANON))

    def gup_check(self, vma: Vma, write: bool, force: bool) -> bool:
        """mm/gup.c: check_vma_flags(): may GUP touch ``vma`` this way (``force``:
        FOLL_FORCE)? O(1)."""
        f = int(vma.vm_flags)
        if f & _VM_IO_PFNMAP:
            return False
        if write:
            if not f & _VM_WRITE:
                if not force or not f & _VM_MAYWRITE or f & _VM_SHARED:
                    return False
        elif not f & _VM_READ:
            if not force or not f & _VM_MAYREAD:
                return False
        return True

    def gup_page(self, vma: Vma, addr: int, write: bool) -> Frame:
        """Fault one page in for GUP (``faultin_page()`` loop) and return its frame.
        Raises FaultError (guard marker: SIGSEGV; past EOF: SIGBUS). Precondition: ``addr``
        lies in ``vma`` and ``gup_check`` allowed the access. O(1) (fault-around O(16))."""
        page = addr >> PAGE_SHIFT
        entry = self.pt.get(page)
        need = entry is None or entry is GUARD or (write and (
            entry.kind == FRAME_ZERO or (not int(vma.vm_flags) & _VM_SHARED and (
                entry.kind == FRAME_FILE or entry.mapcount > 1))))
        if need:
            self._handle_fault(vma, addr, write, entry)
            entry = self.pt.get(page)
        elif write and entry.lazyfree:  # a write dirties the page: reclaim keeps it now
            self._redirty(page)
        if write and entry.kind == FRAME_FILE:
            entry.dirty = True  # a shared file page written: reclaim keeps it (no writeback)
        return entry

    def _redirty(self, page: int) -> None:
        """A write to a lazyfree page: its folio is dirty again, so reclaim keeps it (the
        whole THP when a huge PMD maps it). O(1), or O(HPAGE_PMD_NR) for a THP."""
        if self.pt.is_huge(page):
            p0 = pmd_start(page)
            for _, entry in self.pt.frames(p0, p0 + HPAGE_PMD_NR):
                entry.lazyfree = False
        else:
            self.pt.get(page).lazyfree = False

    def access(self, addr: int, write: bool = False, value: int = 1) -> int | None:
        """A CPU load/store of one byte at ``addr`` (x86 semantics). Returns the byte read
        (None for a store). Raises SegFault (SEGV_MAPERR no VMA or guard, SEGV_ACCERR
        permission) or SegFault(signal="SIGBUS") beyond EOF. O(log n)."""
        vma = self.tree.find(addr)
        if vma is None or vma.is_guard_entry:  # tree design T4: no VMA there
            raise SegFault(addr, abi.SEGV_MAPERR)
        # arch/x86/mm/fault.c: access_error(): a read needs any of r/w/x, a write needs w.
        f = int(vma.vm_flags)
        if (write and not f & _VM_WRITE) or not f & _VM_ACCESS_FLAGS:
            raise SegFault(addr, abi.SEGV_ACCERR)
        try:
            frame = self.gup_page(vma, addr, write)
        except FaultError as exc:
            raise SegFault(addr, abi.SEGV_MAPERR if exc.kind == "SIGSEGV" else 0, exc.kind) from None
        if write:
            frame.byte = value
            return None
        return frame.byte

    def touch(self, addr: int, write: bool, value: int = 1) -> int | None:
        """One byte through ``process_vm_readv``/``writev`` on self (GUP without FOLL_FORCE).
        Returns the byte (read) or None (write); raises OSError(EFAULT) where it fails. O(log n)."""
        vma = self.tree.find(addr)
        if vma is None or vma.is_guard_entry or not self.gup_check(vma, write, force=False):
            raise kerr(errno.EFAULT, "process_vm_rw: bad address")
        try:
            frame = self.gup_page(vma, addr, write)
        except FaultError:
            raise kerr(errno.EFAULT, "process_vm_rw: fault") from None
        if write:
            frame.byte = value
            return None
        return frame.byte

    def populate_vma_range(self, vma: Vma, start: int, end: int) -> None:
        """mm/gup.c: populate_vma_page_range(): fault in ``[start, end)`` of one VMA.
        Raises OSError(EFAULT) at the first page GUP cannot fault in. Precondition:
        ``[start, end)`` lies in ``vma``, page aligned. O(pages)."""
        if vma.vm_flags & VmFlag.LOCKONFAULT:
            return
        write = (vma.vm_flags & (VmFlag.WRITE | VmFlag.SHARED)) == VmFlag.WRITE
        force = vma.is_accessible()
        if not self.gup_check(vma, write, force):
            raise kerr(errno.EFAULT, "populate: vma flags")
        for addr in range(start, end, PAGE_SIZE):
            try:
                self.gup_page(vma, addr, write)
            except FaultError:
                raise kerr(errno.EFAULT, "populate: fault") from None

    def mm_populate(self, start: int, length: int, ignore_errors: bool) -> None:
        """mm/gup.c: __mm_populate(): populate every VMA of ``[start, start + length)``
        (guard entries and VM_IO/PFNMAP skipped). Raises the first error unless
        ``ignore_errors``. O(k log n + pages)."""
        end = start + length
        for vma in self.tree.overlapping(start, end):
            if vma.vm_flags & (VmFlag.IO | VmFlag.PFNMAP) or vma.is_guard_entry:
                continue
            try:
                self.populate_vma_range(vma, max(start, vma.vm_start), min(end, vma.vm_end))
            except OSError:
                if not ignore_errors:
                    raise

def _anon_vma_compatible(a: Vma, b: Vma) -> bool:
    """mm/rmap.c: anon_vma_compatible(): may ``a`` and ``b`` (a below b) share an anon_vma?
    Flags may differ in access bits and the sticky ones (measured: a ``gu`` neighbour lends)."""
    return (a.vm_end == b.vm_start and a.vm_file is b.vm_file
            and not ((a.vm_flags ^ b.vm_flags) & ~(VM_ACCESS_FLAGS | VM_IGNORE_MERGE))
            and b.vm_pgoff == a.vm_pgoff + a.npages)
