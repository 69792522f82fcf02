"""Kernel bytes measured in a memory cgroup: the cgroup's life cycle, and what it measures.

The figures are checked against the model's ``memcg_bytes`` within the charge granularity
(``charge_slack_bytes``), with a load generator (tests/disturber.py) churning VMAs, slab
objects and tasks in other processes all the while.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsemm.native import memcg
from sparsemm.opscript.designs import run_design
from sparsemm.opscript.measure import MeasureError, measure_script, prediction_from_counts
from sparsemm.opscript.script import parse_script

from conftest import needs_guards

HERE = Path(__file__).resolve().parent


def _hierarchy():
    try:
        return memcg.find_hierarchy()
    except memcg.MemcgUnavailable as exc:
        return str(exc)


HIERARCHY = _hierarchy()
needs_memcg = pytest.mark.skipif(isinstance(HIERARCHY, str) or os.geteuid() != 0,
                                 reason=f"no memory cgroup can be made here: {HIERARCHY}")


def ours(pid: int | None = None) -> list[str]:
    """This module's cgroups under our hierarchy (of creator ``pid``, if given)."""
    prefix = memcg.NAME_PREFIX + (f"{pid}-" if pid is not None else "")
    return [n for n in os.listdir(HIERARCHY.path) if n.startswith(prefix)]


@pytest.fixture
def disturber():
    """Another process churning VMAs, page tables, slab objects and tasks until the test ends."""
    proc = subprocess.Popen([sys.executable, str(HERE / "disturber.py")])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def ladder(n: int, *, advice: str | None = None, order: str = "sequential", populate: bool = True,
           guards: bool = True) -> dict:
    """One RW mapping of 2n+1 pages, written, then n one-page guards (every odd page)."""
    pages = 2 * n + 1
    ops = [{"op": "mmap", "at": 0, "len": pages, "prot": "rw"}]
    if populate:
        ops.append({"op": "touch", "at": 0, "len": pages, "access": "write"})
    at = [2 * i + 1 for i in range(n)] if guards else []
    if order == "random":
        random.Random(n).shuffle(at)
    for page in at:
        ops.append({"op": "madvise", "at": page, "advice": advice} if advice
                   else {"op": "mprotect", "at": page, "prot": "none"})
    return {"note": f"{n} guards, {order}", "arena_pages": pages, "ops": ops}


def measured_and_predicted(doc: dict, repeat: int = 3) -> tuple[int, int, object]:
    script = parse_script(doc)
    m = measure_script(script, repeat=repeat)
    assert m.memcg, f"no cgroup measurement: {m.memcg_unavailable}"
    predicted = prediction_from_counts(run_design(script, "pte").counts)["memcg_bytes"]
    return m.values["memcg_bytes"], predicted, m


# --- the cgroup's life cycle ------------------------------------------------------------------

@needs_memcg
def test_a_cgroup_is_made_joined_read_and_removed():
    with memcg.MemoryCgroup.create() as cg:
        assert os.path.isdir(cg.path)
        assert os.path.basename(cg.path) in ours(os.getpid())
        assert cg.procs() == []
        # A child that joins is charged there: a thousand split VMAs move the counter.
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.environ.update(cg.env)
                memcg.join_from_env()
                import mmap

                kb = memcg.KernelBytes(cg.hierarchy)
                before, _ = kb.settled()
                m = mmap.mmap(-1, 2001 * 4096)
                import ctypes

                libc = ctypes.CDLL(None)
                libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
                for i in range(1000):
                    libc.mprotect(addr + (2 * i + 1) * 4096, 4096, 0)
                after, _ = kb.settled()
                os.write(w, str(after - before).encode())
            finally:
                os._exit(0)
        os.close(w)
        grew = int(os.read(r, 100) or b"0")
        os.waitpid(pid, 0)
        # 2000 new vm_area_structs at 192 + 8 B, charged in whole pages
        assert abs(grew - 2000 * 200) <= memcg.charge_slack_bytes()
    assert not os.path.exists(cg.path) and cg.removed


@needs_memcg
def test_stale_cgroups_of_dead_runs_are_removed_and_nothing_else():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = os.path.join(HIERARCHY.path, f"{memcg.NAME_PREFIX}{dead_pid}-0123abcd")
    live = os.path.join(HIERARCHY.path, f"{memcg.NAME_PREFIX}1-0123abcd")  # pid 1 never dies
    other = os.path.join(HIERARCHY.path, f"{memcg.NAME_PREFIX}{dead_pid}-not-ours")
    made = []
    try:
        for path in (stale, live, other):
            os.mkdir(path)
            made.append(path)
        removed = memcg.remove_stale(HIERARCHY.path)
        assert removed == [os.path.basename(stale)]
        assert not os.path.exists(stale) and os.path.isdir(live) and os.path.isdir(other)
    finally:
        for path in made:
            if os.path.exists(path):
                os.rmdir(path)


@needs_memcg
def test_the_cgroup_is_removed_when_the_child_fails():
    doc = ladder(30_000)
    with pytest.raises(MeasureError, match="timed out after 0.5 s"):
        measure_script(parse_script(doc), repeat=1, timeout=0.5)
    assert ours(os.getpid()) == []


@needs_memcg
def test_the_cgroup_is_removed_on_ctrl_c(tmp_path):
    code = ("import json, sys\n"
            "from sparsemm.opscript.measure import measure_script\n"
            "from sparsemm.opscript.script import parse_script\n"
            "measure_script(parse_script(json.load(open(sys.argv[1]))), repeat=50)\n")
    path = tmp_path / "big.json"
    import json

    path.write_text(json.dumps(ladder(20_000)))
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ours(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ours(proc.pid), "the measurement never made its cgroup"
        time.sleep(0.5)  # a measuring child is running in it now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"KeyboardInterrupt" in err
    assert ours(proc.pid) == []


# --- what it measures -------------------------------------------------------------------------

@pytest.mark.slow  # tens of seconds (make test's slowest 20)
@needs_memcg
def test_mprotect_guards_cost_one_figure_per_guard_in_any_order_on_a_busy_machine(disturber):
    slack = memcg.charge_slack_bytes()
    per_guard = {}
    for n in (2000, 6000):
        base, predicted_base, _ = measured_and_predicted(ladder(n, guards=False))
        for order in ("sequential", "random"):
            guarded, predicted, m = measured_and_predicted(ladder(n, order=order))
            assert abs(guarded - predicted) <= slack, (n, order)
            # The process's own figures stay exact while another process churns.
            assert m.values["arena_vmas"] == m.values["map_count"] == 2 * n + 1
            assert m.spread["vmpte_bytes"][0] == m.spread["vmpte_bytes"][1]
            per_guard[n, order] = (guarded - base) / n
            model = (predicted - predicted_base) / n
            assert per_guard[n, order] == pytest.approx(model, abs=2 * slack / n), (n, order)
    # One figure per guard whatever the count and the order (maple nodes, which do depend on
    # the order, are not charged): two VMAs and two anon_vma_chains at their charged size.
    figures = sorted(per_guard.values())
    assert figures[-1] - figures[0] <= 2 * slack / 2000


@pytest.mark.slow  # tens of seconds (make test's slowest 20)
@needs_memcg
@needs_guards
def test_guard_markers_in_written_memory_cost_nothing(disturber):
    slack = memcg.charge_slack_bytes()
    plain, _, _ = measured_and_predicted(ladder(6000, guards=False))
    marked, predicted, m = measured_and_predicted(ladder(6000, advice="guard_install", order="random"))
    assert m.values["arena_vmas"] == 1
    assert abs(marked - predicted) <= slack
    assert abs(marked - plain) <= slack  # the page tables and the anon_vma were there already


@needs_memcg
@pytest.mark.slow
def test_vmpte_exact_in_every_run_at_30k_guards():
    # 60,001 written pages: a measuring child that kept a value per page would grow its own
    # heap into a new 2 MiB block now and then, and VmPTE would be one page high.
    script = parse_script(ladder(30_000))
    predicted = prediction_from_counts(run_design(script, "pte").counts)
    m = measure_script(script, repeat=4)
    assert [r["vmpte_bytes"] for r in m.runs] == [predicted["vmpte_bytes"]] * 4
    assert m.attempts == 4 and m.self_disturbed == 0  # no run saw the measuring process grow
    assert abs(m.values["memcg_bytes"] - predicted["memcg_bytes"]) <= memcg.charge_slack_bytes()


@needs_memcg
def test_each_shared_anonymous_mapping_charges_its_shmem_file():
    n = 1000  # one-page shared anonymous mappings with holes between them
    ops = [{"op": "mmap", "at": 2 * i, "prot": "rw", "flags": ["shared", "anonymous"]} for i in range(n)]
    # and one of two pages, split in two: its two VMAs share one file
    ops.insert(0, {"op": "mmap", "at": 2 * n, "len": 2, "prot": "rw", "flags": ["shared", "anonymous"]})
    ops.append({"op": "mprotect", "at": 2 * n, "prot": "r"})
    measured, predicted, m = measured_and_predicted({"arena_pages": 2 * n + 2, "ops": ops})
    assert m.values["arena_vmas"] == n + 2
    assert abs(measured - predicted) <= memcg.charge_slack_bytes()
    # the inode, struct file and dentry of each of the n + 1 files, beyond the VMAs
    from sparsemm.model.costs import constants

    per_file = (measured - (n + 2) * constants().charged("vm_area_struct")) / (n + 1)
    assert per_file == pytest.approx(constants().memcg_shmem_file, abs=memcg.charge_slack_bytes() / n)


def test_a_v2_counter_is_the_kernel_line_of_memory_stat(tmp_path):
    # cgroup v2 is not mounted with its memory controller here: its file format, at least.
    (tmp_path / "memory.stat").write_text("anon 8192\nfile 0\nkernel 1234567\nkernel_stack 16384\n"
                                          "pagetables 8192\nslab 300000\n")
    kb = memcg.KernelBytes(memcg.Hierarchy(2, str(tmp_path)))
    try:
        assert kb.read() == 1234567
        (tmp_path / "memory.stat").write_text("slab 300000\npagetables 8192\nkernel_stack 16384\n")
        assert kb.read() == 300000 + 8192 + 16384  # an older kernel without the kernel line
    finally:
        kb.close()
    assert memcg.Hierarchy(2, "/x").method == "cgroup v2 memory.stat kernel"
