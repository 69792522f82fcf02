"""Feature probe: which guard-region features the running kernel has.

Owns one cached ``Features`` record and the probe's exit statuses. Each answer
comes from asking the kernel (throwaway mappings in this process), never from
the version string, and the same kernel gives the same answer every time.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass

from sparsemm import abi
from sparsemm.native import libc, procfs

#: ``sparsemm probe`` exit statuses.
EXIT_MARKERS = 0  # guard markers work: Mapping/GuardedHeap use them
EXIT_FALLBACK = 1  # no guard markers: the PROT_NONE fallback (one VMA per guard)
EXIT_ERROR = 2  # the probe itself could not run

SCHEMA = "sparsemm.probe/1"


@dataclass(slots=True, frozen=True)
class Features:
    kernel: str
    guard_regions: bool  # MADV_GUARD_INSTALL / REMOVE known (6.13+)
    pagemap_guard_bit: bool  # pagemap bit 58 on a guard page (6.15+)
    smaps_gu: bool  # smaps VmFlags "gu" on a VMA after an install (6.19, 6.18.y)
    file_guards: bool  # install allowed on a shared file mapping (6.15+)

    @property
    def guard_mode(self) -> str:
        """What ``guard_mode="auto"`` picks for anonymous memory on this kernel."""
        return "markers" if self.guard_regions else "prot_none"

    @property
    def exit_status(self) -> int:
        return EXIT_MARKERS if self.guard_regions else EXIT_FALLBACK

    def describe(self) -> str:
        def yn(flag: bool) -> str:
            return "yes" if flag else "no"

        return (f"kernel {self.kernel}: guard regions {yn(self.guard_regions)}, "
                f"pagemap bit 58 {yn(self.pagemap_guard_bit)}, smaps gu {yn(self.smaps_gu)}, "
                f"file-backed guards {yn(self.file_guards)}; Mapping and GuardedHeap use "
                f"{'guard markers' if self.guard_regions else 'the PROT_NONE fallback'}")

    def to_json(self) -> dict:
        return {"schema": SCHEMA, **asdict(self), "guard_mode": self.guard_mode,
                "exit_status": self.exit_status}


@functools.cache
def features() -> Features:
    """Probe once per process; later calls return the cached answer."""
    return probe()


def probe() -> Features:
    """Ask the kernel now (uncached). O(VMAs of this process), for the smaps read."""
    kernel = platform.release()
    if not libc.guard_regions_supported():
        return Features(kernel, False, False, False, False)
    page = abi.PAGE_SIZE
    addr = libc.mmap(0, 2 * page, abi.PROT_READ | abi.PROT_WRITE, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    try:
        libc.madvise(addr, page, abi.MADV_GUARD_INSTALL)
        bit58 = bool(procfs.read_pagemap(addr, 1)[0] & abi.PM_GUARD_REGION)
        gu = "gu" in vmflags_at(addr)
    finally:
        libc.munmap(addr, 2 * page)
    return Features(kernel, True, bit58, gu, _file_guards_work())


def mmap_min_addr() -> tuple[int, int] | None:
    """``(sysctl, floor)``: ``vm.mmap_min_addr`` (the kernel's ``dac_mmap_min_addr``: below it
    a mapping needs CAP_SYS_RAWIO) and the kernel's own ``mmap_min_addr`` (security/min_addr.c:
    the larger of the sysctl and CONFIG_LSM_MMAP_MIN_ADDR; no placement goes below it).
    The floor is asked of the kernel: an mmap hint of one page is raised to it
    (``round_hint_to_min``) and placed there when that page is free, as it is in a normal
    layout; where it is not, the floor is taken to be the sysctl. None when the sysctl
    cannot be read. One throwaway mapping (PROT_NONE)."""
    try:
        sysctl = procfs.read_int("/proc/sys/vm/mmap_min_addr")
    except (OSError, ValueError):
        return None
    return sysctl, _mmap_floor(sysctl)


@functools.lru_cache(maxsize=4)
def _mmap_floor(sysctl: int) -> int:
    """The kernel's mmap_min_addr while ``vm.mmap_min_addr`` is ``sysctl`` (asked once)."""
    flags = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MapFlag.NORESERVE
    addr = libc.mmap(abi.PAGE_SIZE, abi.PAGE_SIZE, abi.PROT_NONE, flags)
    libc.munmap(addr, abi.PAGE_SIZE)
    return addr if sysctl <= addr < _LOW_PLACEMENT else sysctl


#: A hint raised to the floor lands below this; anything higher is the top-down search.
_LOW_PLACEMENT = 1 << 32


def vmflags_at(addr: int) -> tuple[str, ...]:
    """The smaps ``VmFlags`` of the VMA holding byte ``addr`` (``()`` if none).

    The VMA that *contains* the address: a fresh mapping often merges with a
    neighbour, so no VMA need start at it.
    """
    for entry in procfs.read_smaps():
        if entry.start <= addr < entry.end:
            return entry.vmflags
    return ()


def _file_guards_work() -> bool:
    page = abi.PAGE_SIZE
    fd = libc.memfd_create("sparsemm-probe")
    try:
        libc.ftruncate(fd, page)
        faddr = libc.mmap(0, page, abi.PROT_READ, abi.MAP_SHARED, fd, 0)
        try:
            libc.madvise(faddr, page, abi.MADV_GUARD_INSTALL)
            return True
        except OSError:
            return False
        finally:
            libc.munmap(faddr, page)
    finally:
        os.close(fd)
