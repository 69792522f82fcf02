"""Frames and page cache: the model's ``struct folio`` and ``struct address_space``.

Owns ``Frame`` (one base page: its first byte, its kind and its mapcount), the
shared zero page, and ``MemFile`` (a memfd/shmem file: size, seals, page cache).
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
    ``!PG_swapbacked``) and not written since; reclaim discards it instead of keeping it."""

    __slots__ = ("byte", "kind", "mapcount", "lazyfree")

    def __init__(self, byte: int, kind: int):
        self.byte = byte
        self.kind = kind
        self.mapcount = 0
        self.lazyfree = False

    def __repr__(self) -> str:
        return f"<Frame {('anon', 'file', 'zero')[self.kind]} byte={self.byte} map={self.mapcount}>"


#: mm/memory.c: the zero page a read fault on private anon memory maps.
ZERO_PAGE = Frame(0, FRAME_ZERO)


#: Pages of a PMD-sized large folio (HPAGE_PMD_NR; pagetable.py cannot be imported here).
_FOLIO_PAGES = 1 << (abi.PTRS_PER_TABLE.bit_length() - 1)


class MemFile:
    """A shmem file (memfd, or the object behind MAP_SHARED|MAP_ANONYMOUS), or with ``disk`` a
    regular file whose pages the page cache holds clean.

    ``size`` is in bytes; ``cache`` maps page offsets to page-cache frames. A
    named script file starts fully cached with page *i* holding ``(i + 1) & 0xff``
    (the kernel backend pwrites every page). ``label`` is the snapshot backing
    name; ``shared_anon`` marks the ``/dev/zero (deleted)`` object. ``users``
    holds the address spaces mapping it, for ``unmap_mapping_range()``.
    """

    __slots__ = ("name", "label", "size", "cache", "seals", "shared_anon", "users", "disk",
                 "folios")

    def __init__(self, name: str, size: int, *, fill_pattern: bool = True, shared_anon: bool = False,
                 disk: bool = False):
        self.name = name
        self.disk = disk  # a regular file on a disk filesystem (no seals), not shmem
        self.label = "shared-anon" if shared_anon else name
        self.size = size
        self.seals = 0
        self.shared_anon = shared_anon
        self.cache: dict[int, Frame] = {}
        self.users: list = []
        self.folios: dict[int, int] = {}  # large folios: first pgoff -> pages (a power of two)
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
            frame = self.cache[pgoff] = Frame(0, FRAME_FILE)
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
        if last - first > len(self.cache):
            for k in [k for k in self.cache if first <= k <= last]:
                del self.cache[k]
        else:
            for k in range(first, last + 1):
                self.cache.pop(k, None)
