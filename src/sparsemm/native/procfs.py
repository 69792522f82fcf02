"""Readers for a live process's ``/proc/PID/{maps,smaps,pagemap,status}``.

Owns the small, exact records the kernel backend and the native layer need
(``MapsEntry``, pagemap words, the VMA covering an address, the VMA count).
The full-featured parser for saved map files (every field, error reporting by
line) belongs to ``sparsemm.analyze``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from dataclasses import dataclass

from sparsemm import abi
from sparsemm.native import libc


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


def vma_at(addr: int, pid: int | str = "self") -> tuple[int, int, str] | None:
    """``(vm_start, vm_end, perms)`` of the VMA covering byte ``addr``, or None.

    Asks the kernel for that one VMA with the ``PROCMAP_QUERY`` ioctl (Linux
    6.11+): O(log VMAs) and no allocation that grows with the VMA count, so it
    works at ``vm.max_map_count``. Older kernels: a streamed scan of maps, O(VMAs).
    """
    fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    try:
        query = _ProcmapQuery(size=ctypes.sizeof(_ProcmapQuery), query_addr=addr & ((1 << 64) - 1))
        try:
            libc.ioctl(fd, abi.PROCMAP_QUERY, ctypes.addressof(query))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None  # nothing mapped at addr
            if exc.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        else:
            flags = query.vma_flags
            perms = "".join(letter if flags & bit else "-" for letter, bit in (
                ("r", abi.PROCMAP_QUERY_VMA_READABLE), ("w", abi.PROCMAP_QUERY_VMA_WRITABLE),
                ("x", abi.PROCMAP_QUERY_VMA_EXECUTABLE)))
            return query.vma_start, query.vma_end, perms + (
                "s" if flags & abi.PROCMAP_QUERY_VMA_SHARED else "p")
    finally:
        os.close(fd)
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as fh:
        for line in fh:
            rng, perms = line.split(None, 2)[:2]
            start_s, _, end_s = rng.partition("-")
            start, end = int(start_s, 16), int(end_s, 16)
            if start <= addr < end:
                return start, end, perms
            if start > addr:
                break
    return None


class _ProcmapQuery(ctypes.Structure):
    # include/uapi/linux/fs.h: struct procmap_query (104 bytes)
    _u64, _u32 = ctypes.c_uint64, ctypes.c_uint32
    _fields_ = [("size", _u64), ("query_flags", _u64), ("query_addr", _u64),
                ("vma_start", _u64), ("vma_end", _u64), ("vma_flags", _u64),
                ("vma_page_size", _u64), ("vma_offset", _u64), ("inode", _u64),
                ("dev_major", _u32), ("dev_minor", _u32), ("vma_name_size", _u32),
                ("build_id_size", _u32), ("vma_name_addr", _u64), ("build_id_addr", _u64)]


# count_vmas() reads into one buffer allocated here, at import: near
# vm.max_map_count the process may be unable to map anything new, and the count
# is what the error path needs then. One reader at a time; a fork child gets a
# fresh lock (another thread may have held it at the fork).
_COUNT_BUF = bytearray(1 << 16)
_COUNT_BUFS = [_COUNT_BUF]
_count_lock = threading.Lock()


def _new_count_lock() -> None:
    global _count_lock
    _count_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_count_lock)


def count_vmas(pid: int | str = "self") -> int:
    """The VMA count of ``pid`` (``mm_struct::map_count``): lines of ``/proc/PID/maps``.

    O(VMAs) time and O(1) memory: it reads into a buffer allocated at import,
    so it works when the process is at ``vm.max_map_count``.
    """
    with _count_lock:
        fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
        try:
            count = 0
            while True:
                n = os.readv(fd, _COUNT_BUFS)
                if not n:
                    return count
                count += _COUNT_BUF.count(b"\n", 0, n)
        finally:
            os.close(fd)


def read_int(path: str) -> int:
    """A small integer file such as ``/proc/sys/vm/max_map_count``, without a file object."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


#: include/uapi/linux/capability.h
CAP_SYS_RAWIO = 17


def has_capability(cap: int) -> bool:
    """Whether this process holds capability ``cap`` (a CAP_ number) in its effective set
    (``CapEff`` of ``/proc/self/status``) as the kernel's checks against the initial user
    namespace see it: a process in another user namespace (``/proc/self/uid_map`` not the
    identity map) holds none there. False when the files cannot be read."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as fh:
            if fh.read().split() != ["0", "0", "4294967295"]:
                return False
        return bool(int(read_status("self")["CapEff"], 16) >> cap & 1)
    except (OSError, KeyError, ValueError):
        return False


def overcommit_limit_pages() -> int | None:
    """The pages one call may commit under the overcommit heuristic (``vm.overcommit_memory``
    0: ``totalram_pages() + total_swap_pages``, MemTotal plus SwapTotal of ``/proc/meminfo``);
    None when the heuristic is off (1: always overcommit; 2: the strict mode's running total,
    which the model does not keep) or the files cannot be read."""
    try:
        if read_int("/proc/sys/vm/overcommit_memory") != 0:
            return None
        kib = {}
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "SwapTotal"):
                    kib[key] = int(value.split()[0])
        return (kib["MemTotal"] + kib["SwapTotal"]) * 1024 // abi.PAGE_SIZE
    except (OSError, ValueError, KeyError):
        return None


def readahead_limits(path: str) -> tuple[int, int] | None:
    """``(ra_pages, io_pages)`` of the block device holding ``path``: its backing_dev_info's
    ``read_ahead_kb`` (what ``file_ra_state_init()`` copies into a file opened there) and
    ``max_sectors_kb`` (``bdi->io_pages``, the cap of ``MADV_WILLNEED``), in pages. None when
    ``path`` is on no block device (tmpfs, an anonymous device) or sysfs cannot be read. A
    partition reads its disk's queue."""
    try:
        dev = os.stat(path).st_dev
        node = os.path.realpath(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        for queue in (os.path.join(node, "queue"), os.path.join(os.path.dirname(node), "queue")):
            if os.path.isdir(queue):
                return (read_int(os.path.join(queue, "read_ahead_kb")) * 1024 // abi.PAGE_SIZE,
                        read_int(os.path.join(queue, "max_sectors_kb")) * 1024 // abi.PAGE_SIZE)
    except (OSError, ValueError):
        pass
    return None


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
