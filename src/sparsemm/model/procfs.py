"""Views of a model AddressSpace as /proc/PID/{maps,smaps,pagemap} and PAGEMAP_SCAN show them.

Owns the text formats, the pagemap word encoding and ``VmaInfo`` (one VMA as /proc shows
it: what op-script snapshots are built from); reads the model, never changes it. PFN
fields are 0 (as for an unprivileged reader of pagemap).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from sparsemm import abi
from sparsemm.model.frames import FRAME_ANON, FRAME_FILE, FRAME_ZERO
from sparsemm.model.pagetable import GUARD


@dataclass(slots=True, frozen=True)
class VmaInfo:
    """One VMA as /proc/PID/smaps shows it. ``vm_start``/``vm_end`` bytes; ``pgoff`` in
    pages as maps prints it (0 for private anon); ``backing`` the file's label
    (``shared-anon`` for MAP_SHARED|MAP_ANONYMOUS) or None for private anon memory;
    ``vmflags`` the smaps ``VmFlags`` mnemonics."""

    vm_start: int
    vm_end: int
    perms: str
    backing: str | None
    pgoff: int
    vmflags: tuple[str, ...]


def vmas_in(mm, start: int, end: int) -> list[VmaInfo]:
    """The VMAs meeting ``[start, end)``, in order, as /proc shows them (the ``tree``
    design's guard entries are not VMAs, T10). O(log n + k)."""
    out = []
    for vma in mm.tree.overlapping(start, end):
        if vma.is_guard_entry:
            continue
        f = vma.vm_file
        out.append(VmaInfo(vma.vm_start, vma.vm_end, vma.perms, None if f is None else f.label,
                           vma.maps_pgoff(), tuple(abi.vmflags_to_mnemonics(vma.vm_flags))))
    return out


def mapped_end(mm, start: int, end: int) -> int:
    """The end of the last VMA or guard entry meeting ``[start, end)``, capped at ``end``;
    ``start`` if none does (how far a snapshot's page row runs, T10). O(log n)."""
    found = mm.tree.overlapping(start, end)
    return max(start, min(found[-1].vm_end, end)) if found else start

#: Device and inode columns: shmem objects show the kernel's internal tmpfs device.
_SHMEM_DEV = "00:01"


def vma_path(vma) -> str:
    """The path column: "" for private anon, ``/dev/zero (deleted)`` for shared anon,
    ``/memfd:NAME (deleted)`` for a script file."""
    f = vma.vm_file
    if f is None:
        return ""
    if f.shared_anon:
        return "/dev/zero (deleted)"
    return f"/memfd:{f.name} (deleted)"


def maps_line(vma) -> str:
    """One /proc/PID/maps line (fs/proc/task_mmu.c: show_map_vma()); the path is padded to column 73."""
    ino = 0 if vma.vm_file is None else (id(vma.vm_file) & 0xFFFFF) + 1
    dev = "00:00" if vma.vm_file is None else _SHMEM_DEV
    head = (f"{vma.vm_start:08x}-{vma.vm_end:08x} {vma.perms} "
            f"{vma.maps_pgoff() << abi.PAGE_SHIFT:08x} {dev} {ino} ")
    path = vma_path(vma)
    if path:  # show_map_vma(): seq_pad() to column 73, then the name
        head = head.ljust(73) + path
    return head  # without a name the line keeps the trailing space, as the kernel prints it


def maps(mm) -> str:
    """The whole /proc/PID/maps text. O(n)."""
    return "".join(maps_line(v) + "\n" for v in mm)


def smaps(mm) -> str:
    """/proc/PID/smaps: the maps line, size and residency lines, and exact ``VmFlags``.
    Pss equals Rss (sharing is not apportioned); Swap is 0 (no swap device)."""
    out = []
    for v in mm:
        first, end = v.vm_start >> abi.PAGE_SHIFT, v.vm_end >> abi.PAGE_SHIFT
        anon = file = 0
        for _, e in mm.pt.frames(first, end):  # guard markers count in no RSS
            if e.kind == FRAME_ANON:
                anon += 1
            elif e.kind == FRAME_FILE:
                file += 1
        rss = (anon + file) * 4
        size = (v.vm_end - v.vm_start) >> 10
        out.append(maps_line(v) + "\n")
        for key, val in (("Size", size), ("KernelPageSize", 4), ("MMUPageSize", 4), ("Rss", rss),
                         ("Pss", rss), ("Anonymous", anon * 4), ("Swap", 0),
                         ("Locked", rss if v.vm_flags & abi.VmFlag.LOCKED else 0)):
            out.append(f"{key + ':':<16}{val:>8} kB\n")
        out.append("VmFlags: " + " ".join(abi.vmflags_to_mnemonics(v.vm_flags)) + " \n")
    return "".join(out)


def pagemap_word(mm, addr: int) -> int:
    """The pagemap u64 of the page at ``addr`` (fs/proc/task_mmu.c: pte_to_pagemap_entry()):
    present pages bit 63 (+61 for page-cache pages, +56 when mapped once), guard markers
    bits 62 and 58 (docs/rules.md R-G1). PFN field 0."""
    page = addr >> abi.PAGE_SHIFT
    e = mm.pt.get(page)
    if e is None:
        if mm.tree.reserved_count:  # tree design T10: a guard entry reports bit 58
            v = mm.tree.find(addr)
            if v is not None and v.is_guard_entry:
                return abi.PM_GUARD_REGION
        return 0
    if e is GUARD:
        return _MARKER_WORD
    return _frame_word(e)


#: A guard marker: a swap-type PTE with the guard-region bit (pte_to_pagemap_entry()).
_MARKER_WORD = abi.PM_SWAP | abi.PM_GUARD_REGION


def _frame_word(e) -> int:
    word = abi.PM_PRESENT
    if e.kind == FRAME_FILE:
        word |= abi.PM_FILE
    if e.kind in (FRAME_ANON, FRAME_FILE) and e.mapcount == 1:
        word |= abi.PM_MMAP_EXCLUSIVE
    return word


def pagemap(mm, addr: int, npages: int) -> list[int]:
    """``npages`` pagemap words from the page of ``addr``, each as ``pagemap_word`` gives it,
    built per run: O(npages) list fill + O(PageTable.frames() + marker runs + guard entries)."""
    if npages <= 0:
        return []
    first = addr >> abi.PAGE_SHIFT
    end = first + npages
    words = [0] * npages
    if mm.tree.reserved_count:  # tree design T10: guard entries report bit 58 where no PTE is
        for v in mm.tree.overlapping(first << abi.PAGE_SHIFT, end << abi.PAGE_SHIFT):
            if v.is_guard_entry:
                lo = max(v.vm_start >> abi.PAGE_SHIFT, first) - first
                hi = min(v.vm_end >> abi.PAGE_SHIFT, end) - first
                words[lo:hi] = [abi.PM_GUARD_REGION] * (hi - lo)
    for r in mm.pt.marker_runs(first, end):
        words[r.start - first:r.stop - first] = [_MARKER_WORD] * len(r)
    for p, e in mm.pt.frames(first, end):
        words[p - first] = _frame_word(e)
    return words


# --- PAGEMAP_SCAN (fs/proc/task_mmu.c: do_pagemap_scan()) ------------------------------------

#: ``access_ok()``'s limit on x86-64 (TASK_SIZE_MAX).
_TASK_SIZE_MAX = abi.TASK_SIZE
#: A guard marker: a swap-type PTE, "written" as every PTE not write-protected by userfaultfd.
_SCAN_MARKER = abi.PAGE_IS_SWAPPED | abi.PAGE_IS_WRITTEN | abi.PAGE_IS_GUARD


def _empty_segments(mm, s: int, e: int):
    """Runs of the empty pages ``[s, e)``: an empty PTE in a PTE table reads "written"; where
    the PMD entry is empty the walk reports a hole (pagemap_scan_pte_hole()), with only the
    VMA's categories (none here: no soft-dirty, no uffd-wp). tests/conformance/ops/
    pagemap_scan_written_tables.json. O(blocks in range)."""
    cursor = s
    for r in mm.pt.pte_table_runs(s, e):
        if r.start > cursor:
            yield cursor, r.start, 0
        yield r.start, r.stop, abi.PAGE_IS_WRITTEN
        cursor = r.stop
    if cursor < e:
        yield cursor, e, 0


def _scan_segments(mm, vma, first: int, end: int):
    """``(first, end, categories)`` runs covering pages ``[first, end)`` of ``vma``, in order
    (pagemap_page_category() and pagemap_thp_category()). O(frames + marker runs in range)."""
    if vma.is_guard_entry:  # tree design T10: a guard entry reads as a guard page
        yield first, end, _SCAN_MARKER
        return
    events = [(r.start, r.stop, _SCAN_MARKER) for r in mm.pt.marker_runs(first, end)]
    for p, e in mm.pt.frames(first, end):
        cats = abi.PAGE_IS_PRESENT | abi.PAGE_IS_WRITTEN
        if e.kind == FRAME_FILE:
            cats |= abi.PAGE_IS_FILE
        elif e.kind == FRAME_ZERO:
            cats |= abi.PAGE_IS_PFNZERO
        if mm.pt.is_huge(p):
            cats |= abi.PAGE_IS_HUGE
        events.append((p, p + 1, cats))
    events.sort()
    cursor = first
    for s, e, cats in events:
        if s > cursor:
            yield from _empty_segments(mm, cursor, s)
        yield s, e, cats
        cursor = e
    if cursor < end:
        yield from _empty_segments(mm, cursor, end)


def pagemap_scan(mm, start: int, end: int, category_mask: int = 0, anyof_mask: int = 0,
                 inverted: int = 0, return_mask: int = abi.PM_SCAN_CATEGORIES, max_pages: int = 0,
                 vec_len: int = 512) -> tuple[list[tuple[int, int, int]], int]:
    """The ``PAGEMAP_SCAN`` ioctl without write-protect flags: ``([(start, end, categories)],
    walk_end)`` in bytes, as the kernel fills its vector. A page is output when
    ``(categories ^ inverted)`` has every ``category_mask`` bit and, if ``anyof_mask``, one of
    its bits; output pages merge into one region while contiguous with equal
    ``categories & return_mask``. The walk stops (``walk_end`` below ``end``) where the
    ``vec_len + 1``-th region would start, or where ``max_pages`` (0: no limit) runs out.
    OSError EINVAL (unknown category bit, unaligned start) or EFAULT (``access_ok()``).
    O(VMAs + frames + marker runs in range)."""
    if (category_mask | anyof_mask | inverted | return_mask) & ~abi.PM_SCAN_CATEGORIES:
        raise OSError(errno.EINVAL, "PAGEMAP_SCAN: unknown category")
    if start & ~abi.PAGE_MASK:
        raise OSError(errno.EINVAL, "PAGEMAP_SCAN: unaligned start")
    size = (end - start) & abi.ULONG_MAX
    if size > _TASK_SIZE_MAX or start > _TASK_SIZE_MAX - size:
        raise OSError(errno.EFAULT, "PAGEMAP_SCAN: access_ok")
    end = abi.page_align(end)
    if not vec_len:
        return [], end
    limit = max_pages or abi.ULONG_MAX
    regions: list[list[int]] = []
    found = 0
    shift = abi.PAGE_SHIFT
    for vma in mm.tree.overlapping(start, end):
        if vma.vm_flags & abi.VmFlag.PFNMAP:
            continue
        lo, hi = max(vma.vm_start, start) >> shift, min(vma.vm_end, end) >> shift
        for s, e, cats in _scan_segments(mm, vma, lo, hi):
            c = cats ^ inverted
            if (c & category_mask) != category_mask or (anyof_mask and not c & anyof_mask):
                continue
            cats &= return_mask
            stop = None
            if found + (e - s) > limit:  # pagemap_scan_output(): cut at max_pages
                e = s + (limit - found)
                stop = e
            if e > s:
                if regions and regions[-1][1] == s and regions[-1][2] == cats:
                    regions[-1][1] = e
                elif len(regions) >= vec_len:  # the vector is full
                    return [tuple(r) for r in _bytes(regions)], s << shift
                else:
                    regions.append([s, e, cats])
                found += e - s
            if stop is not None:
                return [tuple(r) for r in _bytes(regions)], stop << shift
    return [tuple(r) for r in _bytes(regions)], end


def _bytes(regions: list[list[int]]) -> list[list[int]]:
    return [[s << abi.PAGE_SHIFT, e << abi.PAGE_SHIFT, c] for s, e, c in regions]
