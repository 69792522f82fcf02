"""ctypes bindings, /proc readers and the feature probe against the running kernel."""

from __future__ import annotations

import errno
import os

import pytest

from sparsemm import abi
from sparsemm.native import libc, procfs
from sparsemm.native.probe import features

from conftest import needs_guards

PAGE = abi.PAGE_SIZE
RW = abi.PROT_READ | abi.PROT_WRITE
ANON = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS


@pytest.fixture
def region():
    addr = libc.mmap(0, 4 * PAGE, RW, ANON)
    yield addr
    libc.munmap(addr, 4 * PAGE)


@pytest.mark.parametrize("call, err", [
    (lambda: libc.mmap(0, 0, RW, ANON), errno.EINVAL),
    (lambda: libc.mmap(0, PAGE, RW, abi.MAP_ANONYMOUS), errno.EINVAL),
    (lambda: libc.mmap(0, PAGE, RW, abi.MAP_PRIVATE, 987654), errno.EBADF),
    (lambda: libc.munmap(1, PAGE), errno.EINVAL),
    (lambda: libc.mprotect(1, PAGE, RW), errno.EINVAL),
    (lambda: libc.madvise(0, PAGE, 99), errno.EINVAL),
    (lambda: libc.mremap(1, PAGE, PAGE), errno.EINVAL),
    (lambda: libc.mlock(abi.ARENA_BASE, PAGE), errno.ENOMEM),
    (lambda: libc.pidfd_open(-1), errno.EINVAL),
])
def test_failures_raise_oserror_with_the_kernels_errno(call, err):
    with pytest.raises(OSError) as info:
        call()
    assert info.value.errno == err


def test_maps_and_pagemap_see_a_mapping(region):
    # The region may merge with a neighbouring anonymous VMA: match by containment.
    entry = next(e for e in procfs.read_maps() if e.start <= region < e.end)
    assert entry.end >= region + 4 * PAGE and (entry.perms, entry.path) == ("rw-p", "")
    libc.process_vm_writev(os.getpid(), region + PAGE, b"\x05")
    words = procfs.read_pagemap(region, 4)
    assert [bool(w & abi.PM_PRESENT) for w in words] == [False, True, False, False]
    assert libc.process_vm_readv(os.getpid(), region + PAGE, 1) == b"\x05"


@needs_guards
def test_guard_page_reads_as_efault_and_pagemap_bit_58(region):
    libc.madvise(region + 2 * PAGE, PAGE, abi.MADV_GUARD_INSTALL)
    with pytest.raises(OSError) as info:
        libc.process_vm_readv(os.getpid(), region + 2 * PAGE, 1)
    assert info.value.errno == errno.EFAULT
    # A read that starts before the guard stops at it (a partial read).
    assert len(libc.process_vm_readv(os.getpid(), region + 2 * PAGE - 8, 16)) == 8
    word = procfs.read_pagemap(region + 2 * PAGE, 1)[0]
    assert word & abi.PM_GUARD_REGION and word & abi.PM_SWAP and not word & abi.PM_PRESENT
    entry = next(e for e in procfs.read_smaps() if e.start <= region < e.end)
    assert "gu" in entry.vmflags


@needs_guards
def test_process_madvise_on_self_counts_bytes(region):
    pidfd = libc.pidfd_open(os.getpid())
    try:
        done = libc.process_madvise(pidfd, [(region, PAGE), (region + 3 * PAGE, PAGE)],
                                    abi.MADV_GUARD_INSTALL)
    finally:
        os.close(pidfd)
    assert done == 2 * PAGE
    guards = [bool(w & abi.PM_GUARD_REGION) for w in procfs.read_pagemap(region, 4)]
    assert guards == [True, False, False, True]


def test_memfd_and_mremap_move():
    fd = libc.memfd_create("sparsemm-test")
    try:
        libc.ftruncate(fd, 2 * PAGE)
        os.pwrite(fd, b"\x2a", PAGE)
        addr = libc.mmap(0, 2 * PAGE, abi.PROT_READ, abi.MAP_SHARED, fd, 0)
        assert libc.process_vm_readv(os.getpid(), addr + PAGE, 1) == b"\x2a"
        entry = next(e for e in procfs.read_maps() if e.start == addr)
        assert entry.path == "/memfd:sparsemm-test (deleted)" and entry.shared
        new = libc.mremap(addr, 2 * PAGE, 4 * PAGE, abi.MremapFlag.MAYMOVE)
        libc.munmap(new, 4 * PAGE)
    finally:
        os.close(fd)


def test_status_reader():
    assert procfs.status_kib("self", "VmPTE") >= 0


def test_probe_agrees_with_a_direct_madvise():
    feats = features()
    assert feats.guard_regions == libc.guard_regions_supported()
    assert "guard regions" in feats.describe()
    if feats.guard_regions:
        # Linux 6.18 here: every guard feature the project relies on.
        assert feats.pagemap_guard_bit and feats.file_guards
