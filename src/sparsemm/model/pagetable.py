"""PageTable: the model's x86-64 4-level page tables (PGD -> PUD -> PMD -> PTE).

Owns the leaf entries (a present ``Frame`` or the guard marker) and the set of
table pages at every level, so page-table memory can be counted like the
kernel's ``mm_pgtables_bytes``. Knows nothing of VMAs; callers say what to zap.
"""

from __future__ import annotations

from sparsemm import abi

#: A guard PTE marker (``PTE_MARKER_GUARD``): a swap-type entry that faults with SIGSEGV.
GUARD = "GUARD"

_PTE_SHIFT = 9   # pages per PTE table: 512 (2 MiB)
_PMD_SHIFT = 18  # pages per PMD table: 512 * 512 (1 GiB)
_PUD_SHIFT = 27  # pages per PUD table: 512 GiB


class PageTable:
    """Leaf entries by page number (``addr >> PAGE_SHIFT``) plus the table pages that hold them.

    The radix is kept sparse: ``entries`` is a dict from page number to entry, and
    ``pte_tables``/``pmd_tables``/``pud_tables`` are the sets of table indices that
    exist (a table at level L covering page p has index ``p >> shift(L)``). A table
    page is allocated when the first entry below it is installed and freed only by
    ``free_pgtables()`` (never on zap: measured on 6.18, MADV_DONTNEED and guard
    removal keep tables). Entries: O(1) get/set; range ops O(min(pages, entries)).
    """

    __slots__ = ("entries", "pte_tables", "pmd_tables", "pud_tables")

    def __init__(self) -> None:
        self.entries: dict[int, object] = {}
        self.pte_tables: set[int] = set()
        self.pmd_tables: set[int] = set()
        self.pud_tables: set[int] = set()

    # -- entries ------------------------------------------------------------

    def get(self, page: int):
        return self.entries.get(page)

    def set(self, page: int, entry) -> None:
        """Install ``entry`` at ``page``, allocating the tables on the way (``__pte_alloc``)."""
        self.entries[page] = entry
        self.alloc_tables(page)

    def alloc_tables(self, page: int) -> None:
        self.pte_tables.add(page >> _PTE_SHIFT)
        self.pmd_tables.add(page >> _PMD_SHIFT)
        self.pud_tables.add(page >> _PUD_SHIFT)

    def fill_none(self, first: int, end: int, entry) -> None:
        """Install ``entry`` in every empty slot of pages ``[first, end)``, allocating tables
        once per table rather than per page (the walk of ``madvise_guard_install``). O(pages)."""
        entries = self.entries
        entries.update(dict.fromkeys([p for p in range(first, end) if p not in entries], entry))
        for shift, tables in ((_PTE_SHIFT, self.pte_tables), (_PMD_SHIFT, self.pmd_tables),
                              (_PUD_SHIFT, self.pud_tables)):
            tables.update(range(first >> shift, ((end - 1) >> shift) + 1))

    def clear(self, page: int):
        """Remove and return the entry at ``page`` (tables stay)."""
        return self.entries.pop(page, None)

    def pages_in(self, first: int, end: int) -> list[int]:
        """Pages in ``[first, end)`` that have an entry, ascending. O(min(end-first, n) log)."""
        if end - first <= len(self.entries):
            e = self.entries
            return [p for p in range(first, end) if p in e]
        return sorted(p for p in self.entries if first <= p < end)

    def has_pte_table(self, page: int) -> bool:
        return (page >> _PTE_SHIFT) in self.pte_tables

    # -- table pages --------------------------------------------------------

    def table_pages(self) -> int:
        """Page-table pages below the PGD: PTE + PMD + PUD tables (``mm_pgtables_bytes / PAGE_SIZE``)."""
        return len(self.pte_tables) + len(self.pmd_tables) + len(self.pud_tables)

    def pgtables_bytes(self) -> int:
        return self.table_pages() * abi.PAGE_SIZE

    def free_pgtables(self, start: int, end: int, floor: int, ceiling: int) -> None:
        """Free the tables that map only ``[start, end)`` (mm/memory.c ``free_pgd_range()``).

        ``floor``/``ceiling`` (bytes) are the end of the previous VMA and the start of the
        next (ceiling 0 = no next VMA). A table covering ``[T, T+S)`` is freed when it
        meets ``[start, end)``, ``T >= floor`` and ``T + S <= ceiling``: the kernel's
        rounding rules, restated per table. Entries inside must already be zapped.
        O(tables in range).
        """
        top = ceiling if ceiling else (1 << 48)
        for shift, tables in ((_PTE_SHIFT, self.pte_tables), (_PMD_SHIFT, self.pmd_tables),
                              (_PUD_SHIFT, self.pud_tables)):
            span = 1 << (shift + abi.PAGE_SHIFT)
            first = start // span
            last = (end - 1) // span
            if last - first > len(tables):
                cands = [t for t in tables if first <= t <= last]
            else:
                cands = [t for t in range(first, last + 1) if t in tables]
            for t in cands:
                t_start = t * span
                if t_start >= floor and t_start + span <= top:
                    tables.discard(t)

    def copy_tables_for(self, page: int) -> None:
        """Allocate the tables a copied entry at ``page`` needs (fork's ``copy_pte_range``)."""
        self.alloc_tables(page)
