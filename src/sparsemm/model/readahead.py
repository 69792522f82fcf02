"""Readahead of a disk file's page cache (mm/readahead.c and the mmap hooks in mm/filemap.c).

Owns which pages a fault on a disk file reads into the cache, as which folios, and where
the ``PG_readahead`` mark goes: mmap read-around, ``VM_SEQ_READ``/``VM_RAND_READ``, the
``VM_HUGEPAGE`` PMD-order read, async readahead at a marked folio, ``MADV_WILLNEED``.
Works on a ``MemFile`` with ``disk`` set; never touches page tables (fault.py maps).
"""

from __future__ import annotations

from sparsemm import abi
from sparsemm.model.frames import FRAME_FILE, Frame, MemFile

_VM_RAND_READ, _VM_SEQ_READ = int(abi.VmFlag.RAND_READ), int(abi.VmFlag.SEQ_READ)
_VM_HUGEPAGE = int(abi.VmFlag.HUGEPAGE)

#: mm/filemap.c: MMAP_LOTSAMISS: past this many mmap misses, read-around stops.
MMAP_LOTSAMISS = 100
#: HPAGE_PMD_ORDER (pagetable.py cannot be imported here); also MAX_PAGECACHE_ORDER on x86-64.
_PMD_ORDER = abi.PTRS_PER_TABLE.bit_length() - 1
#: mm/readahead.c force_page_cache_ra(): MADV_WILLNEED reads in 2 MiB chunks.
_WILLNEED_CHUNK = 1 << _PMD_ORDER


def _alloc_folio(f: MemFile, index: int, order: int, mark: int) -> bool:
    """ra_alloc_folio() + filemap_add_folio(): cache a new folio of ``1 << order`` pages at
    ``index`` read from disk, with ``PG_readahead`` when it holds ``mark``; False (EEXIST)
    when a page of it is cached already."""
    n = 1 << order
    cache = f.cache
    if any(index + i in cache for i in range(n)):
        return False
    flag = index == mark & ~(n - 1)
    for i in range(n):
        frame = cache[index + i] = Frame(f.on_disk.pop(index + i, 0), FRAME_FILE)
        frame.ra_mark = flag
    if n > 1:
        f.folios[index] = n
    return True


def _ra_unbounded(f: MemFile, index: int, nr: int, lookahead: int) -> None:
    """page_cache_ra_unbounded(): cache the missing pages of ``[index, index + nr)`` as base
    pages, skipping cached ones; the page ``lookahead`` before the end gets the mark."""
    mark = nr - lookahead if lookahead <= nr else -1
    for i in range(nr):
        if index + i not in f.cache:
            _alloc_folio(f, index + i, 0, index + i if i == mark else -1)


def do_page_cache_ra(f: MemFile, index: int, nr: int, lookahead: int) -> None:
    """do_page_cache_ra(): ``_ra_unbounded`` with ``nr`` clamped to EOF (nothing past it)."""
    end = f.npages - 1
    if index > end:
        return
    _ra_unbounded(f, index, min(nr, end - index + 1), lookahead)


def page_cache_ra_order(f: MemFile, index: int) -> None:
    """page_cache_ra_order(): read the window ``f.ra`` describes from ``index`` in folios of
    ``ra.order`` (smaller where ``index`` is unaligned or EOF is near; mark on the folio
    holding ``index + size - async_size``); at the first page already cached, fall back to
    base pages for the rest of the window. O(window)."""
    ra = f.ra
    start = index
    if f.npages == 0:
        return
    if ra.size < 4:
        do_page_cache_ra(f, index, ra.size, ra.async_size)
        return
    limit = min(f.npages - 1, index + ra.size - 1)
    mark = index + ra.size - ra.async_size
    new_order = min(_PMD_ORDER, ra.order, ra.size.bit_length() - 1)
    ra.order = new_order
    while index <= limit:
        order = new_order
        if index & ((1 << order) - 1):
            order = (index & -index).bit_length() - 1  # __ffs(): align down to the index
        while order > 0 and index + (1 << order) - 1 > limit:
            order -= 1  # no folio past EOF
        if not _alloc_folio(f, index, order, mark):
            if ra.size > index - start:
                do_page_cache_ra(f, index, ra.size - (index - start), ra.async_size)
            return
        index += 1 << order


def _next_ra_size(cur: int, max_pages: int) -> int:
    """get_next_ra_size(): the next window, ramping up x4 / x2 to ``max_pages``."""
    if cur < max_pages // 16:
        return 4 * cur
    if cur <= max_pages // 2:
        return 2 * cur
    return max_pages


def sync_mmap_readahead(f: MemFile, vm_flags: int, pgoff: int) -> None:
    """do_sync_mmap_readahead() for a fault on ``pgoff``, missing from the cache:
    ``VM_HUGEPAGE`` reads the PMD-aligned 2 MiB (two with no ``VM_RAND_READ``) as PMD folios;
    ``VM_RAND_READ`` reads nothing (the fault reads one page); ``VM_SEQ_READ`` reads forward
    (page_cache_sync_ra(): from page 0 a whole window marked halfway, elsewhere ``ra_pages``
    pages unmarked); else read-around: ``ra_pages`` pages centred on ``pgoff``, marked a
    quarter from the end, until ``mmap_miss`` passes MMAP_LOTSAMISS. O(window)."""
    ra = f.ra
    if vm_flags & _VM_HUGEPAGE:
        n = 1 << _PMD_ORDER
        ra.size = n if vm_flags & _VM_RAND_READ else 2 * n
        ra.async_size = n
        ra.order = _PMD_ORDER
        page_cache_ra_order(f, pgoff & ~(n - 1))
        return
    if vm_flags & _VM_RAND_READ or not ra.ra_pages:
        return
    if vm_flags & _VM_SEQ_READ:
        # (a fault never follows a read() here: ra->prev_pos is -1, so only page 0 starts a
        # new sequential window; elsewhere the previous page is no cached run longer than
        # the request, a "small random read" of ra_pages pages)
        if pgoff:
            do_page_cache_ra(f, pgoff, ra.ra_pages, 0)
            return
        ra.start, ra.size, ra.async_size = 0, ra.ra_pages, ra.ra_pages >> 1
        ra.order = 0
        page_cache_ra_order(f, 0)
        return
    if ra.mmap_miss < MMAP_LOTSAMISS * 10:
        ra.mmap_miss += 1
    if ra.mmap_miss > MMAP_LOTSAMISS:
        return
    ra.start = max(0, pgoff - ra.ra_pages // 2)
    ra.size = ra.ra_pages
    ra.async_size = ra.ra_pages // 4
    ra.order = 0
    page_cache_ra_order(f, ra.start)


def async_mmap_readahead(f: MemFile, vm_flags: int, pgoff: int) -> bool:
    """do_async_mmap_readahead() for a fault that found ``pgoff`` cached (first try only):
    one mmap hit (``mmap_miss`` - 1), and at a marked folio the mark is cleared and the
    next window read (page_cache_async_ra()). Returns whether it dropped the mmap lock
    (a marked folio: the fault is retried). No-op in a ``VM_RAND_READ`` VMA. O(window)."""
    ra = f.ra
    if vm_flags & _VM_RAND_READ or not ra.ra_pages:
        return False
    if ra.mmap_miss:
        ra.mmap_miss -= 1
    frame = f.cache[pgoff]
    if not frame.ra_mark:
        return False
    folio = f.folio_of(pgoff) if f.folios else None
    index, n = folio if folio is not None else (pgoff, 1)
    for i in range(n):
        f.cache[index + i].ra_mark = False
    max_pages = ra.ra_pages
    if index == ra.start + ra.size - ra.async_size:  # the expected mark: the next window
        ra.start += ra.size
        ra.size = _next_ra_size(ra.size, max_pages)
    else:  # a mark without valid state: the window starts at the next page not cached
        start = next((p for p in range(index + 1, index + 1 + max_pages) if p not in f.cache), None)
        if start is None:
            return True
        ra.start = start
        ra.size = _next_ra_size(start - index + ra.ra_pages, max_pages)
    ra.async_size = ra.size
    ra.order += 2
    page_cache_ra_order(f, ra.start)
    return True


def willneed(f: MemFile, first: int, last: int) -> None:
    """MADV_WILLNEED / POSIX_FADV_WILLNEED (force_page_cache_ra()): read the missing pages
    of ``first..last`` (inclusive; at most ``max(io_pages, ra_pages)`` pages, in 2 MiB
    chunks, unmarked), up to EOF. O(pages)."""
    ra = f.ra
    nr = min(last - first + 1, max(ra.io_pages, ra.ra_pages))
    index = first
    while nr > 0:
        chunk = min(nr, _WILLNEED_CHUNK)
        do_page_cache_ra(f, index, chunk, 0)
        index += chunk
        nr -= chunk
