"""AddressSpace: the model's ``struct mm_struct`` and the syscalls that map and unmap.

Owns the syscall surface: mmap, munmap, mprotect, mlock, fork, exit, ``counts()`` and
``check()``; the shared state and primitives are ``core.MmCore``'s, faults live in
``fault``, madvise in ``madvise``, mremap in ``mremap``, file operations in ``fileops``,
guard advice in the design (``designs``), userfaultfd in ``uffd``. Pure Python: no OS calls.
"""

from __future__ import annotations

import errno

from sparsemm import abi
from sparsemm._invariant import InvariantError
from sparsemm.abi import PAGE_SHIFT, TASK_SIZE, ULONG_MAX, MapFlag, VmFlag
from sparsemm.model._util import SegFault, kerr
from sparsemm.model.core import MMAP_MIN_ADDR, MmCore
from sparsemm.model.designs import kernel_design, make_design
from sparsemm.model.fault import FaultMixin
from sparsemm.model.fileops import FileOpsMixin
from sparsemm.model.frames import FRAME_ANON, FRAME_FILE, MemFile
from sparsemm.model.madvise import MadviseMixin
from sparsemm.model.merge import VMA_MERGE_SUCCESS, MergeState, merge_new_range, vma_modify_flags
from sparsemm.model.mremap import MremapMixin
from sparsemm.model.uffd import VM_UFFD_FLAGS, UffdMixin
from sparsemm.model.pagetable import PAGE_LIMIT, PMD_SHIFT, PTE_SHIFT, PUD_SHIFT, pmd_start
from sparsemm.model.vma import VM_LOCKED_MASK, VM_SPECIAL, AnonVma, Vma
from sparsemm.model._flags import (_VM_ACCESS_FLAGS, _VM_ACCOUNT, _VM_GROWSDOWN, _VM_HUGETLB, _VM_LOCKED,
                                    _VM_MAY_RWX, _VM_MAYSHARE, _VM_MAYWRITE, _VM_NOHUGEPAGE, _VM_NORESERVE,
                                    _VM_SEALED, _VM_SHARED, _VM_WRITE)

__all__ = ["AddressSpace", "SegFault", "DEFAULT_MMAP_BASE"]

DEFAULT_MMAP_BASE = 0x7F00_0000_0000

#: include/linux/mman.h: LEGACY_MAP_MASK, the flags MAP_SHARED_VALIDATE accepts (shmem adds none).
_LEGACY_MAP_MASK = (MapFlag.SHARED | MapFlag.PRIVATE | MapFlag.FIXED | MapFlag.ANONYMOUS
                    | MapFlag.DENYWRITE | MapFlag.EXECUTABLE | MapFlag.UNINITIALIZED
                    | MapFlag.GROWSDOWN | MapFlag.LOCKED | MapFlag.NORESERVE | MapFlag.POPULATE
                    | MapFlag.NONBLOCK | MapFlag.STACK | MapFlag.HUGETLB
                    | 0x40 | (21 << 26) | (30 << 26))  # MAP_32BIT, MAP_HUGE_2MB, MAP_HUGE_1GB

# Plain-int MAP_ bits for mmap (the VM_ ones are in model._flags): an IntFlag operand sends
# every `&`/`|` through enum's Python-level operators, which dominated the profiles.
_MAP_SHARED, _MAP_PRIVATE, _MAP_SHARED_VALIDATE = int(MapFlag.SHARED), int(MapFlag.PRIVATE), int(MapFlag.SHARED_VALIDATE)
_MAP_FIXED, _MAP_FIXED_NOREPLACE = int(MapFlag.FIXED), int(MapFlag.FIXED_NOREPLACE)
_MAP_ANONYMOUS, _MAP_GROWSDOWN, _MAP_LOCKED = int(MapFlag.ANONYMOUS), int(MapFlag.GROWSDOWN), int(MapFlag.LOCKED)
_MAP_NORESERVE, _MAP_POPULATE = int(MapFlag.NORESERVE), int(MapFlag.POPULATE)
_MAP_NONBLOCK, _MAP_STACK, _MAP_DROPPABLE = int(MapFlag.NONBLOCK), int(MapFlag.STACK), int(MapFlag.DROPPABLE)
_MAP_TYPE = 0x0F  # include/uapi/linux/mman.h
_MAP_HUGETLB = int(MapFlag.HUGETLB)
_HPAGE = 1 << 21  # a hugetlb page, bytes
_MAP_HUGE_SHIFT = 26  # MAP_HUGE_2MB = 21 << 26: a huge page size as its log2
#: What MAP_DROPPABLE adds (mm/mmap.c: do_mmap()).
_DROPPABLE_FLAGS = int(VmFlag.DROPPABLE | VmFlag.WIPEONFORK | VmFlag.DONTDUMP | VmFlag.NORESERVE)
_NOT_LEGACY_MAP_MASK = ~int(_LEGACY_MAP_MASK)
_PROT_RWX = abi.PROT_READ | abi.PROT_WRITE | abi.PROT_EXEC


class AddressSpace(FaultMixin, MadviseMixin, MremapMixin, FileOpsMixin, UffdMixin, MmCore):
    """One process's memory map (``mm_struct``): VMAs, page tables, counters (``MmCore``).

    ``guard_design`` names what MADV_GUARD_INSTALL/REMOVE do: one of
    ``designs.names()`` (``vma``, ``pte``, ``tree`` built in), default the kernel's own
    (``designs.kernel_design()``, ``pte``). ``max_map_count`` is vm.max_map_count;
    ``mmap_base`` the top of the top-down mmap area for non-fixed placement;
    ``commit_limit`` the overcommit heuristic's limit in pages (RAM plus swap; None: none).
    ``mmap_min_addr`` is the kernel's floor for placement (the larger of the
    ``vm.mmap_min_addr`` sysctl and CONFIG_LSM_MMAP_MIN_ADDR), ``dac_mmap_min_addr`` the
    sysctl (default: ``mmap_min_addr``), below which a mapping needs ``cap_sys_rawio``
    (CAP_SYS_RAWIO; default: without it). ValueError unless ``dac_mmap_min_addr <=
    mmap_min_addr``.

    The syscall methods take arguments as the kernel does (unsigned 64-bit lengths and
    addresses) and have no preconditions: a call the kernel refuses raises ``OSError``
    with its errno and changes what the kernel would have changed before failing.
    """

    __slots__ = ()

    def __init__(self, guard_design: str | None = None, max_map_count: int = abi.DEFAULT_MAX_MAP_COUNT,
                 mmap_base: int = DEFAULT_MMAP_BASE, commit_limit: int | None = None,
                 mmap_min_addr: int = MMAP_MIN_ADDR, dac_mmap_min_addr: int | None = None,
                 cap_sys_rawio: bool = False):
        """A fresh, empty address space. ValueError for an unknown ``guard_design``. O(1)."""
        design = make_design(kernel_design() if guard_design is None else guard_design)
        self._init_core(design, max_map_count, mmap_base, commit_limit, mmap_min_addr,
                        dac_mmap_min_addr, cap_sys_rawio)

    # ------------------------------------------------------------------ basics

    @property
    def guard_design(self) -> str:
        """The name of this mm's guard design. O(1)."""
        return self.design.name

    def __iter__(self):
        """The VMAs in address order (guard entries of the ``tree`` design are not VMAs)."""
        if not self.tree.reserved_count:
            return iter(self.tree)
        return (v for v in self.tree if not v.is_guard_entry)

    def find_vma(self, addr: int) -> Vma | None:
        """The VMA containing ``addr`` or None (``vma_lookup()``). O(log n)."""
        return self.tree.find(addr)

    def set_guard_design(self, name: str) -> None:
        """Make ``name`` this mm's guard design from now on. Sound only before any guard
        advice ran: until then every design holds no state and behaves alike (see
        ``opscript.designs.design_free_prefix``). ValueError for an unknown name, or when
        the current design holds guards (markers, entries, saved protections). O(1)."""
        design = make_design(name)
        if self.design.has_state(self):
            raise ValueError("set_guard_design: guards already exist under the current design")
        self.design = design

    # ------------------------------------------------------------------ mmap

    def mmap(self, addr: int, length: int, prot: int, flags: int, file: MemFile | None = None,
             offset: int = 0, readonly: bool = False) -> int:
        """mm/mmap.c: do_mmap() + mm/vma.c: mmap_region(): map ``length`` bytes of ``file``
        from ``offset`` (anonymous without ``file`` or with MAP_ANONYMOUS) with ``prot``
        and ``flags`` (PROT_/MAP_ bits); returns the address. ``readonly``: ``file`` is
        open without FMODE_WRITE. O(k log n), plus the populate of MAP_POPULATE/MAP_LOCKED."""
        if offset & ~abi.PAGE_MASK:  # arch/x86/kernel/sys_x86_64.c: sys_mmap()
            raise kerr(errno.EINVAL, "mmap: unaligned offset")
        flags = int(flags)  # plain int bits below (see _MAP_*)
        if flags & _MAP_ANONYMOUS:
            file = None
        elif file is None:
            raise kerr(errno.EBADF, "mmap: no file")
        elif flags & _MAP_HUGETLB:  # ksys_mmap_pgoff(): only hugetlbfs files take it
            raise kerr(errno.EINVAL, "mmap: MAP_HUGETLB on a file that is not hugetlbfs")
        if file is None and flags & _MAP_HUGETLB:
            return self._mmap_hugetlb(addr, length, prot, flags)
        pgoff = offset >> PAGE_SHIFT
        if not length:
            raise kerr(errno.EINVAL, "mmap: zero length")
        length = abi.page_align(length) & ULONG_MAX
        if not length or length > TASK_SIZE:
            raise kerr(errno.ENOMEM, "mmap: length")
        if self.map_count > self.max_map_count:
            raise kerr(errno.ENOMEM, "mmap: max_map_count")
        if flags & _MAP_FIXED_NOREPLACE:
            flags |= _MAP_FIXED
        vm_flags = (prot & _PROT_RWX) | _VM_MAY_RWX  # calc_vm_prot_bits() | VM_MAY*
        if flags & _MAP_GROWSDOWN:
            vm_flags |= _VM_GROWSDOWN
        if flags & _MAP_LOCKED:
            vm_flags |= _VM_LOCKED
        if flags & _MAP_STACK:  # calc_vm_flag_bits(): no THP for a stack
            vm_flags |= _VM_NOHUGEPAGE
        # get_unmapped_area()
        if flags & _MAP_FIXED:
            if addr > TASK_SIZE - length:
                raise kerr(errno.ENOMEM, "mmap: beyond TASK_SIZE")
            if addr & ~abi.PAGE_MASK:
                raise kerr(errno.EINVAL, "mmap: unaligned fixed address")
            self.security_mmap_addr(addr)
        else:
            addr = self.get_unmapped_area(self.round_hint_to_min(addr), length)
        if flags & _MAP_FIXED_NOREPLACE and self.tree.overlapping(addr, addr + length):
            raise kerr(errno.EEXIST, "mmap: MAP_FIXED_NOREPLACE over a mapping")
        if file is not None and (length > abi.MAX_LFS_FILESIZE  # file_mmap_ok()
                                 or pgoff > (abi.MAX_LFS_FILESIZE - length) >> PAGE_SHIFT):
            raise kerr(errno.EOVERFLOW, "mmap: offset + length past the maximum file size")
        map_type = flags & _MAP_TYPE
        if file is not None:
            if map_type == _MAP_SHARED_VALIDATE and flags & _NOT_LEGACY_MAP_MASK:
                raise kerr(errno.EOPNOTSUPP, "mmap: unknown flag with MAP_SHARED_VALIDATE")
            if map_type == _MAP_SHARED or map_type == _MAP_SHARED_VALIDATE:
                if readonly and prot & abi.PROT_WRITE:
                    raise kerr(errno.EACCES, "mmap: writable shared mapping of a read-only file")
                vm_flags |= _VM_SHARED | _VM_MAYSHARE
                if readonly:  # no VM_MAYWRITE, and no VM_SHARED: maps still says 's'
                    vm_flags &= ~(_VM_MAYWRITE | _VM_SHARED)
            elif map_type != _MAP_PRIVATE:
                raise kerr(errno.EINVAL, "mmap: neither shared nor private")
            if vm_flags & _VM_GROWSDOWN:
                raise kerr(errno.EINVAL, "mmap: growsdown file mapping")
        else:
            if map_type == _MAP_SHARED:
                if vm_flags & _VM_GROWSDOWN:
                    raise kerr(errno.EINVAL, "mmap: shared growsdown")
                pgoff = 0
                vm_flags |= _VM_SHARED | _VM_MAYSHARE
            elif map_type == _MAP_DROPPABLE:
                if flags & _MAP_LOCKED or vm_flags & _VM_GROWSDOWN:
                    raise kerr(errno.EINVAL, "mmap: droppable and locked or growsdown")
                vm_flags |= _DROPPABLE_FLAGS
                pgoff = addr >> PAGE_SHIFT
            elif map_type == _MAP_PRIVATE:
                pgoff = addr >> PAGE_SHIFT
            else:
                raise kerr(errno.EINVAL, "mmap: neither shared nor private")
        if flags & _MAP_NORESERVE:
            vm_flags |= _VM_NORESERVE
        if file is not None and file.seals & (abi.F_SEAL_WRITE | abi.F_SEAL_FUTURE_WRITE) \
                and vm_flags & _VM_SHARED:
            # mm/memfd.c: memfd_check_seals_mmap()
            if vm_flags & _VM_WRITE:
                raise kerr(errno.EPERM, "mmap: write-sealed memfd")
            vm_flags &= ~_VM_MAYWRITE
        # mm/vma.c: __mmap_region()
        if (vm_flags & (_VM_NORESERVE | _VM_SHARED | _VM_WRITE)) == _VM_WRITE:
            vm_flags |= _VM_ACCOUNT  # accountable_mapping()
            # __mmap_setup(): charge the pages not already charged to the VMAs it replaces
            replaced = 0 if flags & _MAP_FIXED_NOREPLACE else sum(
                (min(v.vm_end, addr + length) - max(v.vm_start, addr)) >> PAGE_SHIFT
                for v in self.tree.overlapping(addr, addr + length)
                if not v.is_guard_entry and v.vm_flags & _VM_ACCOUNT)
            self.vm_enough_memory((length >> PAGE_SHIFT) - replaced)
        elif file is None and vm_flags & _VM_SHARED and not vm_flags & _VM_NORESERVE:
            self.vm_enough_memory(length >> PAGE_SHIFT)  # shmem_zero_setup(): shmem_acct_size()
        if not flags & _MAP_FIXED_NOREPLACE:  # with it, [addr, addr+length) was found empty above
            self.unmap_range(addr, addr + length)
        nxt, prev = self.tree.find_vma_prev(addr)  # prev: the last VMA if nothing above
        vma = None
        if not (file is None and vm_flags & _VM_SHARED):
            vmg = MergeState(prev, None, nxt, addr, addr + length, pgoff, vm_flags, file, None)
            if merge_new_range(self.tree, vmg) is VMA_MERGE_SUCCESS:
                vma = vmg.target
        if vma is None:
            if file is None and vm_flags & _VM_SHARED:
                file = MemFile("dev/zero", length, fill_pattern=False, shared_anon=True)  # shmem_zero_setup()
            vma = Vma(addr, addr + length, vm_flags, pgoff, file)
            self.tree.insert(vma)
        if file is not None:
            self.use_file(file)
        # __mmap_complete() would set VM_SOFTDIRTY, which is 0 without CONFIG_MEM_SOFT_DIRTY (this kernel)
        if vm_flags & _VM_LOCKED or flags & (_MAP_POPULATE | _MAP_NONBLOCK) == _MAP_POPULATE:
            self.mm_populate(addr, length, ignore_errors=True)
        return addr

    def _mmap_hugetlb(self, addr: int, length: int, prot: int, flags: int) -> int:
        """MAP_ANONYMOUS|MAP_HUGETLB (2 MiB pages): the length rounds up to huge pages, which
        the mapping reserves from ``hugetlb_pool`` (ENOMEM when too few are free); a fixed address must be huge-page aligned (EINVAL). The VMA maps a
        new hugetlbfs file (VM_HUGETLB | VM_DONTEXPAND, never merged); faults map whole huge
        pages. The pool (``hugetlb_pool``, free minus reserved) is shared with fork children;
        the reservation is the owner's (private) or the file's (shared), none with
        MAP_NORESERVE (``MmCore.hugetlb_alloc``/``hugetlb_release``). ``MAP_HUGE_1GB`` in the flags asks for 1 GiB pages, of
        which none are ever set aside (ENOMEM, or EINVAL at an address not 1 GiB aligned);
        any other size the machine has no pages of is EINVAL. O(k log n)."""
        size_log = (flags >> _MAP_HUGE_SHIFT) & 0x3F  # ksys_mmap_pgoff(): hstate_sizelog()
        if size_log not in (0, 21, 30):
            raise kerr(errno.EINVAL, "mmap: no huge page size of that order")
        hsize = 1 << (size_log or 21)
        if not length:
            raise kerr(errno.EINVAL, "mmap: zero length")
        length = (length + hsize - 1) & ~(hsize - 1) & ULONG_MAX
        if not length or length > TASK_SIZE:
            raise kerr(errno.ENOMEM, "mmap: length")
        map_type = flags & _MAP_TYPE
        if map_type not in (_MAP_SHARED, _MAP_PRIVATE):
            raise kerr(errno.EINVAL, "mmap: neither shared nor private")
        if flags & (_MAP_FIXED | _MAP_FIXED_NOREPLACE):
            if addr > TASK_SIZE - length:
                raise kerr(errno.ENOMEM, "mmap: beyond TASK_SIZE")
            if addr & (hsize - 1):
                raise kerr(errno.EINVAL, "mmap: hugetlb address not huge-page aligned")
        else:
            addr = self.get_unmapped_area(addr, length)
        if flags & _MAP_FIXED_NOREPLACE and self.tree.overlapping(addr, addr + length):
            raise kerr(errno.EEXIST, "mmap: MAP_FIXED_NOREPLACE over a mapping")
        if flags & _MAP_GROWSDOWN:  # do_mmap(): a file mapping (hugetlbfs here) cannot grow
            raise kerr(errno.EINVAL, "mmap: growsdown hugetlb mapping")
        # mmap_region() unmaps what a MAP_FIXED mapping replaces before hugetlbfs_file_mmap()
        # reserves: a reservation that fails leaves a hole
        self.unmap_range(addr, addr + length)
        # hugetlb_reserve_pages(): every huge page of the mapping, unless MAP_NORESERVE (its
        # faults then need pages nobody reserved); 1 GiB pages: none are ever set aside
        need = 0 if flags & _MAP_NORESERVE and hsize == _HPAGE else length // hsize
        if need > (self.hugetlb_pool[0] if hsize == _HPAGE else 0):
            raise kerr(errno.ENOMEM, "mmap: too few free huge pages to reserve")
        vm_flags = ((prot & _PROT_RWX) | _VM_MAY_RWX | _VM_HUGETLB | int(VmFlag.DONTEXPAND)
                    | (_VM_SHARED | _VM_MAYSHARE if map_type == _MAP_SHARED else 0))
        # MAP_LOCKED: __mmap_complete() clears VM_LOCKED on hugetlb, but do_mmap() has
        # already asked for the populate that MAP_LOCKED implies
        if flags & _MAP_NORESERVE:
            vm_flags |= _VM_NORESERVE
        self.hugetlb_pool[0] -= need  # given back by unmap_range / exit (hugetlb_release)
        file = MemFile("hugetlb", length, fill_pattern=False)
        file.hugetlb_resv = set(range(need))
        if map_type == _MAP_PRIVATE:
            file.hugetlb_owner = self
        self.tree.insert(Vma(addr, addr + length, vm_flags, 0, file))
        self.use_file(file)
        if flags & _MAP_LOCKED or flags & (_MAP_POPULATE | _MAP_NONBLOCK) == _MAP_POPULATE:
            self.mm_populate(addr, length, ignore_errors=True)
        return addr

    def use_file(self, file: MemFile) -> None:
        """Record that this address space maps ``file`` (a VMA of it was inserted), so file
        operations reach it. Idempotent, O(1); callers that insert VMAs themselves (a map
        seeded from /proc) call it for each file VMA."""
        if file not in self.files:
            self.files.add(file)
            file.users.append(self)

    # ------------------------------------------------------------------ munmap

    def munmap(self, addr: int, length: int) -> None:
        """mm/mmap.c: __vm_munmap() / do_vmi_munmap(): unmap ``[addr, addr + length)``.
        O(k log n + t + f + log r + runs dropped)."""
        self.do_munmap(addr, length)

    # ------------------------------------------------------------------ mprotect

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        """mm/mprotect.c: do_mprotect_pkey(): set the protection of every VMA in
        ``[addr, addr + length)`` (guard entries skipped, T7); ENOMEM at a hole, after the
        VMAs before it changed. O(k log n); populating a locked range adds O(p)."""
        grows = prot & (abi.PROT_GROWSDOWN | abi.PROT_GROWSUP)
        prot &= ~grows
        if grows == abi.PROT_GROWSDOWN | abi.PROT_GROWSUP:
            raise kerr(errno.EINVAL, "mprotect: PROT_GROWSDOWN and PROT_GROWSUP")
        if addr & ~abi.PAGE_MASK:
            raise kerr(errno.EINVAL, "mprotect: unaligned")
        if not length:
            return
        length = abi.page_align(length) & ULONG_MAX
        end = (addr + length) & ULONG_MAX
        if end <= addr:
            raise kerr(errno.ENOMEM, "mprotect: wraps")
        if prot & ~(_PROT_RWX | abi.PROT_SEM):  # arch_validate_prot() (generic: PROT_SEM allowed)
            raise kerr(errno.EINVAL, "mprotect: bad prot")
        vma = self.tree.find_vma(addr)
        if vma is None or vma.vm_start >= end:
            raise kerr(errno.ENOMEM, "mprotect: no vma")
        if grows & abi.PROT_GROWSDOWN:  # from the start of the growsdown VMA
            addr = vma.vm_start
            if not int(vma.vm_flags) & _VM_GROWSDOWN:
                raise kerr(errno.EINVAL, "mprotect: PROT_GROWSDOWN on a VMA that does not grow down")
        elif vma.vm_start > addr:
            raise kerr(errno.ENOMEM, "mprotect: no vma at start")
        elif grows:  # PROT_GROWSUP: x86 has no VM_GROWSUP
            raise kerr(errno.EINVAL, "mprotect: PROT_GROWSUP")
        newprot = prot & _PROT_RWX  # calc_vm_prot_bits(), as a plain int
        self.design.on_mprotect(addr, end)
        tmp = addr
        while tmp < end:
            vma = self.tree.find_vma(tmp)
            if vma is None or vma.vm_start >= end:
                break
            if vma.vm_start > tmp or (tmp != addr and vma.vm_start != tmp):
                raise kerr(errno.ENOMEM, "mprotect: hole")
            if vma.is_guard_entry:  # tree design T7: not a hole, nothing to change
                tmp = min(vma.vm_end, end)
                continue
            newflags = newprot | (int(vma.vm_flags) & ~_VM_ACCESS_FLAGS)
            if (newflags & ~(newflags >> 4)) & _VM_ACCESS_FLAGS:
                raise kerr(errno.EACCES, "mprotect: beyond VM_MAY*")
            nend = min(vma.vm_end, end)
            tmp = self._mprotect_fixup(vma, tmp, nend, newflags).vm_end  # vma_iter_end()
        if tmp < end:
            raise kerr(errno.ENOMEM, "mprotect: hole at end")

    def _mprotect_fixup(self, vma: Vma, start: int, end: int, newflags: int) -> Vma:
        """mm/mprotect.c: mprotect_fixup(); returns the VMA now covering ``start``."""
        oldflags = int(vma.vm_flags)
        newflags = int(newflags)
        if oldflags & _VM_SEALED:  # can_modify_vma(): before the no-change case
            raise kerr(errno.EPERM, "mprotect: sealed vma")
        if newflags == oldflags:
            return vma
        if newflags & _VM_WRITE:
            if not oldflags & (_VM_ACCOUNT | _VM_WRITE | _VM_HUGETLB | _VM_SHARED | _VM_NORESERVE):
                self.vm_enough_memory((end - start) >> PAGE_SHIFT)
                newflags |= _VM_ACCOUNT
        elif oldflags & _VM_ACCOUNT and vma.is_anonymous() and vma.anon_vma is None:
            newflags &= ~_VM_ACCOUNT
        prev = self.tree.prev(vma) if start == vma.vm_start else vma
        vma = vma_modify_flags(self.tree, prev, vma, start, end, newflags, self.max_map_count)
        # change_protection(): a huge PMD the range covers in part is split (a file one unmapped)
        self.split_huge_range(start >> PAGE_SHIFT, end >> PAGE_SHIFT)
        # VM_ACCOUNT etc. already in newflags; mprotect of a locked private mapping to writable populates
        if (oldflags & (_VM_WRITE | _VM_SHARED | _VM_LOCKED)) == _VM_LOCKED \
                and newflags & _VM_WRITE:
            try:
                self.populate_vma_range(vma, start, end)
            except OSError:
                pass
        return vma

    # ------------------------------------------------------------------ mlock

    def mlock(self, addr: int, length: int, flags: int = 0) -> None:
        """mm/mlock.c: do_mlock() (mlock2 with MLOCK_ONFAULT in ``flags``): lock every VMA of
        the range (page-rounded) and populate it. O(k log n + p)."""
        if flags & ~abi.MLOCK_ONFAULT:
            raise kerr(errno.EINVAL, "mlock2: bad flags")
        lock = VmFlag.LOCKED | (VmFlag.LOCKONFAULT if flags & abi.MLOCK_ONFAULT else 0)
        length = abi.page_align(length + (addr & ~abi.PAGE_MASK)) & ULONG_MAX
        addr &= abi.PAGE_MASK
        self._apply_vma_lock_flags(addr, length, lock)
        try:
            self.mm_populate(addr, length, ignore_errors=False)
        except OSError as exc:  # __mlock_posix_error_return()
            if exc.errno == errno.EFAULT:
                raise kerr(errno.ENOMEM, "mlock: populate failed") from None
            if exc.errno == errno.ENOMEM:
                raise kerr(errno.EAGAIN, "mlock: out of memory") from None
            raise

    def munlock(self, addr: int, length: int) -> None:
        """mm/mlock.c: munlock(): clear VM_LOCKED/VM_LOCKONFAULT over the range. O(k log n)."""
        length = abi.page_align(length + (addr & ~abi.PAGE_MASK)) & ULONG_MAX
        addr &= abi.PAGE_MASK
        self._apply_vma_lock_flags(addr, length, 0)

    def _apply_vma_lock_flags(self, start: int, length: int, lock: int) -> None:
        """mm/mlock.c: apply_vma_lock_flags()."""
        end = (start + length) & ULONG_MAX
        if end < start:
            raise kerr(errno.EINVAL, "mlock: wraps")
        if end == start:
            return
        if self.tree.find(start) is None:
            raise kerr(errno.ENOMEM, "mlock: no vma at start")
        tmp = start
        while tmp < end:
            vma = self.tree.find_vma(tmp)
            if vma is None or vma.vm_start >= end:
                break
            if vma.vm_start > tmp or (tmp != start and vma.vm_start != tmp):
                raise kerr(errno.ENOMEM, "mlock: hole")
            if vma.is_guard_entry:  # tree design T7
                tmp = min(vma.vm_end, end)
                continue
            newflags = (vma.vm_flags & ~VM_LOCKED_MASK) | lock
            nend = min(vma.vm_end, end)
            # mlock_fixup()
            if newflags != vma.vm_flags and not vma.vm_flags & (VM_SPECIAL | VmFlag.DROPPABLE):
                prev = self.tree.prev(vma) if tmp == vma.vm_start else vma
                vma = vma_modify_flags(self.tree, prev, vma, tmp, nend, newflags, self.max_map_count)
            tmp = vma.vm_end if vma.vm_end > tmp else nend  # vma_iter_end()
        if tmp < end:
            raise kerr(errno.ENOMEM, "mlock: hole at end")

    # ------------------------------------------------------------------ mseal

    def mseal(self, addr: int, length: int, flags: int = 0) -> None:
        """mm/mseal.c: do_mseal(): seal every VMA of ``[addr, addr + length)`` (VM_SEALED,
        splitting at the ends): from then on munmap, MAP_FIXED over it, mremap and mprotect
        of it give EPERM, and so does discard advice (``madvise``) on read-only private
        anonymous memory. EINVAL for flags or an unaligned or wrapping range, ENOMEM when
        the range holds a hole (nothing sealed then). O(k log n)."""
        if flags:
            raise kerr(errno.EINVAL, "mseal: flags")
        if addr & ~abi.PAGE_MASK:
            raise kerr(errno.EINVAL, "mseal: unaligned")
        aligned = abi.page_align(length) & ULONG_MAX
        if length and not aligned:
            raise kerr(errno.EINVAL, "mseal: length rounds to 0")
        end = addr + aligned
        if end > ULONG_MAX:
            raise kerr(errno.EINVAL, "mseal: wraps")
        if end == addr:
            return
        cursor = addr  # range_contains_unmapped()
        for vma in self.tree.overlapping(addr, end):
            if vma.vm_start > cursor:
                break
            cursor = vma.vm_end
        if cursor < end:
            raise kerr(errno.ENOMEM, "mseal: range has a hole")
        tmp = addr
        while tmp < end:  # mseal_apply()
            vma = self.tree.find_vma(tmp)
            nend = min(vma.vm_end, end)
            if not vma.is_guard_entry and not int(vma.vm_flags) & _VM_SEALED:
                prev = self.tree.prev(vma) if tmp == vma.vm_start else vma
                vma = vma_modify_flags(self.tree, prev, vma, tmp, nend, int(vma.vm_flags) | _VM_SEALED,
                                       self.max_map_count)
            tmp = nend

    # ------------------------------------------------------------------ fork / exit

    def fork(self) -> "AddressSpace":
        """kernel/fork.c: dup_mmap(): the child's address space (docs/rules.md R-F10). O(n log n + e + r + H)."""
        child = AddressSpace(self.design.name, self.max_map_count, self.mmap_base, self.commit_limit,
                             self.mmap_min_addr, self.dac_mmap_min_addr, self.cap_sys_rawio)
        child.design = self.design.fork()
        child.hugetlb_pool = self.hugetlb_pool
        for vma in self.tree:
            if vma.vm_flags & VmFlag.DONTCOPY:
                continue
            new = vma.copy()
            # dup_userfaultfd(): no UFFD_FEATURE_EVENT_FORK; vm_flags stays a plain int
            new.vm_flags = int(new.vm_flags & ~VM_LOCKED_MASK & ~VM_UFFD_FLAGS)
            if new.vm_flags & VmFlag.WIPEONFORK:
                new.anon_vma, new.anon_vma_forked = None, False
            elif vma.anon_vma is not None:  # anon_vma_fork(): a new anon_vma, chain of two
                new.anon_vma, new.anon_vma_forked = AnonVma(), True
            child.tree.insert(new)
            if new.vm_file is not None:
                child.use_file(new.vm_file)
            if new.vm_flags & VmFlag.WIPEONFORK:
                continue
            # copy_page_range() only when vma_needs_copy()
            if not (vma.vm_flags & (VmFlag.PFNMAP | VmFlag.MIXEDMAP | VmFlag.UFFD_WP | VmFlag.MAYBE_GUARD)
                    or vma.anon_vma is not None):
                continue
            first, last = vma.vm_start >> PAGE_SHIFT, vma.vm_end >> PAGE_SHIFT
            hugetlb = bool(vma.vm_flags & VmFlag.HUGETLB)  # copy_hugetlb_page_range(): copied, CoW
            for page, entry in self.pt.frames(first, last):
                if hugetlb or not self.pt.is_file_huge(page):  # copy_huge_pmd() leaves file PMDs to refault
                    child.set_pte(page, entry)
                    if hugetlb and page == pmd_start(page):
                        child.pt.map_huge_pmd(page)
            self.pt.copy_markers_to(child.pt, first, last)  # run by run
            self.pt.copy_huge_pmds_to(child.pt, first, last)
        child.tree.dup_nodes(self.tree)  # dup_mmap copies the maple tree node for node
        self.design.after_fork(child)
        return child

    def exit(self) -> None:
        """exit_mmap(): drop every mapping (frames' mapcounts fall back; hugetlb pages and
        reservations go back to the pool). O(e + T log T + r)."""
        hugetlb = [v for v in self.tree if v.vm_flags & VmFlag.HUGETLB]
        for v in hugetlb:
            self.hugetlb_free_pages(v.vm_start, v.vm_end)
        for page, _ in self.pt.frames():
            self.clear_pte(page)
        self.pt.remove_markers(0, PAGE_LIMIT)
        for f in self.files:
            if self in f.users:
                f.users.remove(self)
        self.exited = True
        for f in {id(v.vm_file): v.vm_file for v in hugetlb}.values():
            self.hugetlb_release(f)

    # ------------------------------------------------------------------ checks

    def counts(self):
        """The kernel objects this mm holds, as ``costs.MmCounts`` (for ``costs.kernel_cost``). O(n).

        anon_vma_chains: one per VMA with an anon_vma, two for a fork child's (its own and
        the parent's); anon_vmas: distinct AnonVma objects.
        """
        from sparsemm.model.costs import MmCounts

        anon_vmas = set()
        shmem = set()  # shared anonymous mmaps' shmem files (shmem_zero_setup), shared by splits
        chains = 0
        for vma in self:
            if vma.anon_vma is not None:
                anon_vmas.add(vma.anon_vma)
                chains += 2 if vma.anon_vma_forked else 1
            if vma.vm_file is not None and vma.vm_file.shared_anon:
                shmem.add(vma.vm_file)
        return MmCounts(vmas=self.map_count, anon_vmas=len(anon_vmas), anon_vma_chains=chains,
                        shmem_files=len(shmem),
                        maple_nodes=self.tree.node_count(), pte_tables=self.pt.pte_table_pages(),
                        pmd_tables=len(self.pt.pmd_tables), pud_tables=len(self.pt.pud_tables),
                        guard_entries=self.tree.reserved_count, gap_slots=self.tree.gap_count)

    def pgtables_bytes(self) -> int:
        """``mm_pgtables_bytes()``: PTE, PMD and PUD table pages in bytes (VmPTE counts these)."""
        return self.pt.pgtables_bytes()

    def check(self) -> None:
        """The model's invariants (docs/model.md "Invariants"); ``InvariantError`` names the
        first broken one. Runs ``VmaTree.check``, ``PageTable.check`` and the design's
        ``check`` too. O(n log n + e + r (log n + tables per marker run))."""
        def fail(msg: str) -> None:
            raise InvariantError(f"AddressSpace: {msg}")

        self.tree.check()
        prev = None
        n = 0
        for vma in self.tree:
            if not vma.is_guard_entry:
                n += 1
            if vma.vm_start >= vma.vm_end:
                fail(f"empty vma {vma}")
            if vma.vm_start & ~abi.PAGE_MASK or vma.vm_end & ~abi.PAGE_MASK:
                fail(f"unaligned {vma}")
            if prev is not None:
                if prev.vm_end > vma.vm_start:
                    fail(f"overlap {prev} {vma}")
                # No "mergeable neighbours are merged" invariant: the kernel keeps none (it leaves
                # such neighbours apart after mlock + MREMAP_DONTUNMAP + munlock, among others);
                # VMA boundaries are compared with the kernel's through the snapshot records.
            prev = vma
        if n != self.map_count:
            fail(f"map_count {self.map_count} != VMAs {n}")
        self.pt.check()
        self.pt.check_coverage()
        for run in self.pt.marker_runs():
            # every marker page inside a VMA (not a guard entry)
            cursor = run.start << PAGE_SHIFT
            for vma in self.tree.overlapping(cursor, run.stop << PAGE_SHIFT):
                if vma.vm_start > cursor or vma.is_guard_entry:
                    fail(f"guard marker outside any vma at {cursor:#x}")
                cursor = vma.vm_end
            if cursor < run.stop << PAGE_SHIFT:
                fail(f"guard marker outside any vma at {cursor:#x}")
        anon = file = 0
        for page, entry in self.pt.frames():
            addr = page << PAGE_SHIFT
            vma = self.tree.find(addr)
            if vma is None or vma.is_guard_entry:
                fail(f"entry outside any vma at {addr:#x}")
            if entry.kind == FRAME_ANON:
                anon += 1
                if vma.anon_vma is None:
                    fail(f"anon page without anon_vma at {addr:#x}")
            elif entry.kind == FRAME_FILE:
                file += 1
                if vma.vm_file is None:
                    fail(f"file page in anon vma at {addr:#x}")
        if anon != self.rss_anon:
            fail(f"rss_anon {self.rss_anon} != recount {anon}")
        if file != self.rss_file:
            fail(f"rss_file {self.rss_file} != recount {file}")
        # Page-table pages: every table still allocated spans some VMA (free_pgtables frees the rest).
        for shift, tables in ((PTE_SHIFT, self.pt.pte_tables), (PMD_SHIFT, self.pt.pmd_tables),
                              (PUD_SHIFT, self.pt.pud_tables)):
            span = 1 << (shift + PAGE_SHIFT)
            for t in tables:
                if not self.tree.overlapping(t * span, (t + 1) * span):
                    fail(f"page-table page {t:#x} (level shift {shift}) spans no VMA")
        self.design.check(self)
