"""Kernel memory cost of an address-space state: object counts in, bytes out.

Owns ``CostConstants`` (loaded from the one file ``sparsemm/data/cost_constants.json``),
the input record ``MmCounts``, the output ``KernelCost`` and the byte arithmetic, both in
slab bytes and as the bytes a memory cgroup is charged (``memcg_bytes``). Pure: no OS calls,
no knowledge of how the counts were obtained (the model's VMA index and page table count
them; ``sparsemm.opscript.measure`` measures them on the kernel).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["CostConstants", "MmCounts", "KernelCost", "constants", "kernel_cost",
           "maple_nodes_for_slots", "vmpte_bytes", "memcg_bytes"]

CONSTANTS_RESOURCE = "cost_constants.json"


@dataclass(frozen=True, slots=True)
class CostConstants:
    """Sizes of the kernel objects a mapping costs, as measured on ``kernel``.

    Every size is the slab stride in bytes (what one more object costs the slab), not
    ``sizeof``: ``anon_vma`` is a 96 B struct with a 104 B stride (SLAB_TYPESAFE_BY_RCU puts
    the free pointer after the object). Whole slab pages are not modelled: a cost is
    ``objects x stride``, the steady-state average.
    """

    vm_area_struct: int  # bytes, 192 since the 6.15 per-VMA-lock refcount series
    anon_vma: int  # bytes (slab stride)
    anon_vma_chain: int  # bytes
    maple_node: int  # bytes, 256-aligned
    page_table: int  # bytes per page-table page at any level (PTE, PMD, PUD, P4D, PGD)
    page_size: int  # bytes
    pte_table_span: int  # bytes of address space one PTE table maps (2 MiB)
    pmd_table_span: int  # bytes one PMD table maps (1 GiB)
    nodes_per_slot: float  # maple nodes per tree slot in a large tree (measured)
    maple_slot_bytes: int  # bytes of maple node one slot costs in a large tree (≈19)
    max_map_count: int  # DEFAULT_MAX_MAP_COUNT
    kernel: str  # what the constants were measured on, "6.18.44 x86-64"
    # Memory-cgroup charging (mm/memcontrol.c): each object of a SLAB_ACCOUNT cache is charged
    # its slab stride plus the obj_cgroup pointer kept for it (obj_full_size); page tables
    # (GFP_PGTABLE_USER has __GFP_ACCOUNT) are charged whole pages. maple_node is not charged.
    memcg_obj_overhead: int  # bytes per charged object (sizeof(struct obj_cgroup *))
    memcg_caches: tuple[str, ...]  # the SLAB_ACCOUNT caches among the four above
    memcg_shmem_file: int  # bytes charged for the shmem file of one shared anonymous mmap

    @property
    def vma_bytes(self) -> int:
        """One more VMA without an anon_vma: the struct plus its maple slot (≈211 B)."""
        return self.vm_area_struct + self.maple_slot_bytes

    @classmethod
    def from_doc(cls, doc: dict) -> "CostConstants":
        """Build from the document of ``cost_constants.json``; ``KeyError`` if a value is missing."""
        sb = doc["struct_bytes"]
        pt = doc["page_tables"]
        about = doc.get("_about", "")
        version = re.search(r"kernel (\d+\.\d+(?:\.\d+)?)", about)
        arch = "x86-64" if "x86-64" in about else "unknown arch"
        return cls(
            vm_area_struct=sb["vm_area_struct"]["slab_stride"],
            anon_vma=sb["anon_vma"]["slab_stride"],
            anon_vma_chain=sb["anon_vma_chain"]["slab_stride"],
            maple_node=sb["maple_node"]["slab_stride"],
            page_table=pt["pte_table_bytes"],
            page_size=doc["page_size"],
            pte_table_span=pt["pte_table_span_bytes"],
            pmd_table_span=pt["pmd_table_span_bytes"],
            nodes_per_slot=doc["maple_tree"]["measured_nodes_per_slot_large_tree"],
            maple_slot_bytes=doc["maple_tree"]["model_bytes_per_slot"],
            max_map_count=doc["limits"]["DEFAULT_MAX_MAP_COUNT"],
            kernel=f"{version.group(1) if version else 'unknown'} {arch}",
            memcg_obj_overhead=doc["memcg"]["obj_cgroup_pointer_bytes"],
            memcg_caches=tuple(doc["memcg"]["accounted_caches"]),
            memcg_shmem_file=sum(size + doc["memcg"]["obj_cgroup_pointer_bytes"] for name, size in
                                 doc["memcg"]["shmem_file_objects"].items() if name != "note"),
        )

    def charged(self, cache: str) -> int:
        """Bytes one object of ``cache`` costs its memory cgroup: 0 for a cache without
        SLAB_ACCOUNT, else the slab stride plus the per-object obj_cgroup pointer."""
        if cache not in self.memcg_caches:
            return 0
        return getattr(self, cache) + self.memcg_obj_overhead


@lru_cache(maxsize=1)
def constants() -> CostConstants:
    """The packaged constants (read once). O(1) after the first call."""
    text = resources.files("sparsemm.data").joinpath(CONSTANTS_RESOURCE).read_text(encoding="utf-8")
    return CostConstants.from_doc(json.loads(text))


@dataclass(slots=True)
class MmCounts:
    """How many of each kernel object an ``mm_struct`` (or a delta of one) holds.

    ``vmas`` is ``mm->map_count``. ``maple_nodes`` is what the model's VMA index reports (the
    count of its node model, ``model.maple``, which followed the order of every split and
    insert); ``None`` asks ``kernel_cost`` to estimate it from the slots (``vmas + gap_slots +
    guard_entries``) with ``maple_nodes_for_slots``. ``guard_entries`` are the reserved
    maple-tree entries of the ``tree`` design (no ``vm_area_struct``). ``p4d_tables`` and
    ``pgd_tables`` are optional: a 4-level x86-64 folds the P4D, and the PGD comes with the mm.
    """

    vmas: int
    anon_vmas: int = 0
    anon_vma_chains: int = 0
    maple_nodes: int | None = None
    pte_tables: int = 0
    pmd_tables: int = 0
    pud_tables: int = 0
    p4d_tables: int | None = None
    pgd_tables: int | None = None
    guard_entries: int = 0
    gap_slots: int = 0  # NULL ranges between VMAs in the tree; only used when maple_nodes is None
    shmem_files: int = 0  # shmem files of shared anonymous mmaps (memcg_bytes only)

    @property
    def maple_slots(self) -> int:
        """Tree slots: one per VMA, per NULL gap range and per reserved guard entry."""
        return self.vmas + self.gap_slots + self.guard_entries


@dataclass(frozen=True, slots=True)
class KernelCost:
    """Kernel memory in bytes, by object, for one ``MmCounts``.

    ``hit_max_map_count`` is true when ``map_count >= max_map_count``: from there a VMA split
    (``mprotect``/``munmap`` inside a VMA, a guard VMA) fails with ENOMEM (mm/vma.c checks
    ``mm->map_count >= sysctl_max_map_count`` before splitting; ``do_mmap`` checks ``>``, so
    one more mmap may still succeed). Measured here: mprotect guards stop at 65530 VMAs.
    """

    vm_area_struct: int
    anon_vma: int
    anon_vma_chain: int
    maple_node: int
    page_tables: int
    total: int
    map_count: int
    hit_max_map_count: bool
    maple_nodes: int  # the node count used (given or estimated)
    vmpte: int  # bytes /proc/PID/status VmPTE would show for these page tables
    memcg: int = 0  # bytes the process's memory cgroup is charged (``memcg_bytes``)

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)


def maple_nodes_for_slots(slots: int, consts: CostConstants | None = None) -> int:
    """Fallback estimate of the maple nodes a tree of ``slots`` slots needs. O(log slots).

    ``max(best case, ceil(nodes_per_slot * slots))``: the best case packs 16 slots per
    ``maple_leaf_64`` and 10 children per ``maple_arange_64``; the measured large-tree rate
    is 0.0725 nodes/slot (docs/costs.md, "The maple tree"). The model's node count
    (``AddressSpace.counts()``, from ``model.maple``) depends on the order of the operations
    and is what the cost model uses; this is for callers with counts only.
    Under ~1000 slots the kernel itself is noisy (slab sheaves), so is any formula.
    """
    if slots <= 0:
        return 0
    if slots <= 16:
        return 1  # the root leaf alone (as vma_tree.maple_node_count)
    c = consts or constants()
    level = -(-slots // 16)
    best = level
    while level > 1:
        level = -(-level // 10)
        best += level
    return max(best, math.ceil(c.nodes_per_slot * slots))


def vmpte_bytes(counts: MmCounts, consts: CostConstants | None = None) -> int:
    """What ``VmPTE`` in ``/proc/PID/status`` reports for these tables, in bytes. O(1).

    VmPTE is ``mm_pgtables_bytes(mm)``, raised by ``mm_inc_nr_ptes/pmds/puds``: PTE, PMD and
    PUD tables count; P4D tables (``__p4d_alloc`` does no accounting) and the PGD do not.
    Measured on 6.18.44: the first touch in an empty 512 GiB range adds 12 kB (PTE + PMD + PUD).
    """
    c = consts or constants()
    return c.page_table * (counts.pte_tables + counts.pmd_tables + counts.pud_tables)


def memcg_bytes(counts: MmCounts, consts: CostConstants | None = None) -> int:
    """Bytes these objects charge to the process's memory cgroup (what its kernel-memory
    counter, v1 ``memory.kmem.usage_in_bytes`` or v2 ``memory.stat kernel``, rises by).

    ``vmas x charged(vm_area_struct) + anon_vmas x charged(anon_vma) + chains x
    charged(anon_vma_chain)`` plus every page-table page (PTE, PMD, PUD, and P4D/PGD when
    given), plus the inode, file and dentry of each shared anonymous mmap's shmem file
    (``shmem_files``; not in ``kernel_cost().total``, which counts the VMA tree's objects and
    page tables). Maple nodes cost nothing here: their cache is not accounted. The cgroup counts
    these in whole pages, so a measurement is this within ``native.memcg.charge_slack_bytes``.
    O(1) (O(log slots) only for a kernel that charges maple nodes and no node count given).
    """
    c = consts or constants()
    total = (counts.vmas * c.charged("vm_area_struct") + counts.anon_vmas * c.charged("anon_vma")
             + counts.anon_vma_chains * c.charged("anon_vma_chain") + _tables(counts) * c.page_table
             + counts.shmem_files * c.memcg_shmem_file)
    if c.charged("maple_node"):  # not on 6.18; a constants file for a kernel that accounts them
        total += c.charged("maple_node") * (counts.maple_nodes if counts.maple_nodes is not None
                                            else maple_nodes_for_slots(counts.maple_slots, c))
    return total


def _tables(counts: MmCounts) -> int:
    """Page-table pages at every level ``counts`` has."""
    return (counts.pte_tables + counts.pmd_tables + counts.pud_tables
            + (counts.p4d_tables or 0) + (counts.pgd_tables or 0))


def kernel_cost(counts: MmCounts, consts: CostConstants | None = None, *,
                max_map_count: int | None = None, count_guard_entries: bool = False) -> KernelCost:
    """Bytes of kernel memory ``counts`` cost. O(log slots) (the node estimate), else O(1).

    ``count_guard_entries``: whether the ``tree`` design's reserved entries count against
    ``max_map_count`` (a policy choice of that design; the default says they do not).
    """
    c = consts or constants()
    limit = c.max_map_count if max_map_count is None else max_map_count
    nodes = counts.maple_nodes if counts.maple_nodes is not None else maple_nodes_for_slots(
        counts.maple_slots, c)
    tables = _tables(counts)
    vma_b = counts.vmas * c.vm_area_struct
    av_b = counts.anon_vmas * c.anon_vma
    avc_b = counts.anon_vma_chains * c.anon_vma_chain
    mn_b = nodes * c.maple_node
    pt_b = tables * c.page_table
    map_count = counts.vmas + (counts.guard_entries if count_guard_entries else 0)
    return KernelCost(
        vm_area_struct=vma_b, anon_vma=av_b, anon_vma_chain=avc_b, maple_node=mn_b,
        page_tables=pt_b, total=vma_b + av_b + avc_b + mn_b + pt_b, map_count=map_count,
        hit_max_map_count=map_count >= limit, maple_nodes=nodes, vmpte=vmpte_bytes(counts, c),
        memcg=memcg_bytes(counts, c))
