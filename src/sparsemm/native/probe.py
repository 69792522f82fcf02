"""Feature probe: which guard-region features the running kernel has.

Owns one cached ``Features`` record. Each answer comes from asking the kernel
(a throwaway mapping in this process), never from the version string.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

from sparsemm import abi
from sparsemm.native import libc, procfs


@dataclass(slots=True, frozen=True)
class Features:
    kernel: str
    guard_regions: bool  # MADV_GUARD_INSTALL / REMOVE known (6.13+)
    pagemap_guard_bit: bool  # pagemap bit 58 on a guard page (6.15+)
    smaps_gu: bool  # smaps VmFlags "gu" after an install (6.19, 6.18.y)
    file_guards: bool  # install allowed on a shared file mapping (6.15+)

    def describe(self) -> str:
        def yn(flag: bool) -> str:
            return "yes" if flag else "no"

        return (f"kernel {self.kernel}: guard regions {yn(self.guard_regions)}, "
                f"pagemap bit 58 {yn(self.pagemap_guard_bit)}, smaps gu {yn(self.smaps_gu)}, "
                f"file-backed guards {yn(self.file_guards)}")


@functools.cache
def features() -> Features:
    """Probe once per process; later calls return the cached answer."""
    kernel = platform.release()
    if not libc.guard_regions_supported():
        return Features(kernel, False, False, False, False)
    page = abi.PAGE_SIZE
    addr = libc.mmap(0, 2 * page, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    try:
        libc.madvise(addr, page, abi.MADV_GUARD_INSTALL)
        bit58 = bool(procfs.read_pagemap(addr, 1)[0] & abi.PM_GUARD_REGION)
        gu = any(e.start <= addr < e.end and "gu" in e.vmflags for e in procfs.read_smaps())
    finally:
        libc.munmap(addr, 2 * page)
    fd = libc.memfd_create("sparsemm-probe")
    try:
        libc.ftruncate(fd, page)
        faddr = libc.mmap(0, page, abi.PROT_READ, abi.MAP_SHARED, fd, 0)
        try:
            libc.madvise(faddr, page, abi.MADV_GUARD_INSTALL)
            file_guards = True
        except OSError:
            file_guards = False
        finally:
            libc.munmap(faddr, page)
    finally:
        import os

        os.close(fd)
    return Features(kernel, True, bit58, gu, file_guards)
