"""Page-state queries on a pagemap: which pages of a range have category C (PAGEMAP_SCAN or pagemap words).

Owns one question, "which pages in [addr, addr+length) have category C", answered as
merged byte ranges, for this process (``/proc/self/pagemap``) or for any process whose
pagemap the caller opened (``fd``). Uses the ``PAGEMAP_SCAN`` ioctl (fs/proc/task_mmu.c,
6.7+; ``PAGE_IS_GUARD`` 6.15+), which skips unpopulated page tables, and falls back to
reading pagemap words when the kernel refuses the ioctl. Knows nothing about VMAs.
"""

from __future__ import annotations

import ctypes
import errno
import os

from sparsemm import abi
from sparsemm.native import libc

__all__ = ["METHOD_SCAN", "METHOD_WORDS", "ranges_with", "scan_ioctl", "scan_words", "scan_refused",
           "pagemap_scan"]

_u64 = ctypes.c_uint64

#: ``ranges_with(method=...)``: the ioctl, or pagemap words (one u64 per page).
METHOD_SCAN = "pagemap_scan"
METHOD_WORDS = "pagemap_words"


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
#: Pages per pread of pagemap words: 1 MiB of words, 512 MiB of address space.
_WORDS_CHUNK = 1 << 17

# Which pagemap word bit stands for each PAGEMAP_SCAN category we ask about.
_WORD_BIT = {abi.PAGE_IS_GUARD: abi.PM_GUARD_REGION, abi.PAGE_IS_PRESENT: abi.PM_PRESENT}

#: Per category: absent until the first call, then whether PAGEMAP_SCAN answered.
_scan_works: dict[int, bool] = {}


def scan_refused(exc: OSError) -> bool:
    """True if ``exc`` (from ``scan_ioctl``) means the kernel lacks the ioctl or the
    category (ENOTTY before 6.7, EINVAL for a category it does not know)."""
    return exc.errno in (errno.EINVAL, errno.ENOTTY, errno.EOPNOTSUPP)


def _push(out: list[tuple[int, int]], start: int, end: int) -> None:
    if out and out[-1][1] == start:
        out[-1] = (out[-1][0], end)
    else:
        out.append((start, end))


def scan_ioctl(fd: int, addr: int, length: int, category: int) -> list[tuple[int, int]]:
    """Merged byte ranges of the pages in ``[addr, addr+length)`` having ``category``, asked
    of the pagemap open at ``fd`` with ``PAGEMAP_SCAN``. Raises ``OSError`` as the ioctl
    fails (``scan_refused`` tells a missing feature). O(populated page tables)."""
    out: list[tuple[int, int]] = []
    if length <= 0:
        return out
    end = addr + length
    vec = (_PageRegion * _VEC_LEN)()
    arg = _PmScanArg(size=ctypes.sizeof(_PmScanArg), start=addr, end=end,
                     vec=ctypes.addressof(vec), vec_len=_VEC_LEN,
                     category_mask=category, return_mask=category)
    while True:
        n = _ioctl(fd, abi.PAGEMAP_SCAN, ctypes.byref(arg))
        if n < 0:
            libc._raise("ioctl(PAGEMAP_SCAN)")
        for region in vec[:n]:
            _push(out, region.start, region.end)
        # walk_end: where the walk stopped; below end only when the vector filled up.
        if arg.walk_end >= end or n < _VEC_LEN:
            return out
        arg.start = arg.walk_end


def pagemap_scan(fd: int, start: int, end: int, *, category_mask: int = 0, anyof_mask: int = 0,
                 inverted: int = 0, return_mask: int = abi.PM_SCAN_CATEGORIES, max_pages: int = 0,
                 vec_len: int = _VEC_LEN) -> tuple[list[tuple[int, int, int]], int]:
    """One raw ``PAGEMAP_SCAN`` ioctl on the pagemap open at ``fd``, exactly as asked (the
    op-script ``pagemap_scan`` op): ``([(start, end, categories), ...], walk_end)`` as the
    kernel filled them, at most ``vec_len`` regions. Every argument is passed as the
    kernel's u64; raises ``OSError`` with the ioctl's errno. O(vec_len + populated tables)."""
    vec = (_PageRegion * max(vec_len, 1))()
    arg = _PmScanArg(size=ctypes.sizeof(_PmScanArg), start=start, end=end,
                     vec=ctypes.addressof(vec) if vec_len else 0, vec_len=vec_len,
                     max_pages=max_pages, category_inverted=inverted, category_mask=category_mask,
                     category_anyof_mask=anyof_mask, return_mask=return_mask)
    n = _ioctl(fd, abi.PAGEMAP_SCAN, ctypes.byref(arg))
    if n < 0:
        libc._raise("ioctl(PAGEMAP_SCAN)")
    return [(r.start, r.end, r.categories) for r in vec[:n]], arg.walk_end


# bytes.translate tables: byte -> 1 if (byte & mask) else 0, per bit mask of one byte.
_HIT_TABLES = {1 << b: bytes(int(bool(v & (1 << b))) for v in range(256)) for b in range(8)}


def scan_words(fd: int, addr: int, length: int, category: int) -> list[tuple[int, int]]:
    """``scan_ioctl``'s answer from pagemap words (one little-endian u64 per page) read at
    ``fd``. O(pages), in C-level slices: the byte holding the category's bit is cut out
    of each word and runs of set bits are found with ``bytes.find``."""
    bit = _WORD_BIT[category].bit_length() - 1
    column, table = bit // 8, _HIT_TABLES[1 << (bit % 8)]
    page = abi.PAGE_SIZE
    out: list[tuple[int, int]] = []
    pos, end = addr, addr + length
    while pos < end:
        npages = min((end - pos) // page, _WORDS_CHUNK)
        want = npages * abi.PAGEMAP_ENTRY_BYTES
        data = os.pread(fd, want, (pos // page) * abi.PAGEMAP_ENTRY_BYTES)
        if not data:
            break  # beyond the end of the address space: nothing there
        got = len(data) // abi.PAGEMAP_ENTRY_BYTES
        hits = data[column::abi.PAGEMAP_ENTRY_BYTES][:got].translate(table)
        i = hits.find(1)
        while i >= 0:
            j = hits.find(0, i)
            if j < 0:
                j = got
            _push(out, pos + i * page, pos + j * page)
            i = hits.find(1, j)
        pos += got * page
    return out


def ranges_with(addr: int, length: int, category: int, *, fd: int | None = None,
                method: str | None = None) -> list[tuple[int, int]]:
    """Merged ``(start, end)`` byte addresses of pages in the range having ``category``.

    ``category`` is ``abi.PAGE_IS_GUARD`` or ``abi.PAGE_IS_PRESENT``. ``fd``: an open
    ``/proc/PID/pagemap`` (any process the caller may read); None reads this process's.
    ``method``: ``METHOD_SCAN``, ``METHOD_WORDS`` or None (the ioctl where this kernel
    has it for the category, words otherwise; the answer is cached per category).
    O(populated page tables) with PAGEMAP_SCAN, O(pages) without.
    """
    if length <= 0:
        return []
    if method not in (None, METHOD_SCAN, METHOD_WORDS):
        raise ValueError(f"unknown pagemap method {method!r}: use {METHOD_SCAN} or {METHOD_WORDS}")
    own = fd is None
    if own:
        fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if method == METHOD_SCAN:
            return scan_ioctl(fd, addr, length, category)
        if method is None and _scan_works.get(category, True):
            try:
                out = scan_ioctl(fd, addr, length, category)
                _scan_works[category] = True
                return out
            except OSError as exc:
                if not scan_refused(exc):
                    raise
                _scan_works[category] = False
        return scan_words(fd, addr, length, category)
    finally:
        if own:
            os.close(fd)


def _on_self(fn, addr: int, length: int, category: int) -> list[tuple[int, int]]:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fn(fd, addr, length, category)
    finally:
        os.close(fd)


def _scan_ioctl(addr: int, length: int, category: int) -> list[tuple[int, int]]:
    """``scan_ioctl`` on this process (kept for callers of the earlier private name)."""
    return _on_self(scan_ioctl, addr, length, category)


def _scan_words(addr: int, length: int, category: int) -> list[tuple[int, int]]:
    """``scan_words`` on this process (kept for callers of the earlier private name)."""
    return _on_self(scan_words, addr, length, category)
