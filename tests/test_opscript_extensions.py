"""The op-format extensions of docs/opscript.md ("Extensions"): their validation, and what
each op does on the model where no kernel is needed to say it.

Every bad value is refused in one line naming the op (index and name) and the field. The
kernel's own answers are pinned by the corpus (tests/conformance/ops/ and the scripts the
extensions added elsewhere), which both backends must reproduce.
"""

from __future__ import annotations

import errno

import pytest

from sparsemm import abi
from sparsemm.opscript.dispatch import BackendUnavailable
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import ScriptError, parse_script


def _doc(*ops, **top):
    return {"ops": list(ops), **top}


BAD = [
    # pagemap_scan
    (_doc({"op": "pagemap_scan", "at": 0, "require": ["guards"]}),
     "op 0 (pagemap_scan) field 'require': unknown flag 'guards'"),
    (_doc({"op": "pagemap_scan", "at": 0, "anyof": -1}), "op 0 (pagemap_scan) field 'anyof': a raw category mask"),
    (_doc({"op": "pagemap_scan", "at": 0, "return": 1 << 64}), "op 0 (pagemap_scan) field 'return'"),
    (_doc({"op": "pagemap_scan", "at": 0, "inverted": "guard"}), "op 0 (pagemap_scan) field 'inverted'"),
    (_doc({"op": "pagemap_scan", "at": 0, "max_pages": -1}), "op 0 (pagemap_scan) field 'max_pages'"),
    (_doc({"op": "pagemap_scan", "at": 0, "vec_len": 4097}), "op 0 (pagemap_scan) field 'vec_len'"),
    (_doc({"op": "pagemap_scan", "at": 0, "len": 2048}), "op 0 (pagemap_scan) field 'at': the range"),
    # mseal
    (_doc({"op": "mseal", "at": 0, "flags": ["x"]}), "op 0 (mseal) field 'flags': must be an integer"),
    (_doc({"op": "mseal", "at": 0, "flags": 1 << 64}), "op 0 (mseal) field 'flags'"),
    (_doc({"op": "mseal", "at": 1020, "len": 8}), "op 0 (mseal) field 'at': the range"),
    (_doc({"op": "mseal", "len": 8}), "op 0 (mseal) field 'at': missing"),
    # raw prot and flag bits
    (_doc({"op": "mmap", "at": 0, "prot": 1 << 31}), "op 0 (mmap) field 'prot': raw prot"),
    (_doc({"op": "mmap", "at": 0, "prot": -1}), "op 0 (mmap) field 'prot': raw prot"),
    (_doc({"op": "mprotect", "at": 0, "prot": ["r", "semaphore"]}), "op 0 (mprotect) field 'prot': unknown flag"),
    (_doc({"op": "mprotect", "at": 0, "prot": 1.0}), "op 0 (mprotect) field 'prot': must be a string"),
    (_doc({"op": "mmap", "at": 0, "prot": "r", "flags": ["private", -2]}), "op 0 (mmap) field 'flags': raw flag bits"),
    (_doc({"op": "mmap", "at": 0, "prot": "r", "flags": ["private", 1 << 31]}), "op 0 (mmap) field 'flags'"),
    (_doc({"op": "mremap", "at": 0, "new_len": 1, "flags": [1]}), "op 0 (mremap) field 'flags': must be a list of names"),
    # disk files and read-only descriptors
    (_doc({"op": "mmap", "at": 0, "prot": "r", "readonly": True}), "op 0 (mmap) field 'readonly': a read-only descriptor needs a 'file'"),
    (_doc({"op": "mmap", "at": 0, "prot": "r", "file": "f", "readonly": "yes"}, files={"f": {"pages": 1}}),
     "op 0 (mmap) field 'readonly': must be true or false"),
    (_doc(files={"f": {"pages": 1, "disk": 1}}), "file 'f': 'disk' must be true or false"),
    (_doc(files={"f": {"pages": 1, "tmpfs": True}}), "file 'f': want"),
    # userfaultfd
    (_doc({"op": "uffd_copy", "at": 0, "value": 256}), "op 0 (uffd_copy) field 'value'"),
    (_doc({"op": "uffd_copy", "at": 0, "len": 70000}, arena_pages=100000), "op 0 (uffd_copy) field 'len': uffd_copy covers"),
    (_doc({"op": "uffd_register", "at": 0, "mode": ["wp"]}), "op 0 (uffd_register) field 'mode': unknown field"),
    (_doc({"op": "uffd_unregister", "at": 1020, "len": 8}), "op 0 (uffd_unregister) field 'at': the range"),
    # process_madvise at a child
    (_doc({"op": "process_madvise", "ranges": [[0, 1]], "advice": "cold", "target": "parent"}),
     "op 0 (process_madvise) field 'target'"),
    (_doc({"op": "process_madvise", "ranges": [[0, 1]], "advice": "cold", "flags": 1 << 32}),
     "op 0 (process_madvise) field 'flags'"),
    # special mappings
    (_doc({"op": "special_madvise", "mapping": "stack", "advice": "guard_install"}),
     "op 0 (special_madvise) field 'mapping'"),
    (_doc({"op": "special_madvise", "mapping": "vdso", "advice": "dontneed"}),
     "op 0 (special_madvise) field 'advice': only guard_install and guard_remove"),
    # hugetlb
    (_doc(hugetlb_pages=65), "'hugetlb_pages' must be an integer 0..64"),
    (_doc({"op": "mmap", "at": 768, "len": 1, "prot": "rw", "flags": ["private", "anonymous", "hugetlb"]}),
     "op 0 (mmap) field 'at': the range"),
    # touch with cpu
    (_doc({"op": "touch", "at": 0, "access": "read", "cpu": 1}), "op 0 (touch) field 'cpu': must be true or false"),
]


@pytest.mark.parametrize("doc, needle", BAD)
def test_bad_values_are_one_line_naming_op_and_field(doc, needle):
    with pytest.raises(ScriptError) as info:
        parse_script(doc)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def _run(*ops, **top):
    return run_model(parse_script(_doc(*ops, **top)))


def test_pagemap_scan_masks_default_to_every_category_returned():
    recs = _run({"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
                {"op": "madvise", "at": 1, "advice": "guard_install"},
                {"op": "pagemap_scan", "at": 0, "len": 4},
                {"op": "pagemap_scan", "at": 0, "len": 4, "require": abi.PAGE_IS_GUARD,
                 "return": ["guard"]})
    assert recs[2]["value"] == {"regions": [[0, 1, ["written"]], [1, 2, ["written", "swapped", "guard"]],
                                            [2, 4, ["written"]]], "walk_end": 4}
    assert recs[3]["value"] == {"regions": [[1, 2, ["guard"]]], "walk_end": 4}


def test_pagemap_scan_unknown_bit_is_einval_before_the_range():
    recs = _run({"op": "pagemap_scan", "at_bytes": 1, "require": 1 << 9})
    assert recs[0]["ret"] == "EINVAL"


def test_mseal_then_munmap_and_discard_are_eperm_on_the_model():
    recs = _run({"op": "mmap", "at": 0, "len": 4, "prot": "r"},
                {"op": "mseal", "at": 0, "len": 4},
                {"op": "munmap", "at": 0, "len": 4},
                {"op": "madvise", "at": 0, "advice": "guard_install"},
                {"op": "mprotect", "at": 0, "len": 4, "prot": "rw"},
                {"op": "mlock", "at": 0, "len": 4},
                {"op": "snapshot"})
    assert [r["ret"] for r in recs] == ["ok", "ok", "EPERM", "EPERM", "EPERM", "ok", "ok"]
    assert recs[-1]["value"]["vmas"] == [[0, 4, "r--p", "anon", 0, "lo sl"]]


def test_raw_prot_and_flags_reach_the_call_as_written():
    s = parse_script(_doc({"op": "mmap", "at": 0, "prot": ["r", "sem"], "flags": ["droppable", "anonymous", 64]},
                          {"op": "mprotect", "at": 0, "prot": 19}))
    assert s.ops[0].prot == abi.PROT_READ | abi.PROT_SEM
    assert s.ops[0].flags == (abi.MapFlag.DROPPABLE | abi.MAP_ANONYMOUS | 64 | abi.MAP_FIXED_NOREPLACE)
    assert s.ops[1].prot == 19


def test_map_stack_sets_nohugepage_on_the_model():
    recs = _run({"op": "mmap", "at": 0, "len": 4, "prot": "rw", "flags": ["private", "anonymous", "stack"]},
                {"op": "snapshot"})
    assert recs[1]["value"]["vmas"] == [[0, 4, "rw-p", "anon", 0, "nh"]]


def test_cpu_touch_names_the_signal_and_leaves_the_parent_unpopulated():
    recs = _run({"op": "mmap", "at": 0, "len": 3, "prot": "rw"},
                {"op": "madvise", "at": 1, "advice": "guard_install"},
                {"op": "touch", "at": 0, "len": 3, "access": "write", "value": 4, "cpu": True},
                {"op": "touch", "at": 0, "len": 3, "access": "read"},
                {"op": "snapshot"})
    assert recs[2]["value"] == ["ok", "SIGSEGV", "ok"]
    assert recs[3]["value"] == [0, "fault", 0]  # the private stores stayed in the child
    assert recs[4]["value"]["pages"] == "PGP"  # the process_vm reads populated, the CPU touch did not


def test_readonly_shared_mapping_has_no_maywrite_on_the_model():
    recs = _run({"op": "mmap", "at": 0, "len": 2, "prot": "rw", "flags": ["shared"], "file": "f", "readonly": True},
                {"op": "mmap", "at": 0, "len": 2, "prot": "r", "flags": ["shared"], "file": "f", "readonly": True},
                {"op": "mprotect", "at": 0, "len": 2, "prot": "rw"},
                {"op": "seal", "file": "d", "seals": ["write"]},
                {"op": "snapshot"},
                files={"f": {"pages": 2}, "d": {"pages": 1, "disk": True}})
    assert [r["ret"] for r in recs] == ["EACCES", "ok", "EACCES", "EINVAL", "ok"]
    assert recs[4]["value"]["vmas"] == [[0, 2, "r--s", "f", 0, ""]]


def test_uffd_copy_replaces_a_guard_marker_and_stops_at_a_page():
    recs = _run({"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
                {"op": "uffd_register", "at": 0, "len": 4},
                {"op": "madvise", "at": 1, "advice": "guard_install"},
                {"op": "touch", "at": 0, "len": 1, "access": "read"},
                {"op": "uffd_copy", "at": 1, "len": 1, "value": 9},
                {"op": "uffd_copy", "at": 0, "len": 3, "value": 8},
                {"op": "touch", "at": 0, "len": 3, "access": "read"})
    assert recs[3]["value"] == ["fault"]  # a registered missing page: SIGBUS feature
    assert recs[4] == {"i": 4, "op": "uffd_copy", "ret": "ok", "value": 1}
    assert recs[5] == {"i": 5, "op": "uffd_copy", "ret": "EAGAIN", "value": 1}
    assert recs[6]["value"] == [8, 9, "fault"]


def test_process_madvise_at_a_child_takes_only_the_remote_advice():
    recs = _run({"op": "mmap", "at": 0, "len": 2, "prot": "rw"},
                {"op": "process_madvise", "target": "child", "ranges": [[0, 2]], "advice": "guard_install"},
                {"op": "process_madvise", "target": "child", "ranges": [[0, 2]], "advice": "cold"},
                {"op": "snapshot"})
    assert recs[1]["ret"] == "EINVAL"
    assert recs[2]["value"] == {"pages": 2, "child": {"vmas": [[0, 2, "rw-p", "anon", 0, ""]], "pages": ".."}}
    assert recs[3]["value"]["pages"] == ".."


def test_process_madvise_ranges_count_as_import_iovec_leaves_them():
    """Past UIO_MAXIOV (up to the parser's MAX_RANGES) a script may name ranges anywhere with
    outside_arena: the kernel refuses the call before it reaches memory. Without it every
    named range must lie in the arena; with it, what import_iovec() leaves must be safe."""
    from sparsemm.opscript.script import MAX_RANGES, op_ranges
    far = (0x600000000000 - abi.ARENA_BASE) // abi.PAGE_SIZE  # outside the arena zone
    refused = {"op": "process_madvise", "ranges": [[far, 1]] * 1025, "advice": "cold"}
    with pytest.raises(ScriptError, match="leaves the arena"):
        parse_script(_doc(refused))
    script = parse_script(_doc(refused, outside_arena=True))
    assert op_ranges(script.ops[0]) == []  # EINVAL: nothing reached
    with pytest.raises(ScriptError, match="could reach memory"):
        parse_script(_doc({"op": "process_madvise", "ranges": [[far, 1]] * 1024, "advice": "cold"},
                          outside_arena=True))
    # one iovec is cut to MAX_RW_COUNT: a range of 2^62 bytes from the base reaches 2 GiB
    cut = parse_script(_doc({"op": "process_madvise", "ranges": [[0, 1 << 50]], "advice": "cold"},
                            outside_arena=True)).ops[0]
    assert op_ranges(cut) == [(abi.ARENA_BASE, abi.ARENA_BASE + abi.MAX_RW_COUNT)]
    assert len(parse_script(_doc({"op": "process_madvise", "ranges": [[0, 1]] * MAX_RANGES,
                                  "advice": "cold"})).ops[0].ranges) == MAX_RANGES
    assert parse_script(_doc({"op": "process_madvise", "ranges": [], "advice": "cold"})).ops[0].ranges == ()


def test_import_iovec_checks_in_the_kernels_order():
    ts, p = abi.TASK_SIZE, abi.PAGE_SIZE
    for iovecs, err in (([(0, p)] * 1025, "EINVAL"), ([(ts, p), (0, 1 << 63)], "EINVAL"),
                        ([(0, p), (ts, p)], "EFAULT"), ([(ts + p, 0)], "EFAULT"),
                        ([(0, p), (p, 1 << 62)], "EFAULT")):
        with pytest.raises(OSError) as exc:
            abi.import_iovec(iovecs)
        assert errno.errorcode[exc.value.errno] == err, iovecs
    assert abi.import_iovec([(p, 1 << 62)]) == [(p, abi.MAX_RW_COUNT)]  # one iovec: cut first
    assert abi.import_iovec([(p, abi.MAX_RW_COUNT - p), (p, 2 * p), (p, p)]) == [
        (p, abi.MAX_RW_COUNT - p), (p, p), (p, 0)]
    assert abi.import_iovec([]) == [] and abi.import_iovec([(ts, 0)]) == [(ts, 0)]


def test_hugetlb_reservation_is_counted_and_given_back_on_the_model():
    hp = ["private", "anonymous", "hugetlb"]
    recs = _run({"op": "mmap", "at": 0, "len": 1, "prot": "rw", "flags": hp},
                {"op": "mmap", "at": 512, "len": 1, "prot": "rw", "flags": hp},
                {"op": "munmap", "at": 0, "len": 512},
                {"op": "mmap", "at": 512, "len": 1, "prot": "rw", "flags": hp},
                {"op": "madvise", "at": 512, "advice": "guard_install"},
                hugetlb_pages=1)
    assert [r["ret"] for r in recs] == ["ok", "ENOMEM", "ok", "ok", "EINVAL"]


@pytest.mark.kernel
def test_a_hugetlb_script_leaves_nr_hugepages_as_it_found_it():
    import os

    from sparsemm.native import libc
    from sparsemm.opscript.kernel import run_kernel

    if os.geteuid() != 0 or not libc.guard_regions_supported():
        pytest.skip("needs root (vm.nr_hugepages) and a guard-capable kernel")
    path = "/proc/sys/vm/nr_hugepages"
    before = open(path).read()
    script = parse_script(_doc({"op": "mmap", "at": 0, "len": 1, "prot": "rw",
                                "flags": ["private", "anonymous", "hugetlb"]},
                               {"op": "touch", "at": 0, "len": 1, "access": "write"},
                               hugetlb_pages=1))
    try:
        recs = run_kernel(script)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    assert [r["ret"] for r in recs] == ["ok", "ok"]
    assert open(path).read() == before


def test_text_rendering_shows_scan_regions_and_copies():
    from sparsemm.opscript.records import render_text

    recs = _run({"op": "mmap", "at": 0, "len": 2, "prot": "rw"},
                {"op": "madvise", "at": 1, "advice": "guard_install"},
                {"op": "pagemap_scan", "at": 0, "len": 2, "require": ["guard"], "return": ["guard"]})
    assert "[1,2)guard walk_end=2" in render_text(recs)


def test_cli_refuses_a_bad_new_field_in_one_line():
    import json
    import subprocess
    import sys

    doc = json.dumps(_doc({"op": "pagemap_scan", "at": 0, "vec_len": -1}))
    for backend in ("model", "kernel"):
        proc = subprocess.run([sys.executable, "-m", "sparsemm", "run", "-", "--backend", backend],
                              input=doc, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1
        assert "op 0 (pagemap_scan) field 'vec_len'" in proc.stderr
