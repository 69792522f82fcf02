"""The Linux ABI numbers both backends share: one spelling of every constant.

Owns PROT_/MAP_/MADV_/MREMAP_/MLOCK_ values, VM_ flags with their smaps
``VmFlags`` mnemonics, the pagemap bits, the op-script names for them, and the pure
argument rules both backends share (``page_align``, ``access_ok``, ``import_iovec``).
x86-64 values (the project's machines); nothing here makes a system call.
"""

from __future__ import annotations

import enum
import errno
from typing import Sequence

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT  # bytes
PAGE_MASK = ~(PAGE_SIZE - 1)

#: The largest ``unsigned long`` (2**64 - 1): syscall arguments wrap modulo 2**64.
ULONG_MAX = (1 << 64) - 1
#: MAX_LFS_FILESIZE on 64-bit (LLONG_MAX): the s_maxbytes of tmpfs/shmem, the largest file
#: offset a mapping or fallocate may reach.
MAX_LFS_FILESIZE = (1 << 63) - 1
#: MAX_RW_COUNT (INT_MAX & PAGE_MASK): import_iovec() cuts a vector's total length to it,
#: so process_madvise advises at most this many bytes per call.
MAX_RW_COUNT = 0x7FFFF000

#: UIO_MAXIOV: the most iovecs one vector call (process_madvise) takes; more is EINVAL.
UIO_MAXIOV = 1024

#: Entries in one page-table page at every level (x86-64, 4 KiB pages).
PTRS_PER_TABLE = 512

#: ``vm.max_map_count`` default: ``USHRT_MAX - MAPCOUNT_ELF_CORE_MARGIN`` (include/linux/mm.h).
DEFAULT_MAX_MAP_COUNT = 65530

#: The op-script arena base (docs/opscript.md): identical on both backends.
ARENA_BASE = 0x1000_0000_0000

#: Highest user address + 1 on x86-64 with 4-level paging (TASK_SIZE).
TASK_SIZE = 0x7FFF_FFFF_F000


def page_align(length: int) -> int:
    """Round ``length`` bytes up to a page multiple (the kernel's PAGE_ALIGN)."""
    return (length + PAGE_SIZE - 1) & PAGE_MASK


def access_ok(addr: int, length: int) -> bool:
    """x86-64 ``access_ok()`` for a range whose length is not a constant: ``addr + length``
    neither wraps past 2**64 nor ends above the highest user address (``USER_PTR_MAX``, which
    is TASK_SIZE on this kernel). ``addr``/``length``: unsigned 64-bit words. O(1)."""
    return addr + length <= TASK_SIZE


def import_iovec(iovecs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """lib/iov_iter.c: ``import_iovec()``: the ``(base, len)`` pairs a vector call goes on
    with, or the error it fails with before it looks at any memory.

    In the kernel's order: more than ``UIO_MAXIOV`` pairs, or a length that is negative as
    ``ssize_t``, is EINVAL (``iovec_from_user()``, all pairs before anything else); then a
    range ``access_ok()`` refuses is EFAULT, checked on the full length when there are
    several pairs and on the cut one for a single pair (``import_ubuf()``); the lengths are
    cut so that they total at most ``MAX_RW_COUNT`` (later pairs shortened or emptied).
    Zero pairs is no error. Raises ``OSError``. O(pairs).
    """
    if len(iovecs) > UIO_MAXIOV:
        raise OSError(errno.EINVAL, f"import_iovec: more than UIO_MAXIOV ({UIO_MAXIOV}) iovecs")
    if any(length >= 1 << 63 for _, length in iovecs):
        raise OSError(errno.EINVAL, "import_iovec: a length past SSIZE_MAX")
    single = len(iovecs) == 1
    out = []
    total = 0
    for base, length in iovecs:
        if not single and not access_ok(base, length):
            raise OSError(errno.EFAULT, "import_iovec: a range outside user space")
        length = min(length, MAX_RW_COUNT - total)
        if single and not access_ok(base, length):
            raise OSError(errno.EFAULT, "import_iovec: a range outside user space")
        total += length
        out.append((base, length))
    return out


class Prot(enum.IntFlag):
    NONE = 0x0
    READ = 0x1
    WRITE = 0x2
    EXEC = 0x4


PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC = 0x0, 0x1, 0x2, 0x4
PROT_SEM = 0x8  # accepted by mprotect (arch_validate_prot()), no effect on x86
PROT_GROWSDOWN = 0x0100_0000
PROT_GROWSUP = 0x0200_0000


class MapFlag(enum.IntFlag):
    SHARED = 0x01
    PRIVATE = 0x02
    SHARED_VALIDATE = 0x03
    DROPPABLE = 0x08  # a map type (Linux 6.11+): anonymous memory the kernel may drop
    FIXED = 0x10
    ANONYMOUS = 0x20
    GROWSDOWN = 0x100
    DENYWRITE = 0x800
    EXECUTABLE = 0x1000
    LOCKED = 0x2000
    NORESERVE = 0x4000
    POPULATE = 0x8000
    NONBLOCK = 0x10000
    STACK = 0x20000
    HUGETLB = 0x40000
    SYNC = 0x80000
    FIXED_NOREPLACE = 0x100000
    UNINITIALIZED = 0x4000000


MAP_SHARED = MapFlag.SHARED
MAP_PRIVATE = MapFlag.PRIVATE
MAP_FIXED = MapFlag.FIXED
MAP_ANONYMOUS = MapFlag.ANONYMOUS
MAP_FIXED_NOREPLACE = MapFlag.FIXED_NOREPLACE
MAP_FAILED = ULONG_MAX  # (void *)-1 as an unsigned word


class Madv(enum.IntEnum):
    NORMAL = 0
    RANDOM = 1
    SEQUENTIAL = 2
    WILLNEED = 3
    DONTNEED = 4
    FREE = 8
    REMOVE = 9
    DONTFORK = 10
    DOFORK = 11
    MERGEABLE = 12
    UNMERGEABLE = 13
    HUGEPAGE = 14
    NOHUGEPAGE = 15
    DONTDUMP = 16
    DODUMP = 17
    WIPEONFORK = 18
    KEEPONFORK = 19
    COLD = 20
    PAGEOUT = 21
    POPULATE_READ = 22
    POPULATE_WRITE = 23
    DONTNEED_LOCKED = 24
    COLLAPSE = 25
    HWPOISON = 100
    SOFT_OFFLINE = 101
    GUARD_INSTALL = 102
    GUARD_REMOVE = 103


MADV_GUARD_INSTALL = Madv.GUARD_INSTALL
MADV_GUARD_REMOVE = Madv.GUARD_REMOVE


class MremapFlag(enum.IntFlag):
    MAYMOVE = 1
    FIXED = 2
    DONTUNMAP = 4


MLOCK_ONFAULT = 1
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4

MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_NOEXEC_SEAL = 0x1, 0x2, 0x8
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE, F_SEAL_FUTURE_WRITE = 0x1, 0x2, 0x4, 0x8, 0x10

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


class VmFlag(enum.IntFlag):
    """``vm_area_struct.vm_flags`` bits (include/linux/mm.h, Linux 6.18, x86-64)."""

    READ = 0x1
    WRITE = 0x2
    EXEC = 0x4
    SHARED = 0x8
    MAYREAD = 0x10
    MAYWRITE = 0x20
    MAYEXEC = 0x40
    MAYSHARE = 0x80
    GROWSDOWN = 0x100
    UFFD_MISSING = 0x200
    PFNMAP = 0x400
    MAYBE_GUARD = 0x800
    UFFD_WP = 0x1000
    LOCKED = 0x2000
    IO = 0x4000
    SEQ_READ = 0x8000
    RAND_READ = 0x10000
    DONTCOPY = 0x20000
    DONTEXPAND = 0x40000
    LOCKONFAULT = 0x80000
    ACCOUNT = 0x100000
    NORESERVE = 0x200000
    HUGETLB = 0x400000
    SYNC = 0x800000
    ARCH_1 = 0x1000000
    WIPEONFORK = 0x2000000
    DONTDUMP = 0x4000000
    SOFTDIRTY = 0x8000000
    MIXEDMAP = 0x10000000
    HUGEPAGE = 0x20000000
    NOHUGEPAGE = 0x40000000
    MERGEABLE = 0x80000000
    DROPPABLE = 1 << 40
    SEALED = 1 << 42


#: smaps ``VmFlags`` mnemonics, in the order the kernel prints them (by bit).
VM_MNEMONICS: dict[VmFlag, str] = {
    VmFlag.READ: "rd",
    VmFlag.WRITE: "wr",
    VmFlag.EXEC: "ex",
    VmFlag.SHARED: "sh",
    VmFlag.MAYREAD: "mr",
    VmFlag.MAYWRITE: "mw",
    VmFlag.MAYEXEC: "me",
    VmFlag.MAYSHARE: "ms",
    VmFlag.GROWSDOWN: "gd",
    VmFlag.UFFD_MISSING: "um",
    VmFlag.PFNMAP: "pf",
    VmFlag.MAYBE_GUARD: "gu",
    VmFlag.UFFD_WP: "uw",
    VmFlag.LOCKED: "lo",
    VmFlag.IO: "io",
    VmFlag.SEQ_READ: "sr",
    VmFlag.RAND_READ: "rr",
    VmFlag.DONTCOPY: "dc",
    VmFlag.DONTEXPAND: "de",
    VmFlag.LOCKONFAULT: "lf",
    VmFlag.ACCOUNT: "ac",
    VmFlag.NORESERVE: "nr",
    VmFlag.HUGETLB: "ht",
    VmFlag.SYNC: "sf",
    VmFlag.ARCH_1: "ar",
    VmFlag.WIPEONFORK: "wf",
    VmFlag.DONTDUMP: "dd",
    VmFlag.SOFTDIRTY: "sd",
    VmFlag.MIXEDMAP: "mm",
    VmFlag.HUGEPAGE: "hg",
    VmFlag.NOHUGEPAGE: "nh",
    VmFlag.MERGEABLE: "mg",
    VmFlag.DROPPABLE: "dp",
    VmFlag.SEALED: "sl",
}
MNEMONIC_TO_VMFLAG: dict[str, VmFlag] = {v: k for k, v in VM_MNEMONICS.items()}

#: The VmFlags an op-script snapshot reports (docs/opscript.md), sorted.
SNAPSHOT_VMFLAGS: tuple[str, ...] = tuple(sorted(("gu", "lo", "wf", "dc", "dd", "hg", "nh", "sl", "dp", "um")))


def vmflags_to_mnemonics(flags: int) -> list[str]:
    """The smaps ``VmFlags`` words for ``flags``, in kernel order."""
    return [name for bit, name in VM_MNEMONICS.items() if flags & bit]


# /proc/PID/pagemap: one little-endian u64 per page (Documentation/admin-guide/mm/pagemap.rst).
PM_PFN_MASK = (1 << 55) - 1
PM_SOFT_DIRTY = 1 << 55
PM_MMAP_EXCLUSIVE = 1 << 56
PM_UFFD_WP = 1 << 57
PM_GUARD_REGION = 1 << 58
PM_FILE = 1 << 61
PM_SWAP = 1 << 62
PM_PRESENT = 1 << 63
PAGEMAP_ENTRY_BYTES = 8

# PAGEMAP_SCAN (fs/proc/task_mmu.c, include/uapi/linux/fs.h)
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8
#: Every category PAGEMAP_SCAN knows (PM_SCAN_CATEGORIES); a mask with another bit is EINVAL.
PM_SCAN_CATEGORIES = (1 << 9) - 1
PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg), sizeof == 96

# PROCMAP_QUERY on /proc/PID/maps (Linux 6.11+): the one VMA covering an address.
PROCMAP_QUERY = 0xC0686611  # _IOWR('f', 17, struct procmap_query), sizeof == 104
PROCMAP_QUERY_VMA_READABLE = 0x01
PROCMAP_QUERY_VMA_WRITABLE = 0x02
PROCMAP_QUERY_VMA_EXECUTABLE = 0x04
PROCMAP_QUERY_VMA_SHARED = 0x08

# x86-64 system call numbers for calls glibc 2.36 has no wrapper for.
SYS_process_vm_readv = 310
SYS_process_vm_writev = 311
SYS_memfd_create = 319
SYS_membarrier = 324
MEMBARRIER_CMD_GLOBAL = 1  # waits for an RCU grace period (synchronize_rcu)
SYS_mlock2 = 325
SYS_pidfd_open = 434
SYS_process_madvise = 440
SYS_mseal = 462

# userfaultfd (include/uapi/linux/userfaultfd.h), x86-64.
SYS_userfaultfd = 323
UFFD_API = 0xAA
UFFD_FEATURE_SIGBUS = 1 << 7
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api), 24 bytes
UFFDIO_REGISTER = 0xC020AA00  # _IOWR(0xAA, 0x00, struct uffdio_register), 32 bytes
UFFDIO_UNREGISTER = 0x8010AA01  # _IOR(0xAA, 0x01, struct uffdio_range), 16 bytes
UFFDIO_COPY = 0xC028AA03  # _IOWR(0xAA, 0x03, struct uffdio_copy), 40 bytes
UFFDIO_REGISTER_MODE_MISSING = 1

# SIGSEGV si_code values.
SEGV_MAPERR = 1
SEGV_ACCERR = 2

# ---------------------------------------------------------------------------
# Op-script spellings (docs/opscript.md): the names scripts use for the numbers above.

PROT_BY_LETTER = {"r": PROT_READ, "w": PROT_WRITE, "x": PROT_EXEC}

MAP_BY_NAME: dict[str, int] = {
    "private": MapFlag.PRIVATE,
    "shared": MapFlag.SHARED,
    "anonymous": MapFlag.ANONYMOUS,
    "fixed": MapFlag.FIXED,
    "fixed_noreplace": MapFlag.FIXED_NOREPLACE,
    "populate": MapFlag.POPULATE,
    "noreserve": MapFlag.NORESERVE,
    "locked": MapFlag.LOCKED,
    "growsdown": MapFlag.GROWSDOWN,
    "shared_validate": MapFlag.SHARED_VALIDATE,
    "droppable": MapFlag.DROPPABLE,
    "stack": MapFlag.STACK,
    "nonblock": MapFlag.NONBLOCK,
    "hugetlb": MapFlag.HUGETLB,
}

#: Raw ``prot`` bits beyond r/w/x an op script may name (``"prot": ["r", "sem"]``).
PROT_BY_NAME: dict[str, int] = {
    "r": PROT_READ, "w": PROT_WRITE, "x": PROT_EXEC, "sem": PROT_SEM,
    "growsdown": PROT_GROWSDOWN, "growsup": PROT_GROWSUP,
}

MADV_BY_NAME: dict[str, int] = {m.name.lower(): int(m) for m in Madv}

#: PAGEMAP_SCAN categories by op-script name, in bit order (``PAGE_IS_<NAME>``).
PAGE_IS_BY_NAME: dict[str, int] = {
    "wpallowed": PAGE_IS_WPALLOWED,
    "written": PAGE_IS_WRITTEN,
    "file": PAGE_IS_FILE,
    "present": PAGE_IS_PRESENT,
    "swapped": PAGE_IS_SWAPPED,
    "pfnzero": PAGE_IS_PFNZERO,
    "huge": PAGE_IS_HUGE,
    "soft_dirty": PAGE_IS_SOFT_DIRTY,
    "guard": PAGE_IS_GUARD,
}


def page_categories(bits: int) -> list[str]:
    """PAGEMAP_SCAN category bits as op-script names, in bit order (unknown bits dropped)."""
    return [name for name, bit in PAGE_IS_BY_NAME.items() if bits & bit]


MREMAP_BY_NAME: dict[str, int] = {
    "maymove": MremapFlag.MAYMOVE,
    "fixed": MremapFlag.FIXED,
    "dontunmap": MremapFlag.DONTUNMAP,
}


def parse_prot(text: str) -> int:
    """``"rw"`` -> ``PROT_READ | PROT_WRITE``; ``""`` and ``"none"`` -> ``PROT_NONE``.

    Raises ``ValueError`` on any other letter or a repeated one.
    """
    if text in ("", "none"):
        return PROT_NONE
    prot = 0
    for letter in text:
        bit = PROT_BY_LETTER.get(letter)
        if bit is None or prot & bit:
            raise ValueError(f"bad prot {text!r}: use a combination of r, w, x, or 'none'")
        prot |= bit
    return prot


def prot_to_perms(prot: int, shared: bool) -> str:
    """The four-character maps permission column (``rw-p``)."""
    return (
        ("r" if prot & PROT_READ else "-")
        + ("w" if prot & PROT_WRITE else "-")
        + ("x" if prot & PROT_EXEC else "-")
        + ("s" if shared else "p")
    )
