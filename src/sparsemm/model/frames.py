"""Frames and page cache: the model's ``struct folio`` and ``struct address_space``.

Owns ``Frame`` (one base page: its first byte, its kind and its mapcount), the
shared zero page, and ``MemFile`` (a memfd/shmem or disk file: size, seals, page cache,
a disk file's on-disk bytes and readahead state; the readahead rules are readahead.py's).
Only the first byte of a page is modelled: it is all an op script can observe.
"""

from __future__ import annotations

from sparsemm import abi

FRAME_ANON = 0  # private anonymous page (incl. CoW copies of file pages)
FRAME_FILE = 1  # page-cache page of a MemFile
FRAME_ZERO = 2  # the shared zero page


class Frame:
    """One physical base page. ``mapcount`` counts PTEs mapping it (the zero page's is not kept).
    ``lazyfree``: an anonymous page ``MADV_FREE`` made clean (``folio_mark_lazyfree()``,
    ``!PG_swapbacked``) and not written since; reclaim discards it instead of keeping it.
    A disk file's page-cache page: ``dirty`` (written since it was read; no writeback is
    modelled) and ``ra_mark`` (``PG_readahead``, the bit ``PG_reclaim`` shares: set on the
    folio where the next async readahead starts, or by reclaim on a dirty folio) and
    ``stale`` (not ``PG_uptodate``: a page read in only to zero part of it)."""

    __slots__ = ("byte", "kind", "mapcount", "lazyfree", "dirty", "ra_mark", "stale")

    def __init__(self, byte: int, kind: int):
        self.byte = byte
        self.kind = kind
        self.mapcount = 0
        self.lazyfree = False
        self.dirty = False
        self.ra_mark = False
        self.stale = False

    def __repr__(self) -> str:
        return f"<Frame {('anon', 'file', 'zero')[self.kind]} byte={self.byte} map={self.mapcount}>"


#: mm/memory.c: the zero page a read fault on private anon memory maps.
ZERO_PAGE = Frame(0, FRAME_ZERO)


#: include/linux/mm.h: VM_READAHEAD_PAGES, the default readahead window (128 KiB) in pages.
VM_READAHEAD_PAGES = 32


class RaState:
    """``struct file_ra_state`` of a disk file's descriptor: ``ra_pages`` (the device's
    ``read_ahead_kb``), ``io_pages`` (its ``max_sectors_kb``), the current window
    (``start``, ``size``, ``async_size``, folio ``order``) and ``mmap_miss``."""

    __slots__ = ("ra_pages", "io_pages", "start", "size", "async_size", "order", "mmap_miss")

    def __init__(self, ra_pages: int, io_pages: int):
        self.ra_pages = ra_pages
        self.io_pages = io_pages
        self.start = self.size = self.async_size = self.order = self.mmap_miss = 0


#: Pages of a PMD-sized large folio (HPAGE_PMD_NR; pagetable.py cannot be imported here).
_FOLIO_PAGES = 1 << (abi.PTRS_PER_TABLE.bit_length() - 1)


class MemFile:
    """A shmem file (memfd, or the object behind MAP_SHARED|MAP_ANONYMOUS), or with ``disk`` a
    regular file whose pages the page cache holds clean.

    ``size`` is in bytes; ``cache`` maps page offsets to page-cache frames. A
    named script file starts fully cached with page *i* holding ``(i + 1) & 0xff``
    (the kernel backend pwrites every page). ``label`` is the snapshot backing
    name; ``shared_anon`` marks the ``/dev/zero (deleted)`` object. ``users``
    holds the address spaces mapping it, for ``unmap_mapping_range()``. A disk file
    (``disk``) reads a page missing from its cache from ``on_disk`` (readahead.py).
    """

    __slots__ = ("name", "label", "size", "cache", "seals", "shared_anon", "users", "disk",
                 "folios", "on_disk", "ra", "hugetlb_owner", "hugetlb_resv")

    def __init__(self, name: str, size: int, *, fill_pattern: bool = True, shared_anon: bool = False,
                 disk: bool = False, ra_pages: int = VM_READAHEAD_PAGES, io_pages: int = 0):
        self.name = name
        self.disk = disk  # a regular file on a disk filesystem (no seals), not shmem
        # a disk file: the bytes of pages reclaim evicted (a page neither cached nor here
        # reads as 0: a hole), and its descriptor's file_ra_state
        self.on_disk: dict[int, int] = {}
        self.ra = RaState(ra_pages, io_pages) if disk else None
        self.label = "shared-anon" if shared_anon else name
        self.size = size
        self.seals = 0
        self.shared_anon = shared_anon
        self.cache: dict[int, Frame] = {}
        self.users: list = []
        self.folios: dict[int, int] = {}  # large folios: first pgoff -> pages (a power of two)
        # a hugetlbfs file: the huge pages (indices) reserved and not yet faulted in, and the
        # address space owning them for a private mapping (HPAGE_RESV_OWNER; None: shared,
        # the file holds them)
        self.hugetlb_resv: set[int] = set()
        self.hugetlb_owner = None
        if fill_pattern:
            for i in range((size + abi.PAGE_SIZE - 1) >> abi.PAGE_SHIFT):
                self.cache[i] = Frame((i + 1) & 0xFF, FRAME_FILE)

    def __repr__(self) -> str:
        return f"<MemFile {self.label} size={self.size} cached={len(self.cache)}>"

    @property
    def npages(self) -> int:
        """Pages up to EOF (``DIV_ROUND_UP(i_size, PAGE_SIZE)``)."""
        return (self.size + abi.PAGE_SIZE - 1) >> abi.PAGE_SHIFT

    def get_page(self, pgoff: int) -> Frame | None:
        """``shmem_get_folio(SGP_CACHE)``: the cached page, allocating a zero page-cache page
        for a hole; None beyond EOF (the fault is SIGBUS). O(1)."""
        if pgoff >= self.npages:
            return None
        frame = self.cache.get(pgoff)
        if frame is None:
            frame = self.cache[pgoff] = Frame(self.on_disk.pop(pgoff, 0), FRAME_FILE)
        return frame

    def folio_page(self, pgoff: int) -> Frame:
        """The page ``pgoff`` of a large folio, allocated (zeroed) if missing, also past EOF:
        a shmem collapse builds the whole 2 MiB folio even where the file ends inside it,
        and the PMD maps it across i_size. O(1)."""
        frame = self.cache.get(pgoff)
        if frame is None:
            frame = self.cache[pgoff] = Frame(0, FRAME_FILE)
        return frame

    def folio_of(self, pgoff: int) -> tuple[int, int] | None:
        """``(first pgoff, pages)`` of the large folio holding ``pgoff``, or None for a base
        page. Folios are naturally aligned powers of two. O(log2 of the PMD size)."""
        if self.folios:
            n = 2
            while n <= _FOLIO_PAGES:
                start = pgoff & ~(n - 1)
                if self.folios.get(start) == n:
                    return start, n
                n <<= 1
        return None

    def split_folio(self, pgoff: int) -> tuple[int, int] | None:
        """Split the large folio holding ``pgoff`` the way truncation does (``folio_split()``,
        non-uniform): halve it, keep the half without ``pgoff`` whole, and go on with the
        other half until ``pgoff`` is a base page. Returns the folio that was split (its pages
        must be unmapped everywhere: a page-cache folio is not remapped after a split), or
        None. O(log2 of its size)."""
        found = self.folio_of(pgoff)
        if found is None:
            return None
        start, n = found
        del self.folios[start]
        s = start
        while n > 1:
            n >>= 1
            other = s + n if pgoff < s + n else s
            if n > 1:
                self.folios[other] = n
            if pgoff >= s + n:
                s += n
        return found

    def drop_range(self, first: int, last: int) -> None:
        """Remove page-cache pages ``first..last`` inclusive (truncate / hole punch), with the
        large folios inside the range (the caller split those that stick out). O(pages)."""
        if self.folios:
            self.folios = {b: n for b, n in self.folios.items() if b + n <= first or b > last}
        if self.on_disk:  # the blocks are freed too
            self.on_disk = {k: v for k, v in self.on_disk.items() if not first <= k <= last}
        if last - first > len(self.cache):
            for k in [k for k in self.cache if first <= k <= last]:
                del self.cache[k]
        else:
            for k in range(first, last + 1):
                self.cache.pop(k, None)
