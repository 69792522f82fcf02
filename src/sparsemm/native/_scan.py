"""Page-state queries for a range of this process: PAGEMAP_SCAN, or pagemap words.

Owns one question, "which pages in [addr, addr+length) have category C", answered
as merged byte ranges. Uses the ``PAGEMAP_SCAN`` ioctl (fs/proc/task_mmu.c, 6.7+;
``PAGE_IS_GUARD`` 6.15+), which skips unpopulated page tables, and falls back to
reading ``/proc/self/pagemap`` words when the kernel refuses the ioctl.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from sparsemm import abi
from sparsemm.native import libc

_u64 = ctypes.c_uint64


class _PmScanArg(ctypes.Structure):
    # include/uapi/linux/fs.h: struct pm_scan_arg (96 bytes)
    _fields_ = [("size", _u64), ("flags", _u64), ("start", _u64), ("end", _u64),
                ("walk_end", _u64), ("vec", _u64), ("vec_len", _u64), ("max_pages", _u64),
                ("category_inverted", _u64), ("category_mask", _u64),
                ("category_anyof_mask", _u64), ("return_mask", _u64)]


class _PageRegion(ctypes.Structure):
    _fields_ = [("start", _u64), ("end", _u64), ("categories", _u64)]


_ioctl = libc._fn("ioctl", ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_VEC_LEN = 512

# Which pagemap word bit stands for each PAGEMAP_SCAN category we ask about.
_WORD_BIT = {abi.PAGE_IS_GUARD: abi.PM_GUARD_REGION, abi.PAGE_IS_PRESENT: abi.PM_PRESENT}

#: Per category: absent until the first call, then whether PAGEMAP_SCAN answered.
_scan_works: dict[int, bool] = {}


def _scan_ioctl(addr: int, length: int, category: int) -> list[tuple[int, int]]:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        vec = (_PageRegion * _VEC_LEN)()
        arg = _PmScanArg(size=ctypes.sizeof(_PmScanArg), start=addr, end=addr + length,
                         vec=ctypes.addressof(vec), vec_len=_VEC_LEN,
                         category_mask=category, return_mask=category)
        out: list[tuple[int, int]] = []
        while True:
            n = _ioctl(fd, abi.PAGEMAP_SCAN, ctypes.byref(arg))
            if n < 0:
                libc._raise("ioctl(PAGEMAP_SCAN)")
            for region in vec[:n]:
                if out and out[-1][1] == region.start:
                    out[-1] = (out[-1][0], region.end)
                else:
                    out.append((region.start, region.end))
            if arg.walk_end >= addr + length or n < _VEC_LEN:
                return out
            arg.start = arg.walk_end
    finally:
        os.close(fd)


def _scan_words(addr: int, length: int, category: int) -> list[tuple[int, int]]:
    bit = _WORD_BIT[category]
    out: list[tuple[int, int]] = []
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos, end = addr, addr + length
        while pos < end:
            npages = min((end - pos) // abi.PAGE_SIZE, 1 << 16)
            data = os.pread(fd, npages * 8, (pos // abi.PAGE_SIZE) * 8)
            for i, word in enumerate(struct.unpack(f"<{len(data) // 8}Q", data)):
                if word & bit:
                    page_addr = pos + i * abi.PAGE_SIZE
                    if out and out[-1][1] == page_addr:
                        out[-1] = (out[-1][0], page_addr + abi.PAGE_SIZE)
                    else:
                        out.append((page_addr, page_addr + abi.PAGE_SIZE))
            pos += npages * abi.PAGE_SIZE
    finally:
        os.close(fd)
    return out


def ranges_with(addr: int, length: int, category: int) -> list[tuple[int, int]]:
    """Merged ``(start, end)`` byte addresses of pages in the range having ``category``.

    ``category`` is ``abi.PAGE_IS_GUARD`` or ``abi.PAGE_IS_PRESENT``. O(populated
    page tables) with PAGEMAP_SCAN, O(pages) without.
    """
    if length <= 0:
        return []
    if _scan_works.get(category, True):
        try:
            out = _scan_ioctl(addr, length, category)
            _scan_works[category] = True
            return out
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP):
                raise
            _scan_works[category] = False
    return _scan_words(addr, length, category)
