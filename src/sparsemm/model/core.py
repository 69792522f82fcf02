"""MmCore: the state an address space's parts share, and the contract between those parts.

Owns the fields of ``AddressSpace`` (VMA tree, page table, guard design, limits, RSS
counters, mapped files) and the primitives every syscall module uses: PTE updates with
exact counters (``set_pte``/``clear_pte``), zaps and unmaps (``zap_range``/``unmap_range``)
and placement (``get_unmapped_area``). What one part provides to another is declared here
as an abstract method, so each mixin and each guard design states what it needs from
``AddressSpace`` by naming this class. Pure Python: no OS calls.
"""

from __future__ import annotations

import abc
import errno
from typing import TYPE_CHECKING, Callable

from sparsemm.abi import PAGE_MASK, PAGE_SHIFT, TASK_SIZE, VmFlag, page_align
from sparsemm.model._flags import _VM_SEALED
from sparsemm.model._util import FaultError, kerr
from sparsemm.model.frames import FRAME_ANON, FRAME_FILE, Frame, MemFile
from sparsemm.model.merge import split_vma
from sparsemm.model.pagetable import GUARD, HPAGE_PMD_NR, PageTable, pmd_start
from sparsemm.model.vma import Vma
from sparsemm.model.vma_tree import VmaTree

if TYPE_CHECKING:
    from sparsemm.model.designs import GuardDesign

__all__ = ["MmCore", "MMAP_MIN_ADDR"]

#: The default of the kernel's ``mmap_min_addr`` (security/min_addr.c: the larger of the
#: ``vm.mmap_min_addr`` sysctl and CONFIG_LSM_MMAP_MIN_ADDR): placement never goes below it,
#: and an address space made without the machine's values also refuses MAP_FIXED there.
MMAP_MIN_ADDR = 0x10000
HPAGE_SHIFT = 21  # a hugetlb page (and a PMD THP): 2 MiB
#: split_vma()'s limit where the caller has checked max_map_count itself (munmap).
_NO_LIMIT = 1 << 62


class MmCore(abc.ABC):
    """The base of ``AddressSpace`` and of each of its mixins (``FaultMixin``,
    ``MadviseMixin``, ``MremapMixin``, ``FileOpsMixin``).

    Fields, shared by every part:

    - ``tree``: the ``VmaTree`` (``mm->mm_mt``): VMAs and the ``tree`` design's guard entries;
    - ``pt``: the ``PageTable``: frames, guard markers, huge PMDs, table pages;
    - ``design``: the ``GuardDesign`` whose hooks the guard advice, munmap and mprotect call;
    - ``max_map_count`` (``vm.max_map_count``), ``mmap_base`` (top of top-down placement);
    - ``mmap_min_addr`` (the kernel's ``mmap_min_addr``: the floor of placement and of an mmap
      hint), ``dac_mmap_min_addr`` (the ``vm.mmap_min_addr`` sysctl: below it a mapping needs
      ``cap_sys_rawio``, ``cap_mmap_addr()``), ``cap_sys_rawio`` (the caller holds
      CAP_SYS_RAWIO);
    - ``commit_limit``: the pages the overcommit heuristic lets one call commit
      (``vm.overcommit_memory = 0``: total RAM plus swap), None for no limit;
    - ``rss_anon``/``rss_file``: present PTEs of anon and of page-cache pages (the zero page
      counts in neither, as in the kernel); changed only by ``set_pte``/``clear_pte``;
    - ``files``: the ``MemFile`` objects some VMA maps or mapped; ``exited``: after ``exit()``;
    - ``hugetlb_pool``: ``[free huge pages]``, one list shared by a process and its fork
      children (the machine's pool), taken by a hugetlb mmap's reservation, returned by munmap.

    The primitives below are public to the model (its modules and guard designs call them)
    but not part of the syscall API; each states its preconditions. The abstract methods
    are the contract: what one part provides to the others, implemented by the module named.
    """

    __slots__ = ("tree", "pt", "design", "max_map_count", "mmap_base", "commit_limit",
                 "rss_anon", "rss_file", "files", "exited", "hugetlb_pool", "mmap_min_addr",
                 "dac_mmap_min_addr", "cap_sys_rawio")

    tree: VmaTree
    pt: PageTable
    design: "GuardDesign"
    max_map_count: int
    mmap_base: int
    commit_limit: int | None
    rss_anon: int
    rss_file: int
    files: set[MemFile]
    exited: bool
    hugetlb_pool: list[int]
    mmap_min_addr: int
    dac_mmap_min_addr: int
    cap_sys_rawio: bool

    def _init_core(self, design: "GuardDesign", max_map_count: int, mmap_base: int,
                   commit_limit: int | None = None, mmap_min_addr: int = MMAP_MIN_ADDR,
                   dac_mmap_min_addr: int | None = None, cap_sys_rawio: bool = False) -> None:
        if dac_mmap_min_addr is None:
            dac_mmap_min_addr = mmap_min_addr
        if not 0 <= dac_mmap_min_addr <= mmap_min_addr < TASK_SIZE:
            raise ValueError("need 0 <= dac_mmap_min_addr <= mmap_min_addr < TASK_SIZE")
        self.design = design
        self.mmap_min_addr = mmap_min_addr
        self.dac_mmap_min_addr = dac_mmap_min_addr
        self.cap_sys_rawio = cap_sys_rawio
        self.tree = VmaTree(mmap_min_addr=page_align(mmap_min_addr))
        self.pt = PageTable()
        self.max_map_count = max_map_count
        self.mmap_base = mmap_base
        self.commit_limit = commit_limit
        self.rss_anon = 0
        self.rss_file = 0
        self.files = set()
        self.exited = False
        self.hugetlb_pool = [0]  # free 2 MiB huge pages (nr_hugepages), shared with fork children

    @property
    def map_count(self) -> int:
        """``mm->map_count``: VMAs, without the ``tree`` design's guard entries. O(1)."""
        return len(self.tree)

    # -- PTEs: every change goes through these two, so counters and mapcounts stay exact -------

    def set_pte(self, page: int, entry) -> None:
        """Install ``entry`` (a ``Frame`` or ``GUARD``) at ``page``, dropping what was there.
        Precondition: ``page`` lies inside a VMA (not a guard entry). O(1), plus O(log r)
        while markers exist (``PageTable.set``)."""
        old = self.pt.set(page, entry)
        if old is not None:
            self._drop_entry(old)
        if entry is not GUARD:
            if entry.kind == FRAME_FILE:
                self.rss_file += 1
                entry.mapcount += 1
            elif entry.kind == FRAME_ANON:
                self.rss_anon += 1
                entry.mapcount += 1

    def clear_pte(self, page: int):
        """Clear ``page`` and return what it held (a ``Frame``, ``GUARD`` or None). O(1),
        plus O(log r) for a marker."""
        entry = self.pt.clear(page)
        if entry is not None:
            self._drop_entry(entry)
        return entry

    def _drop_entry(self, entry) -> None:
        if entry is GUARD:
            return
        if entry.kind == FRAME_FILE:
            self.rss_file -= 1
            entry.mapcount -= 1
        elif entry.kind == FRAME_ANON:
            self.rss_anon -= 1
            entry.mapcount -= 1

    def zap_range(self, start: int, end: int, *, drop_markers: bool = False,
                  only: Callable[[Frame], bool] | None = None) -> None:
        """``zap_page_range_single()`` / ``unmap_vmas()``: clear the present PTEs of
        ``[start, end)`` (bytes). Huge PMDs the range covers in part are split first.

        Guard markers survive unless ``drop_markers`` (munmap: ZAP_FLAG_DROP_MARKER),
        which clears them run by run. ``only`` filters the present pages (e.g. file
        pages of one MemFile). Tables stay. Precondition: ``start``/``end`` page aligned.
        O(PageTable.frames() + frames cleared + marker runs dropped + huge PMDs in range).
        """
        pt = self.pt
        first, last = start >> PAGE_SHIFT, end >> PAGE_SHIFT
        self.split_huge_range(first, last)
        for page, entry in pt.frames(first, last):
            if only is None or only(entry):
                pt.clear(page)
                self._drop_entry(entry)
        if drop_markers:
            pt.remove_markers(first, last)
        pt.zap_huge_pmds(first, last)

    def split_huge_range(self, first: int, end: int) -> None:
        """``split_huge_pmd()`` of every huge PMD that pages ``[first, end)`` cover only in
        part: an anonymous THP keeps its pages under its deposited table; a page-cache large
        folio mapped by the PMD is unmapped whole (``__split_huge_pmd_locked()`` on a file
        VMA only clears the PMD; a later fault maps it again). O(1) plus 512 per dropped block."""
        for p0 in (pmd_start(first), pmd_start(end - 1)) if end > first else ():
            if self.pt.is_file_huge(p0) and not (first <= p0 and p0 + HPAGE_PMD_NR <= end):
                self.drop_huge_block(p0)
        self.pt.split_huge_range(first, end)

    def drop_huge_block(self, p0: int) -> None:
        """Unmap the whole block of the huge PMD at page ``p0`` (entries and the PMD), leaving
        no PTE table: a file PMD split or zap. O(HPAGE_PMD_NR)."""
        for page, _ in self.pt.frames(p0, p0 + HPAGE_PMD_NR):
            self.clear_pte(page)
        self.pt.forget_huge_pmd(p0)

    # -- the hugetlb pool: hugetlb_pool[0] is free minus reserved huge pages ------

    def hugetlb_alloc(self, vma: Vma, idx: int) -> None:
        """alloc_hugetlb_folio() for huge page ``idx`` of ``vma``'s hugetlbfs file: its
        reservation when this address space holds it (the file's, shared; the owner's,
        private), else a free page nobody reserved. FaultError(SIGBUS) when there is none
        (a fork child of a private mapping, MAP_NORESERVE, a page refaulted after
        MADV_DONTNEED, a copy-on-write). O(1)."""
        f = vma.vm_file
        if idx in f.hugetlb_resv and (vma.vm_flags & VmFlag.SHARED or f.hugetlb_owner is self):
            f.hugetlb_resv.discard(idx)
            return
        if self.hugetlb_pool[0] < 1:
            raise FaultError("SIGBUS")
        self.hugetlb_pool[0] -= 1

    def hugetlb_free_pages(self, start: int, end: int) -> None:
        """Before ``[start, end)`` of a private hugetlb VMA is zapped: the huge pages mapped
        only here are freed to the pool. O(pages mapped in range)."""
        for page, entry in self.pt.frames(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
            if page == pmd_start(page) and entry.kind == FRAME_ANON and entry.mapcount == 1:
                self.hugetlb_pool[0] += 1

    def hugetlb_zap_private(self, vma: Vma, start: int, end: int) -> None:
        """Before MADV_DONTNEED zaps ``[start, end)`` of a private hugetlb VMA: the owner's
        pages get their reservations back (``__unmap_hugepage_range()`` restores them while
        the pool has no surplus pages: measured, the pool count stays), a fork child's pages
        mapped only there are freed. O(pages mapped in range)."""
        f = vma.vm_file
        for page, entry in self.pt.frames(start >> PAGE_SHIFT, end >> PAGE_SHIFT):
            if page != pmd_start(page) or entry.kind != FRAME_ANON:
                continue
            if f.hugetlb_owner is self:
                f.hugetlb_resv.add(vma.file_pgoff(page << PAGE_SHIFT) // HPAGE_PMD_NR)
            elif entry.mapcount == 1:
                self.hugetlb_pool[0] += 1

    def hugetlb_release(self, f: MemFile) -> None:
        """After VMAs of hugetlbfs file ``f`` left this address space: a private mapping's
        owner gives back the reservations of the pages no VMA of it maps any more
        (hugetlb_vm_op_close(); a move keeps them, its new VMA maps them); a shared file
        keeps its reservations and pages until no VMA of it is left anywhere, then gives
        back both (the inode's eviction). O(n) VMAs of each address space mapping it."""
        span = HPAGE_PMD_NR
        if f.hugetlb_owner is not None:
            if f.hugetlb_owner is not self or not f.hugetlb_resv:
                return
            mapped: set[int] = set()
            if not self.exited:
                for v in self.tree:
                    if v.vm_file is f:
                        mapped.update(range(v.vm_pgoff // span, (v.vm_pgoff + v.npages) // span))
            gone = [i for i in f.hugetlb_resv if i not in mapped]
            f.hugetlb_resv.difference_update(gone)
            self.hugetlb_pool[0] += len(gone)
            return
        for mm in f.users:
            if not mm.exited and any(v.vm_file is f for v in mm.tree):
                return
        pages = sum(1 for pgoff in f.cache if pgoff % span == 0)
        self.hugetlb_pool[0] += len(f.hugetlb_resv) + pages
        f.hugetlb_resv.clear()
        f.cache.clear()

    def unmap_range(self, start: int, end: int) -> None:
        """mm/vma.c: do_vmi_align_munmap(): split at the edges, detach, zap (dropping guard
        markers), free the page tables no longer spanned; tells the design (``on_unmap``).
        ENOMEM (OSError) when a split would pass ``max_map_count``; nothing changed then.
        EPERM when a VMA of the range is sealed (``mseal``): only the split at ``start`` is
        done then, if the first VMA is not the sealed one.
        Precondition: ``start < end``, both page aligned. O(k log n + zap)."""
        vmas = self.tree.overlapping(start, end)
        if not vmas:
            return
        first, last = vmas[0], vmas[-1]
        sealed = any(int(v.vm_flags) & _VM_SEALED for v in vmas)
        if first.vm_start < start:
            if end < first.vm_end and len(self.tree) >= self.max_map_count:
                raise kerr(errno.ENOMEM, "munmap: split over max_map_count")
            if int(first.vm_flags) & _VM_SEALED:
                raise kerr(errno.EPERM, "munmap: sealed vma")
            if sealed:  # vms_gather_munmap_vmas(): the first split stays when a later VMA is sealed
                split_vma(self.tree, first, start, _NO_LIMIT)  # left split, as the kernel does
                raise kerr(errno.EPERM, "munmap: sealed vma")
            self.design.on_unmap(start, end)
            upper = split_vma(self.tree, first, start, _NO_LIMIT)
            if first is last:
                last = upper
            vmas[0] = upper
        elif sealed:
            raise kerr(errno.EPERM, "munmap: sealed vma")
        else:
            self.design.on_unmap(start, end)
        if last.vm_end > end:
            split_vma(self.tree, last, end, _NO_LIMIT)
        self.split_huge_range(start >> PAGE_SHIFT, end >> PAGE_SHIFT)
        hugetlb_files = []
        for vma in vmas:
            self.tree.remove(vma)
            if vma.vm_flags & VmFlag.HUGETLB:
                self.hugetlb_free_pages(vma.vm_start, vma.vm_end)
                hugetlb_files.append(vma.vm_file)
        self.zap_range(start, end, drop_markers=True)
        for f in hugetlb_files:  # hugetlb_vm_op_close(): reservations no VMA maps go back
            self.hugetlb_release(f)
        nxt, prev = self.tree.find_vma_prev(start)  # prev: the last VMA if nothing above
        floor = prev.vm_end if prev is not None else 0
        ceiling = nxt.vm_start if nxt is not None else 0
        self.pt.free_pgtables(start, end, floor, ceiling)

    def do_munmap(self, start: int, length: int) -> None:
        """mm/vma.c: do_vmi_munmap(): the argument checks of every munmap path (the syscall,
        mremap's shrink and its MREMAP_FIXED target), then ``unmap_range``. EINVAL (OSError)
        for an unaligned ``start``, a range past TASK_SIZE or an empty one. O(unmap_range)."""
        if start & ~PAGE_MASK or start > TASK_SIZE or length > TASK_SIZE - start:
            raise kerr(errno.EINVAL, "munmap: bad range")
        end = start + page_align(length)
        if end == start:
            raise kerr(errno.EINVAL, "munmap: zero length")
        self.unmap_range(start, end)

    def vm_enough_memory(self, npages: int) -> None:
        """mm/util.c: __vm_enough_memory() in the heuristic mode (``OVERCOMMIT_GUESS``): one
        call may not commit more pages than RAM plus swap; ENOMEM (OSError) if it would. The
        heuristic keeps no running total, so nothing is recorded. O(1)."""
        if self.commit_limit is not None and npages > self.commit_limit:
            raise kerr(errno.ENOMEM, "overcommit: more than RAM plus swap")

    def get_unmapped_area(self, hint: int, length: int) -> int:
        """x86 arch_get_unmapped_area_topdown(): ``hint`` (page aligned up) if that range is
        free (x86 checks no floor here: mmap rounds its hint up to ``mmap_min_addr`` first,
        ``round_hint_to_min``; an mremap hint may lie below it), else the highest free range
        between ``mmap_min_addr`` and ``mmap_base``; ENOMEM (OSError) if none; then
        ``security_mmap_addr``. Precondition: ``length`` a positive page multiple.
        Amortised O(log n)."""
        found = None
        if hint:
            hint = page_align(hint)
            if TASK_SIZE - length >= hint and not self.tree.overlapping(hint, hint + length):
                found = hint
        if found is None:
            found = self.tree.unmapped_area_topdown(length, self.mmap_min_addr, self.mmap_base)
        if found is None:
            raise kerr(errno.ENOMEM, "no free address range")
        self.security_mmap_addr(found)
        return found

    def round_hint_to_min(self, hint: int) -> int:
        """mm/mmap.c: round_hint_to_min(): an mmap hint (page aligned down) below
        ``mmap_min_addr`` but not 0 becomes ``mmap_min_addr`` (page aligned up). O(1)."""
        hint &= PAGE_MASK
        if hint and hint < self.mmap_min_addr:
            return page_align(self.mmap_min_addr)
        return hint

    def security_mmap_addr(self, addr: int) -> None:
        """security/commoncap.c: cap_mmap_addr(): a mapping below ``dac_mmap_min_addr`` (the
        ``vm.mmap_min_addr`` sysctl) needs CAP_SYS_RAWIO, else EPERM. (SELinux's own check at
        CONFIG_LSM_MMAP_MIN_ADDR is not modelled: docs/divergences.md.) O(1)."""
        if addr < self.dac_mmap_min_addr and not self.cap_sys_rawio:
            raise kerr(errno.EPERM, "below vm.mmap_min_addr without CAP_SYS_RAWIO")

    # -- the contract: what each part provides to the others -----------------------------------

    @abc.abstractmethod
    def anon_vma_prepare(self, vma: Vma) -> None:
        """Give ``vma`` an anon_vma if it has none (``fault.py``; used by madvise, designs)."""

    @abc.abstractmethod
    def gup_check(self, vma: Vma, write: bool, force: bool) -> bool:
        """May GUP touch ``vma`` this way? (``fault.py``; used by madvise populate)."""

    @abc.abstractmethod
    def gup_page(self, vma: Vma, addr: int, write: bool) -> Frame:
        """Fault in one page for GUP and return its frame (``fault.py``; used by madvise)."""

    @abc.abstractmethod
    def populate_vma_range(self, vma: Vma, start: int, end: int) -> None:
        """Fault in ``[start, end)`` of one VMA (``fault.py``; used by mprotect)."""

    @abc.abstractmethod
    def mm_populate(self, start: int, length: int, ignore_errors: bool) -> None:
        """``__mm_populate()`` (``fault.py``; used by mmap, mlock, mremap)."""

    @abc.abstractmethod
    def mprotect(self, addr: int, length: int, prot: int) -> None:
        """The mprotect syscall (``mm.py``; used by the ``vma`` guard design)."""

    @abc.abstractmethod
    def _unmap_file_pages(self, file: MemFile, first: int, last: int, victims: set | None,
                          even_cows: bool = False) -> None:
        """``unmap_mapping_range()`` of file pages ``first..last`` in this mm (``fileops.py``;
        used by madvise's collapse, which unmaps the small pages a new folio replaces)."""

    @abc.abstractmethod
    def punch_hole(self, file: MemFile, offset: int, length: int) -> None:
        """shmem hole punch (``fileops.py``; used by MADV_REMOVE)."""
