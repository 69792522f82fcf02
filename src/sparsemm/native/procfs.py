"""Readers for a live process's ``/proc/PID/{maps,smaps,pagemap,status}``.

Owns the small, exact records the kernel backend and the native layer need
(``MapsEntry``, pagemap words). The full-featured parser for saved map files
(every field, error reporting by line) belongs to ``sparsemm.analyze``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from sparsemm import abi


@dataclass(slots=True)
class MapsEntry:
    """One line of ``/proc/PID/maps``, plus the smaps ``VmFlags`` when read from smaps."""

    start: int  # bytes
    end: int  # bytes
    perms: str  # "rw-p"
    offset: int  # bytes (maps' third column)
    dev: str
    inode: int
    path: str  # "" for anonymous memory
    vmflags: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"


def _parse_maps_line(line: str) -> MapsEntry:
    # "start-end perms offset dev inode [path]"; the path may contain spaces.
    parts = line.rstrip("\n").split(None, 5)
    start_s, _, end_s = parts[0].partition("-")
    path = parts[5] if len(parts) > 5 else ""
    return MapsEntry(int(start_s, 16), int(end_s, 16), parts[1], int(parts[2], 16), parts[3],
                     int(parts[4]), path)


def read_maps(pid: int | str = "self") -> list[MapsEntry]:
    """Every VMA of ``pid`` from ``/proc/PID/maps``, in address order."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as fh:
        return [_parse_maps_line(line) for line in fh if line.strip()]


def read_smaps(pid: int | str = "self") -> list[MapsEntry]:
    """Every VMA of ``pid`` from ``/proc/PID/smaps``, with its ``VmFlags``."""
    entries: list[MapsEntry] = []
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            head = line.split(None, 1)[0] if line.strip() else ""
            if head == "VmFlags:":
                entries[-1].vmflags = tuple(line.split()[1:])
            elif "-" in head and not head.endswith(":"):
                entries.append(_parse_maps_line(line))
    return entries


def read_pagemap(addr: int, npages: int, pid: int | str = "self") -> list[int]:
    """The pagemap words (u64) for ``npages`` pages from ``addr``."""
    if npages <= 0:
        return []
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        data = os.pread(fd, npages * abi.PAGEMAP_ENTRY_BYTES,
                        (addr // abi.PAGE_SIZE) * abi.PAGEMAP_ENTRY_BYTES)
    finally:
        os.close(fd)
    return list(struct.unpack(f"<{len(data) // 8}Q", data))


def read_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status`` as a dict of raw strings (``VmPTE`` -> ``"12 kB"``)."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def status_kib(pid: int | str, key: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmPTE``, ``VmRSS``) in KiB."""
    return int(read_status(pid)[key].split()[0])


#: ``/proc/vmstat`` counters that move when the kernel's background THP
#: machinery could have changed a process's pages behind its back: a THP fault
#: that fell back to base pages, a failed collapse allocation, the THP shrinker
#: splitting an underused THP (it unmaps zero-filled subpages).
THP_VMSTAT_EVENTS = ("thp_fault_fallback", "thp_collapse_alloc_failed",
                     "thp_file_fallback", "thp_underused_split_page")
KHUGEPAGED_COLLAPSED = "/sys/kernel/mm/transparent_hugepage/khugepaged/pages_collapsed"


def thp_activity() -> tuple[int, ...]:
    """A fingerprint of system-wide background THP activity.

    ``khugepaged/pages_collapsed`` (collapses by khugepaged only: MADV_COLLAPSE
    does not count) followed by the :data:`THP_VMSTAT_EVENTS` counters. Two
    equal fingerprints around a run mean nothing in the background touched
    any process's THPs during it. Counters the kernel does not have read as 0.
    """
    try:
        with open(KHUGEPAGED_COLLAPSED, encoding="ascii") as fh:
            collapsed = int(fh.read())
    except OSError:
        collapsed = 0
    found = dict.fromkeys(THP_VMSTAT_EVENTS, 0)
    try:
        with open("/proc/vmstat", encoding="ascii") as fh:
            for line in fh:
                name, _, value = line.partition(" ")
                if name in found:
                    found[name] = int(value)
    except OSError:
        pass
    return (collapsed, *found.values())
