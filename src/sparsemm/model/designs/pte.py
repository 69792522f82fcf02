"""The ``pte`` guard design: upstream Linux (6.13+), guards as PTE markers inside the VMA.

Owns madvise_guard_install() and madvise_guard_remove() of mm/madvise.c (docs/rules.md: R-B2,
R-C1, R-C5, R-C6, R-D1..R-D4). Works on one VMA piece at a time
inside the madvise walk, through the ``MmCore`` contract; markers live in ``PageTable``.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from sparsemm.abi import PAGE_SHIFT, VmFlag
from sparsemm.model._flags import _GUARD_INSTALL_INELIGIBLE, _VM_MAYBE_GUARD, _VM_SPECIAL
from sparsemm.model._util import kerr
from sparsemm.model.designs.registry import GuardDesign, GuardShape, KernelForm, register

if TYPE_CHECKING:
    from sparsemm.model.core import MmCore
    from sparsemm.model.vma import Vma

_GUARD_REMOVE_INELIGIBLE = _VM_SPECIAL | int(VmFlag.HUGETLB)


@register
class PteDesign(GuardDesign):
    """Guards are PTE markers (``PTE_MARKER_GUARD``): no VMA changes shape, no split."""

    name = "pte"
    order = 20
    kernel_form = KernelForm.NATIVE
    guards_count_toward_max_map_count = False
    guard_shape = GuardShape.MARKER
    description = "Linux 6.13+ MADV_GUARD_INSTALL: guards are page-table markers inside the VMA"
    __slots__ = ()

    def install(self, mm: "MmCore", vma: "Vma", start: int, end: int) -> int:
        """mm/madvise.c: madvise_guard_install(): EINVAL on a special, hugetlb or locked VMA
        (R-B2); else mark the whole VMA ``VM_MAYBE_GUARD`` (sticky, no split or merge: R-C6),
        prepare an anonymous VMA's anon_vma, zap the range (existing markers stay: R-C1) and
        install markers in every slot without a frame, allocating the tables under them.
        O(zap + log r + runs touched + tables covering the range)."""
        f = int(vma.vm_flags)  # plain-int tests: IntFlag operators are slow (model._flags)
        if f & _GUARD_INSTALL_INELIGIBLE:
            raise kerr(errno.EINVAL, "guard install: ineligible vma")  # R-B2, R-F13
        if not f & _VM_MAYBE_GUARD:
            vma.vm_flags = f | _VM_MAYBE_GUARD  # R-C6 (6.18.y sticky backport)
        if vma.is_anonymous():
            mm.anon_vma_prepare(vma)
        mm.zap_range(start, end)
        mm.pt.install_markers(start >> PAGE_SHIFT, end >> PAGE_SHIFT)
        return end

    def remove(self, mm: "MmCore", vma: "Vma", start: int, end: int) -> int:
        """mm/madvise.c: madvise_guard_remove(): EINVAL on a special or hugetlb VMA, else clear
        the markers of the range, run by run (R-D1..R-D4); the VMA keeps ``VM_MAYBE_GUARD``.
        O(log r + runs touched)."""
        if int(vma.vm_flags) & _GUARD_REMOVE_INELIGIBLE:
            raise kerr(errno.EINVAL, "guard remove: ineligible vma")
        mm.pt.remove_markers(start >> PAGE_SHIFT, end >> PAGE_SHIFT)
        return end
