"""The kernel backend: op scripts on the running kernel give the records docs/opscript.md defines."""

from __future__ import annotations

import json

import pytest

from sparsemm.opscript.kernel import run_kernel
from sparsemm.opscript.script import parse_script

from conftest import needs_guards, run_cli, script_doc

pytestmark = needs_guards


def run(ops, **top):
    return run_kernel(parse_script({"ops": ops, **top}))


def snap(records, i):
    return records[i]["value"]


def test_records_have_one_entry_per_op_in_order():
    recs = run([{"op": "mmap", "at": 0, "len": 4, "prot": "rw"}, {"op": "munmap", "at": 0, "len": 4},
                {"op": "snapshot"}])
    assert [(r["i"], r["op"], r["ret"]) for r in recs] == [(0, "mmap", "ok"), (1, "munmap", "ok"),
                                                           (2, "snapshot", "ok")]
    assert snap(recs, 2) == {"vmas": [], "pages": ""}


def test_guard_faults_and_neighbours_do_not():
    recs = run([
        {"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
        {"op": "touch", "at": 0, "len": 4, "access": "write", "value": 9},
        {"op": "madvise", "at": 1, "advice": "guard_install"},
        {"op": "touch", "at": 0, "len": 4, "access": "read"},
        {"op": "snapshot"},
    ])
    assert recs[1]["value"] == ["ok"] * 4
    assert recs[3]["value"] == [9, "fault", 9, 9]
    assert snap(recs, 4) == {"vmas": [[0, 4, "rw-p", "anon", 0, "gu"]], "pages": "PGPP"}


def test_pages_row_stops_at_last_mapped_page_and_marks_holes():
    recs = run([{"op": "mmap", "at": 2, "len": 2, "prot": "r"}, {"op": "mmap", "at": 6, "prot": ""},
                {"op": "snapshot"}])
    assert snap(recs, 2)["pages"] == "--..--."
    assert snap(recs, 2)["vmas"] == [[2, 4, "r--p", "anon", 0, ""], [6, 7, "---p", "anon", 0, ""]]


def test_file_and_shared_anon_backing_and_pgoff():
    recs = run([
        {"op": "mmap", "at": 0, "len": 2, "prot": "r", "flags": ["shared"], "file": "f", "pgoff": 3},
        {"op": "touch", "at": 0, "len": 2, "access": "read"},
        {"op": "mmap", "at": 4, "len": 2, "prot": "rw", "flags": ["shared", "anonymous"]},
        {"op": "snapshot"},
    ], files={"f": {"pages": 8}})
    # Page i of a script file starts with (i + 1) & 0xff.
    assert recs[1]["value"] == [4, 5]
    assert snap(recs, 3)["vmas"] == [[0, 2, "r--s", "f", 3, ""], [4, 6, "rw-s", "shared-anon", 0, ""]]


def test_errors_are_records_not_failures():
    recs = run([{"op": "mmap", "at": 0, "prot": "rw"}, {"op": "mmap", "at": 0, "prot": "rw"},
                {"op": "mprotect", "at_bytes": 1, "prot": "r"}, {"op": "madvise", "at": 0, "advice": 99},
                {"op": "munmap", "at": 0, "len_bytes": 0}])
    assert [r["ret"] for r in recs] == ["ok", "EEXIST", "EINVAL", "EINVAL", "EINVAL"]


def test_mlock_over_guard_is_enomem_but_leaves_lo_and_populates_before_it():
    recs = run([{"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
                {"op": "madvise", "at": 2, "advice": "guard_install"},
                {"op": "mlock", "at": 0, "len": 4}, {"op": "snapshot"}])
    assert recs[2]["ret"] == "ENOMEM"
    assert snap(recs, 3) == {"vmas": [[0, 4, "rw-p", "anon", 0, "gu lo"]], "pages": "PPG."}


def test_fork_child_sees_guards_not_mlock_and_gets_own_records():
    recs = run([{"op": "mmap", "at": 0, "len": 3, "prot": "rw"}, {"op": "mlock", "at": 2},
                {"op": "madvise", "at": 0, "advice": "guard_install"},
                {"op": "fork", "child": [{"op": "snapshot"},
                                         {"op": "madvise", "at": 0, "advice": "guard_remove"}]},
                {"op": "snapshot"}])
    child = recs[3]["value"]
    assert [r["i"] for r in child] == [0, 1]
    # The child has no `lo`; fork copies VMAs one by one and does not merge them.
    assert child[0]["value"]["vmas"] == [[0, 2, "rw-p", "anon", 0, "gu"], [2, 3, "rw-p", "anon", 0, ""]]
    assert child[0]["value"]["pages"][0] == "G"
    # The child's remove does not touch the parent.
    assert snap(recs, 4)["pages"] == "G.P"


def test_kernel_chosen_move_is_reported_as_moved():
    recs = run([{"op": "mmap", "at": 0, "len": 2, "prot": "rw"}, {"op": "mmap", "at": 2, "prot": "r"},
                {"op": "mremap", "at": 0, "len": 2, "new_len": 4, "flags": ["maymove"]}])
    assert recs[2]["ret"] == "MOVED" and isinstance(recs[2]["to"], int)


def test_populate_over_guard_is_efault():
    recs = run([{"op": "mmap", "at": 0, "len": 3, "prot": "rw"},
                {"op": "madvise", "at": 1, "advice": "guard_install"},
                {"op": "madvise", "at": 0, "len": 3, "advice": "populate_write"}, {"op": "snapshot"}])
    assert recs[2]["ret"] == "EFAULT"
    assert snap(recs, 3)["pages"] == "PG."


def test_cli_json_is_exactly_the_records():
    doc = script_doc([{"op": "mmap", "at": 0, "prot": "rw"}, {"op": "snapshot"}])
    proc = run_cli("run", "-", stdin=doc)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == run_kernel(parse_script(json.loads(doc)))


def test_cli_text_format_draws_pages_and_boundaries():
    doc = script_doc([{"op": "mmap", "at": 0, "len": 2, "prot": "rw"},
                      {"op": "mmap", "at": 2, "len": 2, "prot": "r"},
                      {"op": "madvise", "at": 0, "advice": "guard_install"}, {"op": "snapshot"}],
                     note="two VMAs")
    proc = run_cli("run", "-", "--format", "text", stdin=doc)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "# two VMAs"
    assert "|G.|..|" in proc.stdout
    assert any("[0,2) rw-p anon pgoff=0 gu" in line for line in lines)
    assert len([line for line in lines if line[:4].strip().isdigit()]) == 4


def test_model_backend_option_exists():
    proc = run_cli("run", "-", "--backend", "model", stdin=script_doc([{"op": "snapshot"}]))
    # Until the model lands this is a clear one-line error; afterwards it runs.
    assert proc.returncode in (0, 2)
    if proc.returncode == 2:
        assert "not implemented yet" in proc.stderr and len(proc.stderr.splitlines()) == 1


def _fake_runs(monkeypatch, quiet):
    """Replace the child: run i returns records [{"run": i}] and ``quiet[i]``. Returns the runs made."""
    from sparsemm.opscript import kernel
    runs = []

    def child(script, timeout):
        runs.append(len(runs))
        return [{"run": len(runs)}], quiet[len(runs) - 1]

    monkeypatch.setattr(kernel, "_run_child", child)
    return runs


def test_a_run_disturbed_by_background_thp_activity_is_run_again(monkeypatch):
    runs = _fake_runs(monkeypatch, [False, True, True])
    assert run([{"op": "snapshot"}]) == [{"run": 2}]
    assert len(runs) == 2


def test_a_quiet_run_is_not_repeated_and_attempts_are_bounded(monkeypatch):
    runs = _fake_runs(monkeypatch, [True, True])
    assert run([{"op": "snapshot"}]) == [{"run": 1}]
    assert len(runs) == 1
    runs = _fake_runs(monkeypatch, [False] * 10)
    assert run_kernel(parse_script({"ops": [{"op": "snapshot"}]}), attempts=3) == [{"run": 3}]
    assert len(runs) == 3


def test_the_child_reports_whether_thp_counters_moved_during_its_ops():
    from sparsemm.opscript import kernel
    records, quiet = kernel._run_child(parse_script({"ops": [{"op": "snapshot"}]}), 60)
    assert records == [{"i": 0, "op": "snapshot", "ret": "ok", "value": {"vmas": [], "pages": ""}}]
    assert isinstance(quiet, bool)


def test_thp_activity_reads_the_khugepaged_and_vmstat_counters():
    from sparsemm.native import procfs
    fingerprint = procfs.thp_activity()
    assert len(fingerprint) == 1 + len(procfs.THP_VMSTAT_EVENTS)
    assert all(isinstance(v, int) and v >= 0 for v in fingerprint)
    with open(procfs.KHUGEPAGED_COLLAPSED) as fh:
        assert fingerprint[0] <= int(fh.read())


def test_the_child_survives_a_script_that_reaches_max_map_count():
    """A script that brings the child to vm.max_map_count, then snapshots and touches: the
    child still allocates (brk, not mmap: kernel.CHILD_ENV) and reports every op. The
    split that would pass the limit fails as the kernel says (ENOMEM), not the child."""
    from sparsemm.native import procfs

    limit = procfs.read_int("/proc/sys/vm/max_map_count")
    singles = limit // 2 + 64  # more one-page splits than the limit allows
    pages = 2 * singles + 2
    ops = [{"op": "mmap", "at": 0, "len": pages, "prot": "rw", "flags": ["private", "anonymous", "noreserve"]}]
    for start in range(0, singles, 1024):
        ops.append({"op": "process_madvise", "advice": "dontfork",
                    "ranges": [[2 * k + 1, 1] for k in range(start, min(singles, start + 1024))]})
    ops += [{"op": "mprotect", "at": pages - 2, "len": 1, "prot": "r"},
            {"op": "touch", "at": 0, "len": 2, "access": "write"}, {"op": "snapshot"}]
    recs = run(ops, arena_pages=pages)
    assert len(recs) == len(ops)
    assert "ENOMEM" in {r["ret"] for r in recs[1:-3]} | {recs[-3]["ret"]}
    assert recs[-2]["value"] == ["ok", "ok"]
    vmas = snap(recs, -1)["vmas"]
    assert limit - 1000 < len(vmas) <= limit


# -- mmap_min_addr and CAP_SYS_RAWIO: pinned by a script, else this machine's ----------------

_LOW = {"outside_arena": True, "arena_pages": 4}


def _low(addr, **op):
    return {"op": "mmap", "at_bytes": addr - 0x1000_0000_0000, "prot": "r", **op}


def test_without_pins_the_model_takes_the_machines_mmap_min_addr_and_the_callers_rawio():
    """No pin: both backends use this machine's vm.mmap_min_addr and this process's
    CAP_SYS_RAWIO (the kernel child is forked from it), so they agree whatever they are."""
    from sparsemm.opscript.model_backend import run_model
    ops = [_low(addr, flags=["private", "anonymous", "fixed"]) for addr in (0, 0x1000, 0xF000)]
    script = parse_script({"ops": ops, **_LOW})
    assert run_model(script) == run_kernel(script)
    script = parse_script({"ops": ops, "cap_sys_rawio": False, **_LOW})
    recs = run_kernel(script)
    assert recs[0]["ret"] == "EPERM" and run_model(script) == recs  # page 0 is below any sysctl


def test_a_pinned_mmap_min_addr_the_machine_lacks_is_refused_and_the_model_follows_the_pin():
    from sparsemm.native import probe
    from sparsemm.opscript.dispatch import BackendUnavailable
    from sparsemm.opscript.model_backend import run_model
    sysctl, floor = probe.mmap_min_addr()
    other = {"sysctl": sysctl + 4096, "floor": max(floor, sysctl + 4096)}
    script = parse_script({"ops": [_low(sysctl, flags=["private", "anonymous", "fixed"])],
                           "mmap_min_addr": other, "cap_sys_rawio": False, **_LOW})
    with pytest.raises(BackendUnavailable, match="pins vm.mmap_min_addr"):
        run_kernel(script)
    assert run_model(script)[0]["ret"] == "EPERM"  # below the pinned sysctl, without the capability
    r = run_cli("run", "--backend", "kernel", "-", stdin=json.dumps(script.doc))
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "mmap_min_addr" in r.stderr


def test_an_mmap_hint_below_the_floor_is_placed_where_the_kernel_places_it():
    """The op format has no plain hint (every script mmap is fixed), so this asks the kernel
    directly: round_hint_to_min() raises a hint below the kernel's mmap_min_addr to it."""
    from sparsemm import abi
    from sparsemm.model.mm import AddressSpace
    from sparsemm.native import libc, probe
    sysctl, floor = probe.mmap_min_addr()
    mm = AddressSpace(mmap_min_addr=floor, dac_mmap_min_addr=sysctl)
    flags = abi.MAP_PRIVATE | abi.MAP_ANONYMOUS
    for hint in (abi.PAGE_SIZE, floor - abi.PAGE_SIZE, floor):
        got = libc.mmap(hint, abi.PAGE_SIZE, abi.PROT_NONE, flags)
        libc.munmap(got, abi.PAGE_SIZE)
        assert mm.mmap(hint, abi.PAGE_SIZE, abi.PROT_NONE, flags) == got == floor, hex(hint)
        mm.munmap(got, abi.PAGE_SIZE)
