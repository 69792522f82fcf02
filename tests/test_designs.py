"""The three guard designs (docs/tree-guards.md): vma against the kernel, tree rule by rule.

Pictures in comments are page rows: ``|`` VMA boundary, ``G`` guard, ``P`` present,
``.`` mapped, ``-`` nothing.
"""

from __future__ import annotations

import errno

import pytest

from sparsemm import abi, workloads
from sparsemm.model import AddressSpace
counts_of = lambda mm: mm.counts()  # noqa: E731
from sparsemm.opscript.designs import run_design
from sparsemm.opscript.kernel import run_kernel
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import parse_script

from conftest import needs_guards, observations

PAGE = abi.PAGE_SIZE
BASE = abi.ARENA_BASE
RW = abi.PROT_READ | abi.PROT_WRITE
ANON = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED


def model(ops, design, **top):
    return run_model(parse_script({"ops": ops, **top}), design, check=True)


def snap(records):
    return records[-1]["value"]


LADDER = [
    {"op": "mmap", "at": 0, "len": 16, "prot": "rw"},
    {"op": "touch", "at": 0, "len": 16, "access": "write", "value": 3},
    {"op": "madvise", "at": 4, "advice": "guard_install"},
    {"op": "madvise", "at": 8, "len": 2, "advice": "guard_install"},
    {"op": "touch", "at": 3, "len": 3, "access": "read"},
    {"op": "snapshot"},
]


def test_unknown_design_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown guard design"):
        AddressSpace(guard_design="marker")


# ---------------------------------------------------------------------------- vma design


@needs_guards
@pytest.mark.parametrize("script", [
    {"ops": LADDER},
    {"ops": LADDER + [{"op": "madvise", "at": 0, "len": 16, "advice": "guard_remove"},
                      {"op": "touch", "at": 3, "len": 3, "access": "read"}, {"op": "snapshot"}]},
    {"ops": [{"op": "mmap", "at": 0, "len": 8, "prot": "r"}, {"op": "mmap", "at": 8, "len": 8, "prot": "rw"},
             {"op": "madvise", "at": 6, "len": 4, "advice": "guard_install"}, {"op": "snapshot"},
             {"op": "madvise", "at": 7, "len": 2, "advice": "guard_remove"}, {"op": "snapshot"},
             {"op": "fork", "child": [{"op": "madvise", "at": 0, "len": 16, "advice": "guard_remove"},
                                      {"op": "snapshot"}]},
             {"op": "snapshot"}]},
    {"ops": [{"op": "mmap", "at": 0, "len": 4, "prot": "rw"}, {"op": "mlock", "at": 0, "len": 4},
             {"op": "madvise", "at": 1, "advice": "guard_install"}, {"op": "snapshot"}]},
    workloads.thread_stacks(6, glibc="2.42", stack_pages=16, snapshot=True),
    workloads.partition_alloc(8, snapshot=True),
], ids=["ladder", "ladder-remove", "two-prots-fork", "locked", "stacks", "partition-alloc"])
def test_vma_design_is_the_kernel_running_the_mprotect_script(script):
    """--design vma == the kernel running the script with guards written as mprotect calls.

    Record lists differ in length (a remove may become several mprotects), so the
    snapshots and touch results are compared.
    """
    model_recs = run_model(parse_script(script), "vma", check=True)
    kernel_recs = run_kernel(parse_script(workloads.to_vma_design(script)))

    assert observations(model_recs) == observations(kernel_recs)


def test_vma_design_splits_and_keeps_contents():
    recs = model(LADDER, "vma")
    # |PPPP|P|PPP|PP|PPPPPP|  guards are ---p VMAs whose pages keep their data
    assert snap(recs)["pages"] == "P" * 16
    assert [v[:3] for v in snap(recs)["vmas"]] == [
        [0, 4, "rw-p"], [4, 5, "---p"], [5, 8, "rw-p"], [8, 10, "---p"], [10, 16, "rw-p"]]
    assert recs[4]["value"] == [3, "fault", 3]


def test_vma_design_hits_max_map_count():
    mm = AddressSpace(guard_design="vma", max_map_count=10)
    mm.mmap(BASE, 64 * PAGE, RW, ANON)
    installed = 0
    with pytest.raises(OSError) as info:
        for page in range(1, 64, 2):
            mm.madvise(BASE + page * PAGE, PAGE, abi.MADV_GUARD_INSTALL)
            installed += 1
            mm.check()
    assert info.value.errno == errno.ENOMEM
    assert mm.map_count <= 10 and installed == 4


def test_vma_design_remove_restores_each_pieces_protection():
    mm = AddressSpace(guard_design="vma")
    mm.mmap(BASE, 4 * PAGE, abi.PROT_READ, ANON)
    mm.mmap(BASE + 4 * PAGE, 4 * PAGE, RW, ANON)
    mm.madvise(BASE + 2 * PAGE, 4 * PAGE, abi.MADV_GUARD_INSTALL)
    mm.madvise(BASE + 2 * PAGE, 4 * PAGE, abi.MADV_GUARD_INSTALL)  # twice: no effect
    mm.madvise(BASE, 8 * PAGE, abi.MADV_GUARD_REMOVE)
    mm.check()
    assert [(v.vm_start - BASE) // PAGE for v in mm.tree] == [0, 4]
    assert [v.perms for v in mm.tree] == ["r--p", "rw-p"]


# ---------------------------------------------------------------------------- tree design


def test_T1_interior_guard_splits_the_vma_and_costs_a_slot_not_a_vma():
    recs = model(LADDER, "tree")
    s = snap(recs)
    # |PPPP|G|PPP|GG|PPPPPP|  the guards are not VMAs: maps shows gaps
    assert s["pages"] == "PPPPGPPPGGPPPPPP"
    assert [v[:3] for v in s["vmas"]] == [[0, 4, "rw-p"], [5, 8, "rw-p"], [10, 16, "rw-p"]]
    mm = AddressSpace(guard_design="tree")
    mm.mmap(BASE, 16 * PAGE, RW, ANON)
    mm.madvise(BASE + 4 * PAGE, PAGE, abi.MADV_GUARD_INSTALL)
    mm.madvise(BASE + 5 * PAGE, PAGE, abi.MADV_GUARD_INSTALL)  # adjacent: one entry
    mm.check()
    counts = counts_of(mm)
    assert (mm.map_count, counts.guard_entries) == (2, 1)
    assert mm.tree.slot_count == 2 + 1 + 2  # two VMAs, one entry, the gaps below and above


def test_T2_install_is_idempotent_and_refuses_locked_vmas():
    recs = model([{"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
                  {"op": "madvise", "at": 1, "advice": "guard_install"},
                  {"op": "madvise", "at": 0, "len": 3, "advice": "guard_install"},
                  {"op": "mlock", "at": 3},
                  {"op": "madvise", "at": 3, "advice": "guard_install"},
                  {"op": "madvise", "at": 0, "len": 6, "advice": "guard_install"},
                  {"op": "snapshot"}], "tree")
    assert [r["ret"] for r in recs[:6]] == ["ok", "ok", "ok", "ok", "EINVAL", "EINVAL"]
    assert snap(recs)["pages"] == "GGGP"


def test_T3_remove_restores_one_merged_vma_with_empty_pages():
    recs = model(LADDER + [{"op": "madvise", "at": 0, "len": 16, "advice": "guard_remove"},
                           {"op": "touch", "at": 4, "access": "read"},
                           {"op": "snapshot"}], "tree")
    s = snap(recs)
    assert s["vmas"] == [[0, 16, "rw-p", "anon", 0, ""]]
    assert recs[-2]["value"] == [0]  # zero-filled, as after removing a marker
    # Page 4 was read back (zero page); pages 8-9 were never touched again.
    assert s["pages"] == "PPPPPPPP..PPPPPP"


def test_T3_remove_over_holes_is_enomem_and_nothing_is_ok():
    recs = model([{"op": "mmap", "at": 0, "len": 2, "prot": "rw"},
                  {"op": "madvise", "at": 0, "len": 4, "advice": "guard_remove"},
                  {"op": "madvise", "at": 0, "len": 2, "advice": "guard_remove"}], "tree")
    assert [r["ret"] for r in recs] == ["ok", "ENOMEM", "ok"]


def test_T4_T5_access_faults_and_placement_avoids_entries():
    mm = AddressSpace(guard_design="tree")
    mm.mmap(BASE, 4 * PAGE, RW, ANON)
    mm.madvise(BASE + PAGE, PAGE, abi.MADV_GUARD_INSTALL)
    from sparsemm.model import SegFault

    with pytest.raises(SegFault) as info:
        mm.access(BASE + PAGE, write=False)
    assert info.value.si_code == abi.SEGV_MAPERR
    with pytest.raises(OSError) as exc:
        mm.mmap(BASE + PAGE, PAGE, RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    # A hint at the entry: the kernel picks another place (the entry is not free space).
    got = mm.mmap(BASE + PAGE, PAGE, RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    assert got != BASE + PAGE
    mm.check()


def test_T6_map_fixed_and_munmap_replace_entries():
    recs = model([{"op": "mmap", "at": 0, "len": 6, "prot": "rw"},
                  {"op": "madvise", "at": 1, "advice": "guard_install"},
                  {"op": "madvise", "at": 4, "advice": "guard_install"},
                  {"op": "mmap", "at": 1, "prot": "r", "flags": ["private", "anonymous", "fixed"]},
                  {"op": "munmap", "at": 4},
                  {"op": "munmap", "at": 4},
                  {"op": "snapshot"}], "tree")
    assert [r["ret"] for r in recs[:6]] == ["ok"] * 6
    assert snap(recs)["pages"] == "....-."
    assert [v[:3] for v in snap(recs)["vmas"]] == [[0, 1, "rw-p"], [1, 2, "r--p"], [2, 4, "rw-p"],
                                                   [5, 6, "rw-p"]]


def test_T7_mprotect_madvise_mlock_skip_entries():
    recs = model([{"op": "mmap", "at": 0, "len": 6, "prot": "rw"},
                  {"op": "madvise", "at": 2, "len": 2, "advice": "guard_install"},
                  {"op": "mprotect", "at": 0, "len": 6, "prot": "r"},
                  {"op": "madvise", "at": 0, "len": 6, "advice": "dontneed"},
                  {"op": "mlock", "at": 0, "len": 6},
                  {"op": "madvise", "at": 0, "len": 6, "advice": "populate_read"},
                  {"op": "snapshot"}], "tree")
    assert [r["ret"] for r in recs[:6]] == ["ok", "ok", "ok", "ok", "ok", "EFAULT"]
    s = snap(recs)
    assert s["pages"] == "PPGGPP"
    assert [v[:3] + [v[5]] for v in s["vmas"]] == [[0, 2, "r--p", "lo"], [4, 6, "r--p", "lo"]]


def test_T8_mremap_cannot_move_a_guarded_region_as_one():
    recs = model([{"op": "mmap", "at": 0, "len": 6, "prot": "rw"},
                  {"op": "madvise", "at": 2, "advice": "guard_install"},
                  # |..|G|...|  growing [0,2) in place runs into the entry
                  {"op": "mremap", "at": 0, "len": 2, "new_len": 3},
                  # a fixed same-size move of the whole range moves VMAs one by one (6.17+)
                  # and stops at the entry: it is not part of any VMA
                  {"op": "mremap", "at": 0, "len": 6, "new_len": 6, "flags": ["maymove", "fixed"], "to": 20},
                  {"op": "snapshot"}], "tree")
    assert [r["ret"] for r in recs[:4]] == ["ok", "ok", "ENOMEM", "EFAULT"]
    pages = snap(recs)["pages"]
    assert pages[:6] == "--G..." and pages[20:22] == ".."  # the entry stayed behind


def test_T9_fork_copies_entries_even_next_to_wipeonfork():
    recs = model([{"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
                  {"op": "madvise", "at": 0, "len": 4, "advice": "wipeonfork"},
                  {"op": "madvise", "at": 1, "advice": "guard_install"},
                  {"op": "fork", "child": [{"op": "touch", "at": 1, "access": "read"},
                                           {"op": "madvise", "at": 1, "advice": "guard_remove"},
                                           {"op": "snapshot"}]},
                  {"op": "snapshot"}], "tree")
    child = recs[3]["value"]
    assert child[0]["value"] == ["fault"]
    assert child[2]["value"]["pages"] == "...."
    assert snap(recs)["pages"] == ".G.."  # the parent keeps its entry


def test_T10_T11_maps_shows_a_gap_pagemap_bit_58_and_no_map_count():
    from sparsemm.model import procfs

    mm = AddressSpace(guard_design="tree", max_map_count=3)
    mm.mmap(BASE, 8 * PAGE, RW, ANON)
    mm.madvise(BASE + PAGE, PAGE, abi.MADV_GUARD_INSTALL)  # |.|G|......|  two VMAs, one entry
    with pytest.raises(OSError) as info:  # needs two more splits: 2 + 1 >= 3
        mm.madvise(BASE + 3 * PAGE, PAGE, abi.MADV_GUARD_INSTALL)
    assert info.value.errno == errno.ENOMEM
    mm.madvise(BASE + 7 * PAGE, PAGE, abi.MADV_GUARD_INSTALL)  # an edge guard: no net VMA
    mm.check()
    assert (mm.map_count, counts_of(mm).guard_entries) == (2, 2)
    assert len(procfs.maps(mm).splitlines()) == 2
    words = procfs.pagemap(mm, BASE, 8)
    assert [bool(w & abi.PM_GUARD_REGION) for w in words] == [False, True] + [False] * 5 + [True]


def test_designs_report_orders_costs_on_a_partition_alloc_heap():
    script = parse_script(workloads.partition_alloc(64))
    results = {d: run_design(script, d) for d in ("vma", "pte", "tree")}
    vmas = {d: r.counts.vmas for d, r in results.items()}
    assert vmas["pte"] < vmas["tree"] < vmas["vma"]
    assert results["pte"].counts.guard_entries == 0 and results["tree"].counts.guard_entries > 0
    assert not any(r.hit_max_map_count for r in results.values())


def test_designs_report_the_wall_even_when_splits_stop_just_below_it():
    script = parse_script(workloads.partition_alloc(64))
    tree = run_design(script, "tree", max_map_count=20)
    assert tree.enomem_ops > 0 and tree.counts.vmas < 20 and tree.hit_max_map_count
    vma = run_design(script, "vma", max_map_count=20)
    assert vma.hit_max_map_count
    assert not run_design(script, "pte", max_map_count=20).hit_max_map_count


def _essence(r):
    return (r.error, r.counts, r.cost, r.failed_ops, r.enomem_ops, r.hit_max_map_count)


SHARED_CASES = {
    "partition_alloc": workloads.partition_alloc(48),
    "thread_stacks": workloads.thread_stacks(20, stack_pages=64),
    "random_guards": workloads.random_guards(40, seed=3, mapping_pages=512),
    # a guard op inside a fork child ends the shared prefix there; ops after it differ by design
    "fork_child_guards": {"ops": LADDER + [
        {"op": "fork", "child": [{"op": "madvise", "at": 8, "advice": "guard_install"},
                                 {"op": "snapshot"}]},
        {"op": "mprotect", "at": 0, "len": 16, "prot": "r"},
        {"op": "madvise", "at": 4, "advice": "guard_remove"},
        {"op": "snapshot"}]},
    # failing ops in the prefix and in the tail are counted once each
    "failures": {"ops": [
        {"op": "munmap", "at": 3, "len": 1},
        {"op": "mprotect", "at": 0, "len": 4, "prot": "r"},
        {"op": "mmap", "at": 0, "len": 8, "prot": "rw"},
        {"op": "madvise", "at": 2, "advice": "guard_install"},
        {"op": "madvise", "at": 20, "advice": "guard_install"}]},
}


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel", "sequential"])
@pytest.mark.parametrize("case", list(SHARED_CASES))
def test_shared_prefix_runs_give_each_designs_own_result(case, parallel):
    from sparsemm.opscript.designs import run_designs_shared

    script = parse_script(SHARED_CASES[case])
    for limit in (None, 24):
        shared = run_designs_shared(script, max_map_count=limit, parallel=parallel)
        assert list(shared) == ["vma", "pte", "tree"]
        for d, r in shared.items():
            assert _essence(r) == _essence(run_design(script, d, max_map_count=limit)), (d, limit)


def test_design_free_prefix_stops_at_the_first_guard_advice_even_in_a_fork_child():
    from sparsemm.opscript.designs import design_free_prefix

    script = parse_script(SHARED_CASES["fork_child_guards"])
    assert design_free_prefix(script) == 2  # LADDER's mmap and touch; its op 2 installs a guard
    no_guards = parse_script({"ops": [{"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
                                      {"op": "fork", "child": [
                                          {"op": "madvise", "at": 0, "advice": "guard_install"}]}]})
    assert design_free_prefix(no_guards) == 1
    assert design_free_prefix(parse_script({"ops": []})) == 0


def test_shared_runs_report_unknown_designs_and_child_failures():
    from sparsemm.opscript import designs

    script = parse_script(SHARED_CASES["partition_alloc"])
    out = designs.run_designs_shared(script, ("pte", "nope"))
    assert out["nope"].error.startswith("unknown guard design 'nope'") and not out["pte"].error

    def boom():
        raise ValueError("model bug")

    with pytest.raises(RuntimeError, match="ValueError: model bug") as failed:
        designs._fork_call(boom)()
    assert "\n" not in str(failed.value) and "in boom" in failed.value.child_traceback


def test_set_guard_design_switches_only_before_guards_exist():
    mm = AddressSpace()
    mm.mmap(BASE, 8 * PAGE, RW, ANON)
    mm.set_guard_design("vma")
    mm.madvise(BASE + 2 * PAGE, PAGE, abi.MADV_GUARD_INSTALL)
    assert mm.map_count == 3  # the vma design's PROT_NONE split
    with pytest.raises(ValueError, match="unknown guard design"):
        mm.set_guard_design("nope")
    pte = AddressSpace()
    pte.mmap(BASE, 8 * PAGE, RW, ANON)
    pte.madvise(BASE + 2 * PAGE, PAGE, abi.MADV_GUARD_INSTALL)
    with pytest.raises(ValueError, match="guards already exist"):
        pte.set_guard_design("tree")


# ---------------------------------------------------------------------------- tree regressions
# A guard entry cut by munmap or MAP_FIXED kept every piece of the VMA it replaced; a later
# install beside it joined those stale pieces into the new entry, and a remove then restored
# two VMAs over one range (ValueError "overlaps" from VmaTree.insert). Entries now keep
# exactly the pieces of their own range (GuardEntry.check).


def test_tree_entry_cut_by_a_fixed_mmap_then_reguarded_and_removed():
    recs = model([{"op": "mmap", "at": 0, "len": 8, "prot": "rw", "flags": ["private"], "file": "f"},
                  {"op": "madvise", "at": 2, "len": 4, "advice": "guard_install"},
                  # |..|GGGG|..|  then a PROT_NONE mapping over the middle of the entry
                  {"op": "mmap", "at": 3, "len": 2, "prot": "", "flags": ["private", "anonymous", "fixed"]},
                  {"op": "madvise", "at": 1, "len": 6, "advice": "guard_install"},
                  {"op": "madvise", "at": 1, "len": 6, "advice": "guard_remove"},
                  {"op": "snapshot"}], "tree", files={"f": {"pages": 20}})
    assert [r["ret"] for r in recs] == ["ok"] * 6
    # Each page comes back as the VMA it was before its last guard: file pages 1-2 and 5-6
    # merge with their untouched neighbours, pages 3-4 are the anonymous PROT_NONE mapping.
    assert snap(recs)["vmas"] == [[0, 3, "rw-p", "f", 0, ""], [3, 5, "---p", "anon", 0, ""],
                                  [5, 8, "rw-p", "f", 5, ""]]
    assert snap(recs)["pages"] == "........"


def test_tree_entry_cut_at_its_start_then_joined_from_below():
    recs = model([{"op": "mmap", "at": 4, "len": 12, "prot": "r", "flags": ["shared", "anonymous", "fixed"]},
                  {"op": "madvise", "at": 14, "len": 2, "advice": "guard_install"},
                  {"op": "mmap", "at": 14, "len": 1, "prot": "rx", "flags": ["private", "anonymous", "fixed"]},
                  {"op": "madvise", "at": 9, "len": 6, "advice": "guard_install"},
                  {"op": "fork", "child": [{"op": "madvise", "at": 9, "len": 7, "advice": "guard_remove"},
                                           {"op": "snapshot"}]},
                  {"op": "snapshot"}], "tree", arena_pages=16)
    child = recs[4]["value"]
    assert [r["ret"] for r in child] == ["ok", "ok"]
    assert [v[:4] for v in child[1]["value"]["vmas"]] == [
        [4, 14, "r--s", "shared-anon"], [14, 15, "r-xp", "anon"], [15, 16, "r--s", "shared-anon"]]
    assert snap(recs)["pages"][9:] == "GGGGGGG"
