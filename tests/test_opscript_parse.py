"""Op-script validation: every malformed script is one line on stderr and exit 2."""

from __future__ import annotations


import pytest

from sparsemm import abi
from sparsemm.opscript.script import ScriptError, parse_script

from conftest import run_cli, script_doc

BASE = abi.ARENA_BASE
PAGE = abi.PAGE_SIZE


def test_defaults_and_units():
    s = parse_script({"ops": [{"op": "mmap", "at": 3, "prot": "rw"}, {"op": "snapshot"}]})
    assert s.arena_pages == 1024
    mmap = s.ops[0]
    assert mmap.addr == BASE + 3 * PAGE and mmap.length == PAGE
    assert mmap.prot == abi.PROT_READ | abi.PROT_WRITE
    # Placement is always at `at`: without "fixed", MAP_FIXED_NOREPLACE is added.
    assert mmap.flags == abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED_NOREPLACE


def test_fixed_mmap_has_no_noreplace():
    s = parse_script({"ops": [{"op": "mmap", "at": 0, "prot": "", "flags": ["shared", "anonymous", "fixed"]}]})
    assert s.ops[0].flags == abi.MAP_SHARED | abi.MAP_ANONYMOUS | abi.MAP_FIXED
    assert s.ops[0].prot == abi.PROT_NONE


def test_byte_forms_may_be_negative_or_huge():
    s = parse_script({"outside_arena": True, "ops": [{"op": "munmap", "at_bytes": -4096, "len_bytes": 2**64 - 1}]})
    assert s.ops[0].addr == BASE - 4096 and s.ops[0].length == 2**64 - 1


def test_fork_children_parse_recursively():
    s = parse_script({"ops": [{"op": "fork", "child": [{"op": "snapshot"}, {"op": "touch", "at": 1, "access": "read"}]}]})
    assert [c.name for c in s.ops[0].child] == ["snapshot", "touch"]
    assert s.ops[0].child[1].index == 1


@pytest.mark.parametrize("doc, needle", [
    ({"ops": [{"op": "mmapp", "at": 0}]}, "op 0 field 'op': unknown op 'mmapp'"),
    ({"ops": [{"op": "mmap", "at": 0}]}, "op 0 (mmap) field 'prot': missing"),
    ({"ops": [{"at": 0}]}, "op 0 field 'op': missing"),
    ({"ops": [{"op": "snapshot"}, {"op": "mmap", "at": "0", "prot": "rw"}]}, "op 1 (mmap) field 'at'"),
    ({"ops": [{"op": "mmap", "at": 0, "prot": "rwz"}]}, "op 0 (mmap) field 'prot'"),
    ({"ops": [{"op": "mmap", "at": 0, "prot": "rw", "flags": ["privat"]}]}, "unknown flag 'privat'"),
    ({"ops": [{"op": "madvise", "at": 0, "advice": "guard"}]}, "op 0 (madvise) field 'advice'"),
    ({"ops": [{"op": "touch", "at": 0, "access": "exec"}]}, "op 0 (touch) field 'access'"),
    ({"ops": [{"op": "touch", "at": 0, "access": "write", "value": 256}]}, "op 0 (touch) field 'value'"),
    ({"ops": [{"op": "mmap", "at": 0, "at_bytes": 0, "prot": "r"}]}, "not both"),
    ({"ops": [{"op": "mmap", "at": 0, "prot": "r", "file": "nope"}]}, "op 0 (mmap) field 'file'"),
    ({"ops": [{"op": "mremap", "at": 0, "new_len": 2, "flags": ["maymove", "fixed"]}]}, "op 0 (mremap) field 'to'"),
    ({"ops": [{"op": "fork", "child": [{"op": "bogus"}]}]}, "op 0 (fork) field 'child'"),
    ({"ops": [{"op": "munmap", "at": 0, "len": -1}]}, "op 0 (munmap) field 'len'"),
    ({"ops": [{"op": "snapshot", "extra": 1}]}, "op 0 (snapshot) field 'extra': unknown field"),
    ({"ops": {}}, "'ops' must be a list"),
    ({"ops": [], "arena_pages": 0}, "arena_pages"),
    ({"ops": [], "frobs": 1}, "unknown top-level field"),
    ([], "a script is a JSON object"),
])
def test_malformed_scripts_name_the_op_and_field(doc, needle):
    with pytest.raises(ScriptError) as info:
        parse_script(doc)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", [
    '{"ops": [{"op": "mmap", "at": 0',  # truncated JSON
    '{"ops": [{"op": "nope"}]}',
    '{"ops": [{"op": "mmap", "at": 1.5, "prot": "rw"}]}',
    '\xff\xfe',
])
@pytest.mark.parametrize("backend", ["kernel", "model"])
def test_cli_reports_one_line_and_exits_2(text, backend):
    proc = run_cli("run", "-", "--backend", backend, stdin=text)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_file_is_one_line(tmp_path):
    proc = run_cli("run", str(tmp_path / "absent.json"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "absent.json: no such file" in proc.stderr


def test_cli_error_names_op_index():
    proc = run_cli("run", "-", stdin=script_doc([{"op": "snapshot"}, {"op": "snapshot"},
                                                 {"op": "munmap"}]))
    assert proc.returncode == 2
    assert "op 2 (munmap) field 'at': missing" in proc.stderr


@pytest.mark.parametrize("bad", [0, -1, 65531, True, "10", 1.5])
def test_map_count_headroom_is_checked(bad):
    with pytest.raises(ScriptError, match="map_count_headroom"):
        parse_script({"ops": [], "map_count_headroom": bad})


def test_map_count_headroom_sets_the_model_limit():
    from sparsemm.opscript.model_backend import start_model
    script = parse_script({"ops": [], "map_count_headroom": 7})
    assert script.map_count_headroom == 7
    assert start_model(script).mm.max_map_count == 7
    assert start_model(parse_script({"ops": []})).mm.max_map_count == abi.DEFAULT_MAX_MAP_COUNT


def test_a_script_without_headroom_runs_below_the_default_limit():
    """Both backends take a script without map_count_headroom as 256 VMAs of the process's
    own below the default vm.max_map_count (docs/opscript.md)."""
    from sparsemm.opscript.script import DEFAULT_MAP_COUNT_HEADROOM, OWN_VMAS, effective_headroom
    assert effective_headroom(parse_script({"ops": []})) == DEFAULT_MAP_COUNT_HEADROOM
    assert DEFAULT_MAP_COUNT_HEADROOM == abi.DEFAULT_MAX_MAP_COUNT - OWN_VMAS
    assert effective_headroom(parse_script({"ops": [], "map_count_headroom": 9})) == 9


def test_vma_bound_bounds_every_corpus_script():
    """``vma_bound`` (the kernel child pads only scripts it says may reach the limit) is never
    below the VMAs a corpus script makes on the model, at any op."""
    import json
    from pathlib import Path

    from sparsemm.opscript.model_backend import start_model
    from sparsemm.opscript.script import vma_bound
    checked = 0
    for path in sorted(Path(__file__).parent.glob("conformance/*/*.json")):
        doc = json.loads(path.read_text())
        if doc.get("arena_pages", 0) > 8192:  # the max_map_count scripts: 65,000 VMAs
            continue
        script = parse_script({k: v for k, v in doc.items() if k != "expect"})
        runner = start_model(script)
        bound, most = vma_bound(script.ops), 0
        for op in script.ops:
            runner.run_op(op)
            most = max(most, runner.mm.map_count)
        assert most <= bound, path.name
        checked += 1
    assert checked > 200
