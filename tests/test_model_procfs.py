"""Views tier: the model's smaps ``VmFlags`` (every flag, not just the snapshot subset) and
maps lines against the running kernel, op by op.

Each case runs the same calls in this process through ``sparsemm.native.libc`` (at an
address range no other test uses) and on a model ``AddressSpace``, then compares every
VMA's ``VmFlags`` word list and maps permissions/offset. This pins flags the op-script
snapshot does not show: ``ac`` (VM_ACCOUNT), ``sd``, ``nr``, ``ms``, ``gd``, ``sr``/``rr``, ``mg``.
"""

from __future__ import annotations

import os

import pytest

from sparsemm import abi
from sparsemm.abi import Madv
from sparsemm.model import AddressSpace, MemFile, procfs as mprocfs
from sparsemm.native import libc, procfs

BASE = 0x2000_0000_0000  # away from the op-script arena
P = abi.PAGE_SIZE
SPAN = 64 * P
ANON = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED_NOREPLACE
SHANON = abi.MAP_SHARED | abi.MAP_ANONYMOUS | abi.MAP_FIXED_NOREPLACE
DONTUNMAP = abi.MremapFlag.MAYMOVE | abi.MremapFlag.FIXED | abi.MremapFlag.DONTUNMAP
RW, R = abi.PROT_READ | abi.PROT_WRITE, abi.PROT_READ

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not libc.guard_regions_supported(),
                       reason="needs the running kernel's guard regions (Linux >= 6.13)"),
]

# Each case: calls as (name, page, npages, arg...). "file" mappings use one memfd of 16 pages.
CASES = {
    "anon_rw_and_r": [("mmap", 0, 4, RW, ANON), ("mmap", 4, 4, R, ANON), ("mmap", 10, 2, RW,
                      ANON | abi.MapFlag.NORESERVE)],
    "mprotect_account": [("mmap", 0, 4, R, ANON), ("mprotect", 0, 2, RW), ("mprotect", 0, 2, R),
                         ("mmap", 8, 4, RW, ANON), ("access", 8, 1), ("mprotect", 8, 4, R)],
    "shared_and_file": [("mmap", 0, 4, RW, SHANON), ("mmap", 8, 4, R, abi.MAP_SHARED),
                        ("mmap", 16, 4, RW, abi.MAP_PRIVATE), ("mmap", 24, 2, RW, abi.MAP_SHARED)],
    "madvise_flags": [("mmap", 0, 16, RW, ANON), ("madvise", 0, 2, Madv.SEQUENTIAL),
                      ("madvise", 2, 2, Madv.RANDOM), ("madvise", 4, 2, Madv.MERGEABLE),
                      ("madvise", 6, 2, Madv.DONTDUMP), ("madvise", 8, 2, Madv.WIPEONFORK),
                      ("madvise", 10, 2, Madv.HUGEPAGE), ("madvise", 12, 1, Madv.GUARD_INSTALL)],
    "growsdown_locked": [("mmap", 4, 4, RW, ANON | abi.MapFlag.GROWSDOWN),
                         ("mmap", 12, 2, RW, ANON | abi.MapFlag.LOCKED), ("mlock", 20, 0),
                         ("mmap", 20, 2, RW, ANON), ("mlock2", 20, 1)],
    "mremap_dontunmap": [("mmap", 0, 4, RW, ANON | abi.MapFlag.LOCKED), ("access", 0, 1),
                         ("mremap", 0, 4, 10), ("mmap", 20, 4, RW, SHANON), ("mremap", 20, 2, 30)],
}


def _run_native(calls, fd):
    for name, page, n, *args in calls:
        addr = BASE + page * P
        if name == "mmap":
            prot, flags = args
            if flags & abi.MAP_ANONYMOUS:
                libc.mmap(addr, n * P, prot, flags, -1, 0)
            else:
                libc.mmap(addr, n * P, prot, flags | abi.MAP_FIXED_NOREPLACE, fd, 0)
        elif name == "mprotect":
            libc.mprotect(addr, n * P, args[0])
        elif name == "madvise":
            libc.madvise(addr, n * P, args[0])
        elif name == "access":
            libc.process_vm_writev(os.getpid(), addr, b"\1")
        elif name == "mremap":
            libc.mremap(addr, n * P, n * P, DONTUNMAP, BASE + args[0] * P)
        elif name in ("mlock", "mlock2"):
            if n:
                libc.mlock(addr, 2 * P, abi.MLOCK_ONFAULT)


def _run_model(calls, mm, f):
    for name, page, n, *args in calls:
        addr = BASE + page * P
        if name == "mmap":
            prot, flags = args
            if flags & abi.MAP_ANONYMOUS:
                mm.mmap(addr, n * P, prot, flags)
            else:
                mm.mmap(addr, n * P, prot, flags | abi.MAP_FIXED_NOREPLACE, f, 0)
        elif name == "mprotect":
            mm.mprotect(addr, n * P, args[0])
        elif name == "madvise":
            mm.madvise(addr, n * P, args[0])
        elif name == "access":
            mm.touch(addr, True)
        elif name == "mremap":
            mm.mremap(addr, n * P, n * P, DONTUNMAP, BASE + args[0] * P)
        elif name in ("mlock", "mlock2"):
            if n:
                mm.mlock(addr, 2 * P, abi.MLOCK_ONFAULT)
        mm.check()


@pytest.mark.parametrize("case", sorted(CASES))
def test_vmflags_match_kernel(case):
    calls = CASES[case]
    fd = libc.memfd_create("vmflags", abi.MFD_CLOEXEC)
    libc.ftruncate(fd, 16 * P)
    try:
        _run_native(calls, fd)
        real = [(e.start - BASE, e.end - BASE, e.perms, e.offset, e.vmflags)
                for e in procfs.read_smaps() if BASE <= e.start < BASE + SPAN]
    finally:
        libc.munmap(BASE, SPAN)
        os.close(fd)
    mm = AddressSpace()
    _run_model(calls, mm, MemFile("vmflags", 16 * P))
    model = []
    for line in mprocfs.smaps(mm).splitlines():
        if line.startswith("VmFlags:"):
            model[-1] = (*model[-1], tuple(line.split()[1:]))
        elif "-" in line.split()[0] and not line.split()[0].endswith(":"):
            head = line.split()
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            model.append((lo - BASE, hi - BASE, head[1], int(head[2], 16)))
    assert model == real
