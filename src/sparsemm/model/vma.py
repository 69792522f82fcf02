"""Vma and AnonVma: the model's ``struct vm_area_struct`` and ``struct anon_vma``.

Owns the per-VMA fields and the derived views (maps permissions, backing name,
the pgoff maps prints). Bounds change only through ``VmaTree.set_bounds``; this
module never touches the tree or the page tables.
"""

from __future__ import annotations

import itertools

from sparsemm import abi
from sparsemm.abi import VmFlag

_anon_ids = itertools.count(1)

#: include/linux/mm.h: VM_SPECIAL (no merging, no mlock, no guards).
VM_SPECIAL = VmFlag.IO | VmFlag.DONTEXPAND | VmFlag.PFNMAP | VmFlag.MIXEDMAP
#: VM_LOCKED_MASK (mm/mlock.c).
VM_LOCKED_MASK = VmFlag.LOCKED | VmFlag.LOCKONFAULT
#: VM_STICKY = VM_IGNORE_MERGE on 6.18 with the sticky-flag backport: kept by a merge if any side had them.
VM_STICKY = VmFlag.SOFTDIRTY | VmFlag.MAYBE_GUARD
VM_IGNORE_MERGE = VM_STICKY
#: VM_ACCESS_FLAGS (include/linux/mm.h).
VM_ACCESS_FLAGS = VmFlag.READ | VmFlag.WRITE | VmFlag.EXEC
# plain-int bits for this module's own tests (model._flags holds the others; it imports this module)
_READ, _WRITE, _EXEC, _MAYSHARE = int(VmFlag.READ), int(VmFlag.WRITE), int(VmFlag.EXEC), int(VmFlag.MAYSHARE)
_ACCESS = int(VM_ACCESS_FLAGS)


class AnonVma:
    """Identity of a ``struct anon_vma``; two VMAs share one iff they may share anon pages.

    ``ident`` is for debugging only; equality is identity.
    """

    __slots__ = ("ident",)

    def __init__(self) -> None:
        self.ident = next(_anon_ids)

    def __repr__(self) -> str:
        return f"<AnonVma {self.ident}>"


class Vma:
    """One VMA. ``vm_start``/``vm_end`` are byte addresses (page aligned, half open);
    ``vm_flags`` a plain int of ``VmFlag`` bits (``VmFlag(vma.vm_flags)`` to read them).

    ``vm_pgoff`` is in pages: the file offset for file and shmem VMAs, and
    ``vm_start >> PAGE_SHIFT`` at creation for private anonymous VMAs (as the kernel
    keeps it, so merges need pgoff contiguity). ``anon_vma_forked`` stands for a
    non-singular ``anon_vma_chain`` (the VMA's anon_vma came through fork); such a
    VMA does not lend or borrow anon_vmas (mm/vma.c ``vma_had_uncowed_parents()``).
    """

    #: True only for the ``tree`` design's guard entries (designs.tree.GuardEntry): tree slots
    #: that are not VMAs. Every walker that must not treat one as a VMA checks this.
    is_guard_entry = False

    __slots__ = ("vm_start", "vm_end", "vm_flags", "vm_pgoff", "vm_file", "anon_vma",
                 "anon_vma_forked")

    def __init__(self, vm_start: int, vm_end: int, vm_flags: int, vm_pgoff: int,
                 vm_file=None, anon_vma: AnonVma | None = None, anon_vma_forked: bool = False):
        self.vm_start = vm_start
        self.vm_end = vm_end
        # a plain int: IntFlag operators and VmFlag() are Python-level enum calls (model._flags)
        self.vm_flags = vm_flags if type(vm_flags) is int else int(vm_flags)
        self.vm_pgoff = vm_pgoff
        self.vm_file = vm_file
        self.anon_vma = anon_vma
        self.anon_vma_forked = anon_vma_forked

    def __repr__(self) -> str:
        return (f"<Vma {self.vm_start:#x}-{self.vm_end:#x} {self.perms} pgoff={self.vm_pgoff} "
                f"{' '.join(abi.vmflags_to_mnemonics(self.vm_flags))} anon_vma={self.anon_vma}>")

    # -- derived views -------------------------------------------------------

    @property
    def npages(self) -> int:
        return (self.vm_end - self.vm_start) >> abi.PAGE_SHIFT

    def is_anonymous(self) -> bool:
        """``vma_is_anonymous()``: private anonymous memory (no vm_ops). Shmem is not."""
        return self.vm_file is None

    def is_accessible(self) -> bool:
        """``vma_is_accessible()``: any of read/write/exec."""
        return bool(self.vm_flags & _ACCESS)

    @property
    def perms(self) -> str:
        f = self.vm_flags
        return (("r" if f & _READ else "-") + ("w" if f & _WRITE else "-")
                + ("x" if f & _EXEC else "-") + ("s" if f & _MAYSHARE else "p"))

    def file_pgoff(self, addr: int) -> int:
        """The page offset into ``vm_file`` (or the anon linear index) of ``addr``: ``linear_page_index()``."""
        return self.vm_pgoff + ((addr - self.vm_start) >> abi.PAGE_SHIFT)

    def maps_pgoff(self) -> int:
        """The pgoff /proc/PID/maps prints: 0 for private anon, else vm_pgoff."""
        return 0 if self.vm_file is None else self.vm_pgoff

    def copy(self) -> "Vma":
        """``vm_area_dup()``: a detached copy (same file, same anon_vma)."""
        return Vma(self.vm_start, self.vm_end, self.vm_flags, self.vm_pgoff, self.vm_file,
                   self.anon_vma, self.anon_vma_forked)
