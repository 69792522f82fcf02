"""The fast paths of issue 15 behave exactly as the paths they short-cut: the pre-bound
dispatch table, parse_script's short path, plain-int vm_flags, the GC pause around model
runs, and analyze's worker count under a CPU affinity."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys

import pytest

from sparsemm import abi, workloads
from sparsemm.abi import MapFlag, VmFlag
from sparsemm.model.mm import AddressSpace
from sparsemm.opscript.model_backend import run_model, start_model
from sparsemm.opscript.script import ScriptError, parse_script

P = abi.PAGE_SIZE


def test_run_ops_table_gives_the_records_of_run_op_one_by_one():
    doc = workloads.random_guards(300, seed=3)
    doc["ops"] += [{"op": "munmap", "at": 0, "len": 4}, {"op": "mprotect", "at": 0, "len": 1, "prot": "r"},
                   {"op": "touch", "at": 0, "access": "read"},
                   {"op": "snapshot"}, {"op": "fork", "child": [{"op": "touch", "at": 1, "access": "write"}]}]
    script = parse_script(doc)
    by_table = start_model(script).run_ops(script.ops)
    runner = start_model(script)
    one_by_one = [runner.run_op(op) for op in script.ops]
    assert by_table == one_by_one
    assert by_table[-4]["ret"] == "ENOMEM" and by_table[-3]["value"] == ["fault"]  # errno, extra fields
    assert [list(r)[:3] for r in by_table] == [["i", "op", "ret"]] * len(by_table)


def test_dispatch_table_binds_every_op_method():
    script = parse_script({"ops": [{"op": "snapshot"}]})
    runner = start_model(script)
    table = runner.dispatch_table()
    assert {"mmap", "munmap", "mprotect", "madvise", "touch", "fork", "snapshot"} <= set(table)
    assert all(table[n].__func__ is getattr(type(runner), "op_" + n) for n in table)


@pytest.mark.parametrize("op", [
    {"op": "mmap", "at": 3, "len": 2, "prot": "rw"},
    {"op": "madvise", "at": 0, "len": 1, "advice": "guard_install"},
    {"op": "touch", "at": 5, "len_bytes": 3 * P + 1, "access": "write"},
    {"op": "mprotect", "at": -1, "len": 1, "prot": "r"},          # below the arena: refused
    {"op": "munmap", "at": 10, "len": -1},                         # a negative page length
    {"op": "munmap", "at_bytes": 0, "len": 1},                     # outside the arena
    {"op": "mremap", "at": 1, "len": 1, "new_len": 2},
])
def test_parse_short_path_matches_the_byte_forms_and_keeps_every_error(op):
    """The page form (short path) and the byte form (full path) of one op parse alike, or
    fail alike with the same field named."""
    doc = {"arena_pages": 64, "ops": [op]}
    as_bytes = dict(op)
    for key in ("at", "len", "new_len"):  # at_bytes is relative to the arena base, as 'at' is
        if key in op:
            del as_bytes[key]
            as_bytes[key + "_bytes"] = op[key] * P
    try:
        want = parse_script(doc).ops[0]
    except ScriptError as exc:
        with pytest.raises(ScriptError) as again:
            parse_script(doc)
        assert again.value.field_name == exc.field_name and str(again.value) == str(exc)
        return
    got = parse_script({"arena_pages": 64, "ops": [as_bytes]}).ops[0]
    assert (got.addr, got.length, got.new_length, got.flags, got.prot) == (
        want.addr, want.length, want.new_length, want.flags, want.prot)
    assert type(want.flags) is int


def test_negative_page_length_is_still_refused_naming_the_field():
    with pytest.raises(ScriptError) as exc:
        parse_script({"ops": [{"op": "munmap", "at": 1, "len": -1}]})
    assert exc.value.field_name == "len" and "must not be negative" in str(exc.value)


def test_vm_flags_stay_plain_ints_through_every_path_that_changes_them():
    mm = AddressSpace()
    base = 0x7000_0000_0000
    fixed = int(MapFlag.PRIVATE | MapFlag.ANONYMOUS | MapFlag.FIXED)
    mm.mmap(base, 8 * P, 3, fixed)
    mm.mprotect(base + P, P, 1)                       # a split and a flags change
    mm.madvise(base + 4 * P, P, abi.MADV_GUARD_INSTALL)  # pte design: VM_MAYBE_GUARD
    mm.mlock(base, 2 * P, 0)
    child = mm.fork()                                 # fork clears VM_LOCKED in the copy
    for space in (mm, child):
        for vma in space:
            assert type(vma.vm_flags) is int
    locked = [v for v in mm if v.vm_flags & VmFlag.LOCKED]
    assert locked and not any(v.vm_flags & VmFlag.LOCKED for v in child)
    assert any(v.vm_flags & VmFlag.MAYBE_GUARD for v in mm)
    assert [v.perms for v in mm][:2] == ["rw-p", "r--p"]


def test_model_runs_pause_the_collector_and_restore_it():
    script = parse_script(workloads.random_guards(50, seed=1))
    assert gc.isenabled()
    run_model(script)
    assert gc.isenabled()
    gc.disable()
    try:
        run_model(script)
        assert not gc.isenabled()  # a caller's own pause is kept
    finally:
        gc.enable()


@pytest.mark.skipif(not shutil.which("taskset") or not hasattr(os, "sched_getaffinity"),
                    reason="needs taskset and sched_getaffinity")
def test_analyze_counts_the_cpus_it_may_use_not_the_machine():
    code = "from sparsemm.analyze.report import usable_cpus; print(usable_cpus())"
    one = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, timeout=120)
    assert one.stdout.strip() == "1"
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120)
    assert int(free.stdout) == len(os.sched_getaffinity(0))


def test_run_model_keeps_no_node_model_and_gives_the_same_records():
    from sparsemm.opscript.model_backend import run_model_state

    doc = workloads.random_guards(200, seed=5)
    doc["ops"].append({"op": "fork", "child": [{"op": "munmap", "at": 0, "len": 2}, {"op": "snapshot"}]})
    script = parse_script(doc)
    with_nodes, mm = run_model_state(script)
    without, bare = run_model_state(script, node_model=False)
    assert with_nodes == without == run_model(script)
    assert mm.tree.maple is not None and bare.tree.maple is None
    assert bare.fork().tree.maple is None and mm.fork().tree.maple is not None


def test_parse_short_path_keeps_the_hugetlb_range_check():
    """A hugetlb mmap's range rounds up to 2 MiB: near the arena's end it leaves the arena."""
    with pytest.raises(ScriptError) as exc:
        parse_script({"arena_pages": 1024, "ops": [
            {"op": "mmap", "at": 768, "len": 1, "prot": "rw", "flags": ["private", "anonymous", "hugetlb"]}]})
    assert exc.value.field_name == "at"
    parse_script({"arena_pages": 1024, "ops": [{"op": "mmap", "at": 768, "len": 1, "prot": "rw"}]})
