"""The cost model: constants come from the one JSON file, bytes are counts x strides."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from sparsemm.model.costs import (CostConstants, KernelCost, MmCounts, constants, kernel_cost,
                                  maple_nodes_for_slots, memcg_bytes, vmpte_bytes)


def test_constants_are_the_measured_ones():
    c = constants()
    assert (c.vm_area_struct, c.anon_vma, c.anon_vma_chain, c.maple_node, c.page_table) == (
        192, 104, 64, 256, 4096)
    assert c.kernel == "6.18.44 x86-64"
    assert c.max_map_count == 65530
    assert c.nodes_per_slot == pytest.approx(0.0725)


def test_constants_come_from_the_packaged_json():
    doc = json.loads(resources.files("sparsemm.data").joinpath("cost_constants.json").read_text())
    doc["struct_bytes"]["vm_area_struct"]["slab_stride"] = 200
    assert CostConstants.from_doc(doc).vm_area_struct == 200
    with pytest.raises(Exception):
        constants().vm_area_struct = 1  # frozen


def test_interior_mprotect_guard_costs_what_the_notes_say():
    # docs/costs.md, "One guard, three designs": +2 VMAs, +2 slots (~38 B), +2 AVCs once there is an anon_vma.
    c = kernel_cost(MmCounts(vmas=2, maple_nodes=0))
    assert c.vm_area_struct == 384 and c.total == 384
    with_av = kernel_cost(MmCounts(vmas=2, anon_vma_chains=2, maple_nodes=0))
    assert with_av.total - c.total == 128


def test_bytes_by_object_and_total():
    counts = MmCounts(vmas=10, anon_vmas=3, anon_vma_chains=5, maple_nodes=2, pte_tables=4,
                      pmd_tables=1, pud_tables=1, p4d_tables=1, pgd_tables=2)
    cost = kernel_cost(counts)
    assert isinstance(cost, KernelCost)
    assert cost.as_dict()["vm_area_struct"] == 1920
    assert (cost.anon_vma, cost.anon_vma_chain, cost.maple_node) == (312, 320, 512)
    assert cost.page_tables == 9 * 4096
    assert cost.total == 1920 + 312 + 320 + 512 + 9 * 4096
    assert cost.map_count == 10 and not cost.hit_max_map_count
    assert cost.vmpte == 6 * 4096  # P4D and PGD are not in VmPTE


def test_vmpte_counts_pte_pmd_pud_only():
    # Measured on 6.18.44: a first touch in an empty 512 GiB range adds 12 kB of VmPTE.
    assert vmpte_bytes(MmCounts(vmas=1, pte_tables=1, pmd_tables=1, pud_tables=1)) == 12 * 1024
    assert vmpte_bytes(MmCounts(vmas=1, p4d_tables=1, pgd_tables=1)) == 0
    # docs/costs.md, "Page tables": 1 GiB with 131072 markers -> 512 PTE tables + 1 PMD table = 2052 KiB.
    assert vmpte_bytes(MmCounts(vmas=1, pte_tables=512, pmd_tables=1)) == 2052 * 1024


def test_max_map_count_wall():
    assert kernel_cost(MmCounts(vmas=65529, maple_nodes=0)).hit_max_map_count is False
    assert kernel_cost(MmCounts(vmas=65530, maple_nodes=0)).hit_max_map_count is True
    assert kernel_cost(MmCounts(vmas=10, maple_nodes=0), max_map_count=10).hit_max_map_count
    tree = MmCounts(vmas=1, guard_entries=100_000, maple_nodes=0)
    assert kernel_cost(tree).map_count == 1
    assert kernel_cost(tree, count_guard_entries=True).hit_max_map_count


def test_maple_nodes_for_slots_small_and_large():
    assert maple_nodes_for_slots(0) == 0
    assert maple_nodes_for_slots(1) == 1
    assert maple_nodes_for_slots(16) == 1  # one maple_leaf_64 root
    assert maple_nodes_for_slots(17) == 3  # two leaves and a root
    # Large trees: ~0.0725 nodes/slot (docs/costs.md, "The maple tree": 4508 measured for 59999 contiguous VMAs).
    for slots, measured in ((16383, 1290), (59999, 4508), (65394, 4937), (59998, 4211)):
        assert maple_nodes_for_slots(slots) == pytest.approx(measured, rel=0.10)
    # never below the fully packed tree
    for s in (17, 100, 1000, 10**6):
        assert maple_nodes_for_slots(s) >= -(-s // 16)


def test_maple_nodes_estimated_from_slots_when_not_given():
    counts = MmCounts(vmas=30000, gap_slots=29999)
    assert counts.maple_slots == 59999
    assert kernel_cost(counts).maple_nodes == maple_nodes_for_slots(59999)
    assert kernel_cost(MmCounts(vmas=5, maple_nodes=7)).maple_nodes == 7


def test_memcg_bytes_charge_accounted_objects_with_their_pointer_and_every_table():
    c = constants()
    assert c.memcg_caches == ("vm_area_struct", "anon_vma", "anon_vma_chain")
    assert c.charged("maple_node") == 0  # lib/maple_tree.c: no SLAB_ACCOUNT
    assert c.charged("vm_area_struct") == c.vm_area_struct + c.memcg_obj_overhead
    # A populated interior mprotect guard: +2 VMAs and +2 chains, maple nodes free of charge.
    one = MmCounts(vmas=1, anon_vmas=1, anon_vma_chains=1, maple_nodes=1)
    guarded = MmCounts(vmas=3, anon_vmas=1, anon_vma_chains=3, maple_nodes=40)
    assert kernel_cost(guarded).memcg - kernel_cost(one).memcg == 2 * (192 + 8) + 2 * (64 + 8)
    assert memcg_bytes(MmCounts(vmas=0, pte_tables=3, pmd_tables=1, pud_tables=1, p4d_tables=1)) == 6 * 4096
    assert memcg_bytes(MmCounts(vmas=0, anon_vmas=1)) == 104 + 8


def test_a_constants_file_may_charge_maple_nodes():
    doc = json.loads(resources.files("sparsemm.data").joinpath("cost_constants.json").read_text())
    doc["memcg"]["accounted_caches"].append("maple_node")
    c = CostConstants.from_doc(doc)
    assert memcg_bytes(MmCounts(vmas=1, maple_nodes=5), c) == 200 + 5 * (256 + 8)


def test_designs_json_and_text_show_memcg_bytes(tmp_path):
    from conftest import run_cli

    n = 100  # populated interior guards in one RW mapping
    ops = [{"op": "mmap", "at": 0, "len": 2 * n + 1, "prot": "rw"},
           {"op": "touch", "at": 0, "len": 2 * n + 1, "access": "write"}]
    ops += [{"op": "madvise", "at": 2 * i + 1, "advice": "guard_install"} for i in range(n)]
    path = tmp_path / "guards.json"
    path.write_text(json.dumps({"arena_pages": 2 * n + 1, "ops": ops}))
    cp = run_cli("designs", str(path), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    # The same page tables and anon_vma in every design; vma adds 2 VMAs + 2 chains per guard.
    assert doc["vma"]["memcg_bytes"] - doc["pte"]["memcg_bytes"] == n * (2 * 200 + 2 * 72)
    # tree entries are maple-tree slots, and maple nodes are not charged to a cgroup
    assert doc["tree"]["memcg_bytes"] - doc["pte"]["memcg_bytes"] == (
        (doc["tree"]["vmas"] - doc["pte"]["vmas"]) * (200 + 72))
    cp = run_cli("designs", str(path))
    row = next(line for line in cp.stdout.splitlines() if line.startswith("charged to its memory cgroup"))
    assert f"{doc['vma']['memcg_bytes']:,}" in row


def test_a_shared_anonymous_mapping_charges_its_shmem_file_once():
    c = constants()
    assert c.memcg_shmem_file == (752 + 8) + (192 + 8) + (192 + 8)  # inode, struct file, dentry
    counts = MmCounts(vmas=3, shmem_files=2)
    assert memcg_bytes(counts) == 3 * 200 + 2 * c.memcg_shmem_file
    assert kernel_cost(counts).total == kernel_cost(MmCounts(vmas=3)).total  # slab total: VMA tree only
