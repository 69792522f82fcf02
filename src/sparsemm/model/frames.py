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
    """One physical base page. ``mapcount`` counts PTEs mapping it (the zero page's is not kept)."""

    __slots__ = ("byte", "kind", "mapcount")

    def __init__(self, byte: int, kind: int):
        self.byte = byte
        self.kind = kind
        self.mapcount = 0

    def __repr__(self) -> str:
        return f"<Frame {('anon', 'file', 'zero')[self.kind]} byte={self.byte} map={self.mapcount}>"


#: mm/memory.c: the zero page a read fault on private anon memory maps.
ZERO_PAGE = Frame(0, FRAME_ZERO)


class MemFile:
    """A shmem file (memfd, or the object behind MAP_SHARED|MAP_ANONYMOUS), or with ``disk`` a
    regular file whose pages the page cache holds clean.

    ``size`` is in bytes; ``cache`` maps page offsets to page-cache frames. A
    named script file starts fully cached with page *i* holding ``(i + 1) & 0xff``
    (the kernel backend pwrites every page). ``label`` is the snapshot backing
    name; ``shared_anon`` marks the ``/dev/zero (deleted)`` object. ``users``
    holds the address spaces mapping it, for ``unmap_mapping_range()``.
    """

    __slots__ = ("name", "label", "size", "cache", "seals", "shared_anon", "users", "disk")

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

    def drop_range(self, first: int, last: int) -> None:
        """Remove page-cache pages ``first..last`` inclusive (truncate / hole punch). O(pages)."""
        if last - first > len(self.cache):
            for k in [k for k in self.cache if first <= k <= last]:
                del self.cache[k]
        else:
            for k in range(first, last + 1):
                self.cache.pop(k, None)
