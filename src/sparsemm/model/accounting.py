"""Count the kernel objects a model address space holds, for the cost model.

Owns ``counts_of(mm)``: VMAs, anon_vmas, anon_vma_chains, maple-tree nodes and
page-table pages of an ``AddressSpace``, as an ``MmCounts`` for
``sparsemm.model.costs.kernel_cost``. Reads the model; never changes it.
"""

from __future__ import annotations

from sparsemm.model.costs import MmCounts


def counts_of(mm) -> MmCounts:
    """The object counts of ``mm`` (an ``AddressSpace``). O(n) in VMAs.

    anon_vmas are counted by identity; each VMA with an anon_vma has one
    anon_vma_chain for it, plus one for its parent's when the anon_vma came
    through fork (``anon_vma_forked``, a non-singular chain). Guard entries of
    the ``tree`` design (``mm.guard_entries``, when present) are tree slots
    without a ``vm_area_struct``; the node count includes them.
    """
    anon_vmas = set()
    chains = 0
    for vma in mm.tree:
        if vma.anon_vma is not None:
            anon_vmas.add(id(vma.anon_vma))
            chains += 2 if vma.anon_vma_forked else 1
    guard_entries = len(getattr(mm, "guard_entries", ()) or ())
    pt = mm.pt
    return MmCounts(
        vmas=mm.map_count,
        anon_vmas=len(anon_vmas),
        anon_vma_chains=chains,
        maple_nodes=mm.maple_nodes() if hasattr(mm, "maple_nodes") else mm.tree.node_count(),
        pte_tables=len(pt.pte_tables),
        pmd_tables=len(pt.pmd_tables),
        pud_tables=len(pt.pud_tables),
        guard_entries=guard_entries,
        gap_slots=mm.tree.gap_count,
    )
