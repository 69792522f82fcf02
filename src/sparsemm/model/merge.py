"""VMA merging and splitting: the rules of mm/vma.c, applied to a ``VmaTree``.

Owns mergeability (``is_mergeable_vma``, ``is_mergeable_anon_vma``), the merge
state and its outcome (``MergeState``, ``MergeOutcome``), the two merge entry
points (new range: mmap/mremap; existing range: mprotect, mlock, madvise) and
``split_vma``. Touches only VMA fields and the tree, never PTEs.
"""

from __future__ import annotations

import enum
import errno
from typing import Any

from sparsemm import abi
from sparsemm.model._flags import _NOT_IGNORE_MERGE, _VM_SPECIAL, _VM_STICKY  # plain ints: see _flags
from sparsemm.model.pagetable import HPAGE_PMD_NR
from sparsemm.model.vma import Vma

HPAGE_SIZE = HPAGE_PMD_NR << abi.PAGE_SHIFT  # a 2 MiB huge page, in bytes


def is_mergeable_vma(other: Vma, vm_flags: int, vm_file) -> bool:
    """mm/vma.c: is_mergeable_vma(): equal flags ignoring VM_IGNORE_MERGE, same file."""
    return not ((int(other.vm_flags) ^ int(vm_flags)) & _NOT_IGNORE_MERGE) and other.vm_file is vm_file


def is_mergeable_anon_vma(tgt: Vma, src_anon, src: Vma | None, copied_from: Vma | None = None) -> bool:
    """mm/vma.c: is_mergeable_anon_vma(): anon_vmas compatible; fork children neither lend nor borrow."""
    tgt_anon = tgt.anon_vma
    if tgt_anon is None and src_anon is not None:  # case 1: dup src's anon_vma into tgt
        if src is not None and src.anon_vma_forked:
            return False
        return not (copied_from is not None and copied_from.anon_vma is not None
                    and copied_from.anon_vma_forked)
    if tgt_anon is not None and src_anon is None:  # case 2: use tgt's anon_vma
        return not tgt.anon_vma_forked
    return src_anon is tgt_anon  # case 3: already shared (or both None)


class MergeOutcome(enum.Enum):
    """mm/vma.h ``enum vma_merge_state``: what a merge attempt came to. (No
    ``VMA_MERGE_ERROR_NOMEM``: the model never fails to allocate.)"""

    START = "start"  # not tried yet
    NOMERGE = "nomerge"  # no neighbour can take the range: the caller creates or splits a VMA
    SUCCESS = "success"  # ``MergeState.target`` now covers the range


# The members under the kernel's names, for the hot paths: ``MergeOutcome.SUCCESS`` is an
# enum descriptor lookup (about 0.25 us on 3.11), a module global about 0.02 us.
VMA_MERGE_START = MergeOutcome.START
VMA_MERGE_NOMERGE = MergeOutcome.NOMERGE
VMA_MERGE_SUCCESS = MergeOutcome.SUCCESS


class MergeState:
    """The kernel's ``struct vma_merge_struct``: the proposed range, its neighbours, and the
    outcome of a merge attempt.

    ``start``/``end`` bytes; ``pgoff`` pages (of ``start``); ``middle`` is the VMA
    being changed (existing-range merges) or None (new range). A merge function sets
    ``state`` (a ``MergeOutcome``) and, on ``SUCCESS``, ``target``: the VMA now covering
    ``[start, end)``.
    """

    __slots__ = ("prev", "middle", "next", "start", "end", "pgoff", "vm_flags", "file",
                 "anon_vma", "copied_from", "just_expand", "state", "target")

    def __init__(self, prev: Any, middle: Any, nxt: Any, start: int, end: int,
                 pgoff: int, vm_flags: int, file: Any, anon_vma: Any,
                 copied_from: Any = None, just_expand: bool = False) -> None:
        self.prev, self.middle, self.next = prev, middle, nxt
        self.start, self.end, self.pgoff = start, end, pgoff
        self.vm_flags, self.file, self.anon_vma = vm_flags, file, anon_vma
        self.copied_from, self.just_expand = copied_from, just_expand
        self.state = VMA_MERGE_START
        self.target: Any = None  # Vma | None

    def _pglen(self) -> int:
        return (self.end - self.start) >> abi.PAGE_SHIFT

    def can_merge_before(self) -> bool:
        """can_vma_merge_before(): next may absorb the range."""
        n = self.next
        return (is_mergeable_vma(n, self.vm_flags, self.file)
                and is_mergeable_anon_vma(n, self.anon_vma, self.middle, self.copied_from)
                and n.vm_pgoff == self.pgoff + self._pglen())

    def can_merge_after(self) -> bool:
        """can_vma_merge_after(): prev may absorb the range."""
        p = self.prev
        return (is_mergeable_vma(p, self.vm_flags, self.file)
                and is_mergeable_anon_vma(p, self.anon_vma, self.middle, self.copied_from)
                and p.vm_pgoff + p.npages == self.pgoff)

    def can_merge_left(self) -> bool:
        return self.prev is not None and self.prev.vm_end == self.start and self.can_merge_after()

    def can_merge_right(self, merge_left: bool) -> bool:
        n = self.next
        if n is None or self.end != n.vm_start or not self.can_merge_before():
            return False
        if not merge_left:
            return True
        p = self.prev  # prev and next must be compatible with each other too
        return p.anon_vma is None or n.anon_vma is None or p.anon_vma is n.anon_vma


def _dup_anon_vma(dst: Vma, src: Vma | None) -> None:
    """mm/vma.c: dup_anon_vma(): dst adopts src's anon_vma (and its chain) if it has none."""
    if src is not None and src.anon_vma is not None and dst.anon_vma is None:
        dst.anon_vma = src.anon_vma
        dst.anon_vma_forked = src.anon_vma_forked


def merge_new_range(tree, vmg: MergeState) -> MergeOutcome:
    """mm/vma.c: vma_merge_new_range(): extend prev and/or next over a new range. O(log n).

    ``SUCCESS``: ``vmg.target`` covers the range; ``NOMERGE``: nothing changed, the caller
    creates a new VMA. Precondition: ``[start, end)`` is free, ``prev``/``next`` are the
    VMAs around it (or None).
    """
    if int(vmg.vm_flags) & _VM_SPECIAL or (vmg.prev is None and vmg.next is None):
        vmg.state = VMA_MERGE_NOMERGE
        return VMA_MERGE_NOMERGE
    left = vmg.can_merge_left()
    right = not vmg.just_expand and vmg.can_merge_right(left)
    if not left and not right:
        vmg.state = VMA_MERGE_NOMERGE
        return VMA_MERGE_NOMERGE
    sticky = int(vmg.vm_flags) & _VM_STICKY
    if left:
        target = vmg.prev
        new_end = vmg.next.vm_end if right else vmg.end
        if right:
            nxt = vmg.next
            sticky |= int(nxt.vm_flags) & _VM_STICKY
            _dup_anon_vma(target, nxt)
            tree.remove(nxt)
        sticky |= int(target.vm_flags) & _VM_STICKY
        tree.set_bounds(target, target.vm_start, new_end)
    else:
        target = vmg.next
        sticky |= int(target.vm_flags) & _VM_STICKY
        target.vm_pgoff = vmg.pgoff
        tree.set_bounds(target, vmg.start, target.vm_end)
    if vmg.copied_from is not None:
        _dup_anon_vma(target, vmg.copied_from)
    elif vmg.anon_vma is not None and target.anon_vma is None:
        target.anon_vma = vmg.anon_vma
    if sticky:  # stays VmFlag
        target.vm_flags |= sticky
    vmg.target, vmg.state = target, VMA_MERGE_SUCCESS
    return VMA_MERGE_SUCCESS


def merge_existing_range(tree, vmg: MergeState) -> MergeOutcome:
    """mm/vma.c: vma_merge_existing_range(): give ``[start,end)`` of middle new flags by merging
    it into prev and/or next. ``SUCCESS``: ``vmg.target`` covers the range; ``NOMERGE``:
    nothing changed. Precondition: ``[start, end)`` lies inside ``middle``. O(log n)."""
    middle = vmg.middle
    left_side = vmg.start == middle.vm_start
    right_side = vmg.end == middle.vm_end
    if int(vmg.vm_flags) & _VM_SPECIAL or (not left_side and not right_side):
        vmg.state = VMA_MERGE_NOMERGE
        return VMA_MERGE_NOMERGE
    if not left_side:
        vmg.prev = None
    if not right_side:
        vmg.next = None
    merge_left = left_side and vmg.can_merge_left()
    merge_right = right_side and vmg.can_merge_right(merge_left)
    if not merge_left and not merge_right:
        vmg.state = VMA_MERGE_NOMERGE
        return VMA_MERGE_NOMERGE
    delete_middle = left_side and right_side
    sticky = int(vmg.vm_flags) & _VM_STICKY
    prev, nxt = vmg.prev, vmg.next
    if merge_left and merge_right:
        # |prev|middle|next| -> prev spans all three
        sticky |= (int(prev.vm_flags) | int(nxt.vm_flags)) & _VM_STICKY
        _dup_anon_vma(prev, nxt if nxt.anon_vma is not None else middle)
        new_end = nxt.vm_end
        tree.remove(middle)
        tree.remove(nxt)
        tree.set_bounds(prev, prev.vm_start, new_end)
        if sticky:  # stays VmFlag
            prev.vm_flags |= sticky
        vmg.target, vmg.state = prev, VMA_MERGE_SUCCESS
        return VMA_MERGE_SUCCESS
    if merge_left:
        # prev extends over [start,end); middle shrinks or goes
        sticky |= int(prev.vm_flags) & _VM_STICKY
        _dup_anon_vma(prev, middle)
        if delete_middle:
            tree.remove(middle)
        else:
            middle.vm_pgoff += (vmg.end - middle.vm_start) >> abi.PAGE_SHIFT
            tree.set_bounds(middle, vmg.end, middle.vm_end)
        tree.set_bounds(prev, prev.vm_start, vmg.end)
        if sticky:  # stays VmFlag
            prev.vm_flags |= sticky
        vmg.target, vmg.state = prev, VMA_MERGE_SUCCESS
        return VMA_MERGE_SUCCESS
    # merge_right: next extends down over [start,end)
    sticky |= int(nxt.vm_flags) & _VM_STICKY
    _dup_anon_vma(nxt, middle)
    if delete_middle:
        tree.remove(middle)
    else:
        tree.set_bounds(middle, middle.vm_start, vmg.start)
    nxt.vm_pgoff = vmg.pgoff
    tree.set_bounds(nxt, vmg.start, nxt.vm_end)
    if sticky:  # stays VmFlag
        nxt.vm_flags |= sticky
    vmg.target, vmg.state = nxt, VMA_MERGE_SUCCESS
    return VMA_MERGE_SUCCESS


def split_vma(tree, vma: Vma, addr: int, max_map_count: int) -> Vma:
    """mm/vma.c: split_vma(): cut ``vma`` at ``addr``; return the new upper part. O(log n).

    Raises ENOMEM at ``max_map_count``, EINVAL where a hugetlb VMA would be cut inside a
    huge page. Both halves keep the anon_vma (its chain is cloned);
    a guard entry's halves keep the pieces of their own ranges. Precondition:
    ``vma.vm_start < addr < vma.vm_end``, ``addr`` page aligned.
    """
    if len(tree) >= max_map_count:
        raise OSError(errno.ENOMEM, "split_vma: map_count at vm.max_map_count")
    if vma.vm_flags & abi.VmFlag.HUGETLB and addr & (HPAGE_SIZE - 1):
        raise OSError(errno.EINVAL, "split_vma: hugetlb_vm_op_split() needs a huge-page boundary")
    upper = vma.copy()
    upper.vm_pgoff = vma.vm_pgoff + ((addr - vma.vm_start) >> abi.PAGE_SHIFT)
    upper.vm_start = addr
    tree.split(vma, addr, upper)
    if vma.is_guard_entry:  # the tree design's entry: each half keeps only its own pieces
        vma.clip_pieces()  # type: ignore[attr-defined]
        upper.clip_pieces()  # type: ignore[attr-defined]
    return upper


def vma_modify_flags(tree, prev: Vma | None, vma: Vma, start: int, end: int, new_flags: int,
                     max_map_count: int) -> Vma:
    """mm/vma.c: vma_modify_flags(): merge, else split, so that one VMA covers ``[start,end)``
    with ``new_flags``; returns it. ``prev`` is the VMA before ``vma`` when start == vm_start.
    Raises ENOMEM when a split would pass ``max_map_count``. Precondition: ``[start, end)``
    lies inside ``vma``. O(log n)."""
    nxt = tree.next(vma) if end == vma.vm_end else None
    vmg = MergeState(prev if start == vma.vm_start else None, vma, nxt, start, end,
                     vma.file_pgoff(start), new_flags, vma.vm_file, vma.anon_vma)
    if merge_existing_range(tree, vmg) is VMA_MERGE_SUCCESS:
        return vmg.target  # set by a successful merge
    if vma.vm_start < start:
        vma = split_vma(tree, vma, start, max_map_count)
    if vma.vm_end > end:
        split_vma(tree, vma, end, max_map_count)
    vma.vm_flags = int(new_flags)
    return vma
