"""``sparsemm fuzz``: the generator, the shrinker, and the whole loop on planted differences.

Most tests run the loop with both sides on the model, one of them with a planted
difference (``tests/fuzz_plant.py``: records changed after the fact, or a bug patched into
the model's code for the run), injected through ``engine.Backends`` or the documented
``SPARSEMM_FUZZ_MODEL``/``SPARSEMM_FUZZ_KERNEL`` hooks, so that the planted difference
and its minimal script are known. The ``kernel`` tests run ``sparsemm fuzz`` in a
subprocess against the real kernel, with a bug planted in its model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fuzz_plant
from conftest import needs_guards
from sparsemm.fuzz import findings
from sparsemm.fuzz.difference import classify
from sparsemm.fuzz.engine import Backends, Fuzzer, FuzzError
from sparsemm.fuzz.generate import (OP_GENERATORS, PROFILES, Profile, count_ops,
                                    generate_script, op_generator, script_rng)
from sparsemm.fuzz.shrink import Shrinker
from sparsemm.fuzz.suppress import SuppressionError, load_rules
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import OP_NAMES, ScriptError, parse_script

TESTS = Path(__file__).resolve().parent
PLANTED = Backends(model=fuzz_plant.mprotect_x_eacces, kernel=fuzz_plant.honest_model)


def fuzz_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run([sys.executable, "-m", "sparsemm", "fuzz", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


HOOKS = {"SPARSEMM_FUZZ_MODEL": "fuzz_plant:mprotect_x_eacces",
         "SPARSEMM_FUZZ_KERNEL": "fuzz_plant:honest_model"}
HONEST = {"SPARSEMM_FUZZ_MODEL": "fuzz_plant:honest_model",
          "SPARSEMM_FUZZ_KERNEL": "fuzz_plant:honest_model"}


def walk(ops):
    for op in ops:
        yield op
        if isinstance(op.get("child"), list):
            yield from walk(op["child"])


# ----------------------------------------------------------------------------- generator


def test_generator_is_deterministic_per_seed_and_index():
    for profile in PROFILES:
        if profile == "maxmap":
            continue
        a = generate_script(profile, script_rng(7, 3))
        assert a == generate_script(profile, script_rng(7, 3))
        assert a != generate_script(profile, script_rng(7, 4))


@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "maxmap"])
def test_every_generated_script_parses_and_runs_on_the_model(profile):
    for i in range(150):
        doc = generate_script(profile, script_rng("parse", i))
        script = parse_script(doc)
        records = run_model(script, check=True)
        assert len(records) == len(doc["ops"])
        assert doc["ops"][-1] == {"op": "snapshot"}


def test_generator_draws_every_op_of_the_format_and_never_dangerous_advice():
    seen, advice = set(), set()
    for profile in ("mixed", "guards", "thp", "files", "errors", "extensions"):
        for i in range(200):
            for op in walk(generate_script(profile, script_rng("cover", i))["ops"]):
                seen.add(op["op"])
                if "advice" in op:
                    advice.add(op["advice"])
    assert seen == set(OP_NAMES)
    assert not advice & {"hwpoison", "soft_offline", 100, 101}


def _kinds(doc: dict) -> set:
    """What of the op format a script uses, beyond op names (the kinds the disk, raw,
    extensions and hugetlb profiles promise to draw)."""
    out = set()
    if doc.get("hugetlb_pages"):
        out.add("hugetlb_pages")
    if any(spec.get("disk") for spec in doc.get("files", {}).values()):
        out.add("disk file")
    for op in walk(doc["ops"]):
        name, prot, flags = op["op"], op.get("prot"), op.get("flags")
        if op.get("readonly"):
            out.add("readonly mmap")
        if op.get("cpu"):
            out.add("cpu touch")
        if op.get("target") == "child":
            out.add("process_madvise child")
        if name == "process_madvise" and len(op["ranges"]) == 1024:
            out.add("process_madvise 1024 ranges")
        if isinstance(prot, list):
            out.update(f"{name} prot {p}" for p in prot if p in ("sem", "growsdown", "growsup"))
        elif isinstance(prot, int) and prot & ~7:
            out.add(f"{name} raw prot int")
        if name == "mmap" and isinstance(flags, list):
            out.update(f"mmap {f}" for f in flags if f in ("stack", "droppable", "nonblock",
                                                          "shared_validate", "hugetlb"))
            raw = [f for f in flags if isinstance(f, int)]
            if any(f & 0xF for f in raw) and not set(flags) & {"private", "shared", "droppable",
                                                                "shared_validate"}:
                out.add("mmap raw map type")
            if any(f & ~0xF for f in raw):
                out.add("mmap raw flag bits")
            if 21 << 26 in raw and "hugetlb" in flags:
                out.add("mmap hugetlb 2MB size bits")
        if name == "seal" and op["file"] in {k for k, v in doc.get("files", {}).items() if v.get("disk")}:
            out.add("seal on a disk file")
    return out


#: What each new or widened profile must draw (each script parses, too).
PROFILE_KINDS = {
    "disk": {"disk file", "readonly mmap", "cpu touch", "seal on a disk file",
             "process_madvise child"},
    "raw": {"mmap prot sem", "mmap prot growsdown", "mmap prot growsup", "mprotect prot sem",
            "mprotect prot growsdown", "mprotect prot growsup", "mprotect raw prot int",
            "mmap raw prot int", "mmap stack", "mmap droppable", "mmap nonblock",
            "mmap shared_validate", "mmap raw map type", "mmap raw flag bits",
            "process_madvise child", "process_madvise 1024 ranges", "cpu touch"},
    "extensions": {"cpu touch", "process_madvise child", "mmap raw flag bits", "mprotect raw prot int",
                   "mmap droppable"},
    "hugetlb": {"hugetlb_pages", "mmap hugetlb", "mmap hugetlb 2MB size bits", "cpu touch",
                "process_madvise child"},
}


@pytest.mark.parametrize("profile", sorted(PROFILE_KINDS))
def test_new_profiles_draw_every_kind_they_promise_and_every_script_parses(profile):
    seen = set()
    for i in range(300):
        doc = generate_script(profile, script_rng("kinds", i))
        parse_script(doc)  # raises on anything the parser refuses
        seen |= _kinds(doc)
    assert PROFILE_KINDS[profile] <= seen, sorted(PROFILE_KINDS[profile] - seen)


def test_only_the_hugetlb_profile_maps_hugetlb_and_it_is_not_a_default():
    from sparsemm.fuzz.generate import DEFAULT_PROFILES

    assert "hugetlb" not in DEFAULT_PROFILES and {"disk", "raw"} <= set(DEFAULT_PROFILES)
    for profile in PROFILES:
        if profile in ("hugetlb", "maxmap"):
            continue
        for i in range(100):
            doc = generate_script(profile, script_rng("nohuge", i))
            assert "hugetlb_pages" not in doc
            for op in walk(doc["ops"]):
                flags = op.get("flags") if op["op"] == "mmap" else None
                assert not flags or ("hugetlb" not in flags
                                     and not any(isinstance(f, int) and f & 0x40000 for f in flags))


def _model_rets(doc: dict) -> list:
    try:
        return [r["ret"] for r in run_model(parse_script(doc))]
    except ScriptError:  # a shrink step the parser refuses
        return []


def test_shrinker_keeps_a_disk_file_only_where_the_difference_needs_it():
    """A seal on a disk file is EINVAL (a memfd takes it): shrunk to that one op, the file
    stays a disk file. A read-only descriptor's EACCES shows on a memfd too: the disk
    flag goes, ``readonly`` stays."""
    doc = generate_script("disk", script_rng("shrink-disk", 0), min_ops=12)
    assert doc["files"]["d"] == {"pages": 12, "disk": True}
    doc["ops"][-1:] = [{"op": "seal", "file": "d", "seals": ["grow", "write"]},
                       {"op": "mmap", "at": 14, "len": 2, "prot": "rw", "flags": ["shared"],
                        "file": "d", "readonly": True}, {"op": "snapshot"}]
    seal_einval = lambda d: any(op["op"] == "seal" and r == "EINVAL"  # noqa: E731
                                for op, r in zip(d["ops"], _model_rets(d)))
    assert seal_einval(doc)
    small = Shrinker(seal_einval, max_tests=2000).shrink(doc)
    assert [(op["op"], op["file"], len(op["seals"])) for op in small["ops"]] == [("seal", "d", 1)]
    assert small["files"] == {"d": {"pages": 0, "disk": True}}

    eacces = lambda d: "EACCES" in _model_rets(d)  # noqa: E731
    small = Shrinker(eacces, max_tests=2000).shrink(doc)
    (op,) = small["ops"]
    assert (op["op"], op["flags"], op["readonly"], "w" in op["prot"]) == ("mmap", ["shared"], True, True)
    assert small["files"] == {op["file"]: {"pages": 0}}  # a memfd shows it too
    parse_script(small)


def test_shrinker_simplifies_raw_prot_and_extension_fields():
    """A raw prot keeps the one bit the difference needs; ``cpu``, ``target`` and
    process_madvise ``flags`` go when they do not matter."""
    doc = {"arena_pages": 16, "ops": [
        {"op": "mmap", "at": 0, "len": 8, "prot": ["r", "w", "sem"], "flags": ["private", "anonymous",
                                                                             "stack", 0x800000]},
        {"op": "touch", "at": 0, "len": 2, "access": "write", "cpu": True},
        {"op": "process_madvise", "ranges": [[0, 2], [4, 1]], "advice": "cold", "target": "child",
         "flags": 0},
        {"op": "mprotect", "at": 2, "len": 2, "prot": ["x", "sem", "growsup"]}, {"op": "snapshot"}]}
    def growsup(d: dict) -> bool:  # an mprotect refused, over a mapping that went in
        pairs = list(zip([op["op"] for op in d["ops"]], _model_rets(d)))
        return ("mprotect", "EINVAL") in pairs and ("mmap", "ok") in pairs
    assert growsup(doc)
    small = Shrinker(growsup, max_tests=2000).shrink(doc)
    assert small["ops"] == [{"op": "mmap", "at": 0, "len": 1, "prot": "rw",
                             "flags": ["private", "anonymous"]},
                            {"op": "mprotect", "at": 0, "len": 1, "prot": ["growsup"]}]
    def both(d: dict) -> bool:  # a touch and a process_madvise that the parser takes
        names = [op["op"] for op in d["ops"]]
        return "touch" in names and "process_madvise" in names and bool(_model_rets(d))
    plain = Shrinker(both, max_tests=2000).shrink(doc)
    # (the parser takes an empty range vector, the kernel's 0: the shrinker drops every range)
    assert plain["ops"] == [{"op": "touch", "at": 0, "len": 1, "access": "write"},
                            {"op": "process_madvise", "ranges": [], "advice": "cold"}]


def test_mixed_profile_keeps_the_differential_tests_mix():
    names = {}
    for i in range(400):
        doc = generate_script("mixed", script_rng("mix", i))
        assert doc["arena_pages"] in (16, 48)
        assert doc["files"] == {"f": {"pages": 20}, "g": {"pages": 6}}
        for op in doc["ops"]:
            names[op["op"]] = names.get(op["op"], 0) + 1
            if op["op"] == "fork":  # one level of forks, up to six child ops + a snapshot
                assert len(op["child"]) <= 7 and op["child"][-1] == {"op": "snapshot"}
                assert all(c["op"] != "fork" for c in op["child"])
    assert {"seal"} & set(names) == set()  # the old mix never sealed
    assert names["fork"] > names["mremap"]


def test_op_table_entries_name_known_profiles():
    with pytest.raises(ValueError, match="unknown profile"):
        op_generator("bogus", nosuchprofile=1)
    for gen in OP_GENERATORS.values():
        assert set(gen.weights) <= set(PROFILES)
        assert any(w > 0 for w in gen.weights.values())


def test_a_new_op_generator_is_drawn_by_its_profile():
    @op_generator("test_only_snapshot_pair", errors=1e9)
    def _pair(g):
        return {"op": "snapshot", "note": "drawn by the test generator"}
    try:
        doc = generate_script("errors", script_rng("new", 0))
        assert any(op.get("note") == "drawn by the test generator" for op in doc["ops"])
        assert not any(op.get("note") for op in generate_script("mixed", script_rng("new", 0))["ops"])
    finally:
        del OP_GENERATORS["test_only_snapshot_pair"]


def test_maxmap_script_approaches_the_limit_cheaply():
    limit = 3000  # a small limit keeps the test fast; the real one is vm.max_map_count
    doc = generate_script("maxmap", script_rng("mm", 1), max_map_count=limit)
    prefix = [op for op in doc["ops"] if op.get("note", "").startswith("maxmap prefix")]
    assert len(prefix) <= 1 + -(-limit // 2048)  # one mmap, 1024 splits per process_madvise
    records, mm = __import__("sparsemm.opscript.model_backend", fromlist=["x"]).run_model_state(
        parse_script({**doc, "ops": prefix}))
    assert all(r["ret"] == "ok" for r in records)
    assert limit - 700 <= mm.map_count <= limit + 50


# ----------------------------------------------------------------------------- shrinker


def test_shrinker_reaches_a_one_minimal_script():
    """Planted: the difference needs an mprotect "x" over a mapped page."""
    doc = generate_script("mixed", script_rng("shrink", 0), min_ops=20)
    doc["ops"][5:5] = [{"op": "mmap", "at": 3, "len": 5, "prot": "rwx",
                        "flags": ["shared", "anonymous", "fixed", "populate"]},
                       {"op": "fork", "child": [{"op": "touch", "at": 3, "access": "read"},
                                                {"op": "mprotect", "at": 3, "len": 4, "prot": "x"}]}]

    def shows(d):
        try:
            s = parse_script(d)
        except ValueError:
            return False
        return classify(fuzz_plant.mprotect_x_eacces(s), run_model(s)) is not None

    assert shows(doc)
    s = Shrinker(shows)
    small = s.shrink(doc)
    assert s.complete and shows(small)
    ops = small["ops"]
    assert [op["op"] for op in ops] == ["mmap", "mprotect"]
    mmap, mprotect = ops
    assert mmap["len"] == 1 and mprotect["len"] == 1 and mmap["prot"] == "rw"
    assert set(mmap["flags"]) <= {"private", "shared", "anonymous"}
    # 1-minimal: dropping any op loses the difference
    for n in range(len(ops)):
        assert not shows({**small, "ops": ops[:n] + ops[n + 1:]})
    assert small["arena_pages"] <= max(mmap["at"], mprotect["at"]) + 1
    assert "files" not in small or not small["files"]


def test_shrinker_keeps_pinned_ops_and_respects_its_budget():
    doc = {"arena_pages": 16, "ops": [{"op": "snapshot", "note": "keep me"}]
           + [{"op": "touch", "at": i, "access": "read"} for i in range(12)]}
    calls = []

    def test(d):
        calls.append(d)
        return True

    s = Shrinker(test, pinned=lambda op: op.get("note") == "keep me")
    small = s.shrink(doc)
    assert small["ops"] == [{"op": "snapshot", "note": "keep me"}]
    s = Shrinker(lambda d: True, max_tests=3)
    s.shrink(doc)
    assert s.tests == 3 and not s.complete


# ----------------------------------------------------------------------------- the loop


def test_fuzzer_finds_shrinks_and_writes_a_planted_difference(tmp_path):
    fz = Fuzzer(seed=5, profiles=["mixed"], examples=150, findings_dir=tmp_path, backends=PLANTED)
    stats = fz.run()
    assert [f.signature for f in stats.findings] == [fuzz_plant.PLANTED_MPROTECT]
    f = stats.findings[0]
    # dedup: every later script with the same difference only counted a hit
    assert f.hits >= 2 and f.hits == stats.differences == stats.duplicates + 1
    assert f.shrink["complete"] and f.confirmed == "3/3"
    ops = f.script["ops"]
    assert [op["op"] for op in ops] == ["mmap", "mprotect"] and ops[1]["prot"] == "x"
    assert ops[0]["len"] == 1 and ops[1]["len"] == 1
    path = f.path
    assert path.parent == tmp_path and path.name.startswith("001-mprotect-ret")
    assert {p.name for p in path.iterdir()} == {"script.json", "original.json", "model.json",
                                                 "kernel.json", "diff.txt", "finding.json", "more"}
    more = sorted((path / "more").iterdir())
    assert [p.name for p in more] == ["1.json", "2.json", "3.json"][:min(3, f.hits - 1)]
    for p in more:  # later scripts with the same difference, as generated
        doc = json.loads(p.read_text())
        assert classify(fuzz_plant.mprotect_x_eacces(parse_script(doc)),
                        run_model(parse_script(doc))).signature == fuzz_plant.PLANTED_MPROTECT
    script = json.loads((path / "script.json").read_text())
    assert "fuzz finding" in script["note"] and "expect" not in script
    assert json.loads((path / "model.json").read_text()) == fuzz_plant.mprotect_x_eacces(parse_script(script))
    assert json.loads((path / "kernel.json").read_text()) == run_model(parse_script(script))
    assert "first difference at op 1" in (path / "diff.txt").read_text()
    meta = json.loads((path / "finding.json").read_text())
    assert meta["signature"] == fuzz_plant.PLANTED_MPROTECT and meta["hits"] == f.hits
    assert count_ops(json.loads((path / "original.json").read_text())["ops"]) >= 2


def test_findings_are_scripts_that_sparsemm_run_accepts(tmp_path):
    Fuzzer(seed=5, profiles=["mixed"], examples=60, findings_dir=tmp_path, backends=PLANTED).run()
    scripts = sorted(tmp_path.glob("*/script.json"))
    assert scripts
    for path in scripts:
        proc = subprocess.run([sys.executable, "-m", "sparsemm", "run", str(path), "--backend",
                               "model"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)) == len(json.loads(path.read_text())["ops"])


def test_two_planted_differences_give_two_findings_and_unwrap_nothing_they_need(tmp_path):
    both = Backends(model=fuzz_plant.both_plants, kernel=fuzz_plant.honest_model)
    stats = Fuzzer(seed=11, profiles=["mixed"], examples=250, findings_dir=tmp_path,
                   backends=both).run()
    sigs = sorted(f.signature for f in stats.findings)
    assert sigs == sorted([fuzz_plant.PLANTED_MPROTECT, fuzz_plant.PLANTED_CHILD_SNAPSHOT])
    child = next(f for f in stats.findings if f.signature == fuzz_plant.PLANTED_CHILD_SNAPSHOT)
    ops = child.script["ops"]
    forks = [op for op in ops if op["op"] == "fork"]
    # present memory, then a fork whose child snapshots it: made present either before
    # the fork or in the child, three ops at most, and none of them can go
    assert len(forks) == 1 and forks[0]["child"][-1] == {"op": "snapshot"}
    assert count_ops(ops) <= 3

    def shows(d):
        s = parse_script(d)
        return classify(fuzz_plant.both_plants(s), run_model(s)) is not None

    for n in range(len(ops)):
        assert not shows({**child.script, "ops": ops[:n] + ops[n + 1:]})
    fork_at = ops.index(forks[0])
    kids = forks[0]["child"]
    for n in range(len(kids)):
        fewer = ops[:fork_at] + [{"op": "fork", "child": kids[:n] + kids[n + 1:]}] + ops[fork_at + 1:]
        assert not shows({**child.script, "ops": fewer})
    assert sum(f.hits for f in stats.findings) == stats.differences


def test_a_model_crash_is_a_finding_located_at_its_op(tmp_path):
    crash = Backends(model=fuzz_plant.crashes_on_guard_remove_of_locked,
                     kernel=fuzz_plant.honest_model)
    stats = Fuzzer(seed=3, profiles=["guards"], examples=120, findings_dir=tmp_path,
                   backends=crash).run()
    assert [f.signature for f in stats.findings] == [
        "madvise model-error ModelCrash: planted: guard_remove after mlock at #"]
    f = stats.findings[0]
    assert [(op["op"], op.get("advice")) for op in f.script["ops"]] == [
        ("mlock", None), ("madvise", "guard_remove")]
    assert f.difference.index == 1 and f.confirmed == "model"
    assert "the model raised" in (f.path / "diff.txt").read_text()


def test_a_second_run_counts_known_findings_as_duplicates(tmp_path):
    Fuzzer(seed=5, profiles=["mixed"], examples=60, findings_dir=tmp_path, backends=PLANTED).run()
    before = sorted(p.name for p in tmp_path.iterdir())
    stats = Fuzzer(seed=5, profiles=["mixed"], examples=150, findings_dir=tmp_path,
                   backends=PLANTED).run()
    assert not stats.findings and stats.previous[fuzz_plant.PLANTED_MPROTECT] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    meta = json.loads(next(tmp_path.glob("*/finding.json")).read_text())
    assert meta["hits"] >= 1 + stats.previous[fuzz_plant.PLANTED_MPROTECT]


def test_suppression_rules_match_signature_profile_and_ops(tmp_path):
    rules_file = tmp_path / "s.json"
    rules_file.write_text(json.dumps({"schema": "sparsemm.fuzz-suppressions/1", "suppress": [
        {"signature": "*mprotect ret EACCES!=*", "requires": ["mprotect"],
         "divergence": "planted", "reason": "a test"}]}))
    rules = load_rules(str(rules_file))
    stats = Fuzzer(seed=5, profiles=["mixed"], examples=60, findings_dir=tmp_path / "f",
                   backends=PLANTED, rules=rules).run()
    assert not stats.findings and stats.suppressed["planted"] == stats.differences > 0
    assert not (tmp_path / "f").exists()
    other = load_rules(str(rules_file))[0]
    assert not other.matches("mprotect ret EACCES!=ok", "mixed", {"mmap"})
    assert load_rules("known") is not None  # the shipped file is valid


@pytest.mark.parametrize("text, message", [
    ("{", "bad JSON"),
    ('{"suppress": []}', "not a suppression file"),
    ('{"schema": "sparsemm.fuzz-suppressions/1", "suppress": [{"signature": "x"}]}', "'divergence'"),
    ('{"schema": "sparsemm.fuzz-suppressions/1", "suppress": [{"signature": "x", '
     '"divergence": "d", "reason": "r", "bogus": 1}]}', "unknown field 'bogus'"),
])
def test_bad_suppression_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(SuppressionError, match=message):
        load_rules(str(path))


def test_fuzzer_rejects_unknown_profiles_and_missing_budget():
    with pytest.raises(FuzzError, match="unknown profile"):
        Fuzzer(seed=1, profiles=["nope"], examples=1)
    with pytest.raises(FuzzError, match="time limit or a number"):
        Fuzzer(seed=1)


# ----------------------------------------------------------------------------- the command


@pytest.mark.parametrize("args, message", [
    (["--time", "abc"], "--time: want a number"),
    (["--time", "0"], "--time: want a number"),
    (["--time", "nan"], "--time: want a number"),
    (["--time", "1e308"], "--time: want a number"),
    (["--examples", "0"], "--examples: want an integer 1.."),
    (["--examples", "2.5"], "--examples: want an integer"),
    (["--max-ops", "x"], "--max-ops: want an integer"),
    (["--seed", "-3"], "--seed: want an integer 0.."),
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--suppress", "/nonexistent/s.json"], "cannot read"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_are_one_line_and_exit_2(args, message):
    proc = fuzz_cli(*args, "--examples", "1", env=HONEST) if "--examples" not in args else \
        fuzz_cli(*args, env=HONEST)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_findings_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    proc = fuzz_cli("--examples", "1", "--findings", str(f), env=HONEST)
    assert proc.returncode == 2 and "not a directory" in proc.stderr


def test_bad_hook_is_one_line():
    proc = fuzz_cli("--examples", "1", env={"SPARSEMM_FUZZ_MODEL": "no_such_module:f"})
    assert proc.returncode == 2 and "SPARSEMM_FUZZ_MODEL" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_exit_0_when_nothing_differs_and_1_when_something_does(tmp_path):
    proc = fuzz_cli("--examples", "20", "--seed", "1", "--findings", str(tmp_path / "a"), env=HONEST)
    assert proc.returncode == 0, proc.stderr
    assert "20 scripts" in proc.stdout and "0 differences" in proc.stdout
    assert not (tmp_path / "a").exists()
    proc = fuzz_cli("--examples", "60", "--seed", "5", "--profile", "mixed", "--findings",
                    str(tmp_path / "b"), "--json", env=HOOKS)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["scripts"] == 60 and summary["seed"] == "5"
    assert [f["signature"] for f in summary["findings"]] == [fuzz_plant.PLANTED_MPROTECT]
    assert summary["findings"][0]["ops"] == 2


def test_time_budget_stops_the_run(tmp_path):
    start = time.monotonic()
    proc = fuzz_cli("--time", "3", "--findings", str(tmp_path / "f"), "--json", env=HONEST,
                    timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["scripts"] > 0 and not summary["interrupted"]
    assert time.monotonic() - start < 300  # it stopped on its own


def _wait_for(predicate, timeout=240.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_ctrl_c_stops_cleanly_with_what_it_has(tmp_path):
    out = tmp_path / "f"
    proc = subprocess.Popen([sys.executable, "-m", "sparsemm", "fuzz", "--time", "600", "--seed",
                             "5", "--profile", "mixed", "--findings", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(TESTS), **HOOKS})
    try:
        assert _wait_for(lambda: list(out.glob("*/finding.json")))
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    assert "(interrupted)" in stdout and fuzz_plant.PLANTED_MPROTECT in stdout
    assert "Traceback" not in stderr
    for meta in out.glob("*/finding.json"):
        assert (meta.parent / "script.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_with_nothing_found_exits_128_plus_it_with_the_summary(tmp_path, signum):
    started = tmp_path / "started"
    env = {**os.environ, "PYTHONPATH": str(TESTS), **HONEST, "FUZZ_PLANT_STARTED": str(started),
           "SPARSEMM_FUZZ_MODEL": "fuzz_plant:honest_model_announcing"}
    proc = subprocess.Popen([sys.executable, "-m", "sparsemm", "fuzz", "--time", "600",
                             "--findings", str(tmp_path / "f"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert _wait_for(started.exists)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, stderr
    summary = json.loads(stdout)
    assert summary["interrupted"] is True and not summary["findings"]
    assert "Traceback" not in stderr


# ----------------------------------------------------------------------------- the kernel


GUARD_REMOVE_PLANT = {"SPARSEMM_FUZZ_MODEL": "fuzz_plant:guard_remove_keeps_first_marker"}


def _names(ops):
    return [(op["op"], op.get("advice"), op.get("at"), op.get("len")) for op in ops]


#: The minimal scripts of the guard_remove plant (tests/fuzz_plant.py): a marker left
#: behind shows in the snapshot's pages; one put on a VMA that had none, in its flags.
GUARD_REMOVE_MINIMAL = {
    "snapshot pages G!=.": [("mmap", None, 0, 1), ("madvise", "guard_install", 0, 1),
                            ("madvise", "guard_remove", 0, 1), ("snapshot", None, None, None)],
    "snapshot vmas flags gu:model": [("mmap", None, 0, 1), ("madvise", "guard_remove", 0, 1),
                                     ("snapshot", None, None, None)],
}


def test_a_bug_planted_in_the_model_shows_in_later_ops_and_is_shrunk(tmp_path):
    """A bug in the model's code (not in its records): MADV_GUARD_REMOVE leaves a marker.
    The remove itself answers as the kernel does; only what later ops see differs."""
    planted = Backends(model=fuzz_plant.guard_remove_keeps_first_marker,
                       kernel=fuzz_plant.honest_model)
    stats = Fuzzer(seed=2, profiles=["guards"], examples=5, max_ops=6, findings_dir=tmp_path,
                   backends=planted).run()
    assert {f.signature: _names(f.script["ops"]) for f in stats.findings} == GUARD_REMOVE_MINIMAL
    for f in stats.findings:
        assert f.shrink["complete"] and count_ops(f.original["ops"]) > len(f.script["ops"])
        assert [r["ret"] for r in f.model] == [r["ret"] for r in f.kernel]
    # the plant is the model's, for the run only: the model itself is untouched
    doc = stats.findings[0].script
    assert classify(run_model(parse_script(doc)), fuzz_plant.honest_model(parse_script(doc))) is None


@pytest.mark.kernel
@needs_guards
def test_real_kernel_against_a_model_with_a_planted_bug(tmp_path):
    """End to end, as a user runs it: ``sparsemm fuzz`` in a subprocess whose model has the
    planted guard_remove bug, against the running kernel. The bug is found, confirmed on
    the kernel, shrunk to its minimal script and written with the kernel's records. (Real
    differences the run may meet besides are findings too, and do not fail this test.)"""
    proc = fuzz_cli("--examples", "5", "--seed", "2", "--profile", "guards", "--max-ops", "6",
                    "--findings", str(tmp_path), "--json", env=GUARD_REMOVE_PLANT)
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    planted = {f["signature"]: f for f in summary["findings"] if f["signature"] in GUARD_REMOVE_MINIMAL}
    assert "snapshot pages G!=." in planted, summary
    for sig, f in planted.items():
        path = Path(f["dir"])
        meta = json.loads((path / "finding.json").read_text())
        assert meta["confirmed"] == "3/3" and meta["shrink"]["complete"]
        script = json.loads((path / "script.json").read_text())
        assert _names(script["ops"]) == GUARD_REMOVE_MINIMAL[sig]
        kernel = json.loads((path / "kernel.json").read_text())
        model = json.loads((path / "model.json").read_text())
        assert [r["ret"] for r in kernel] == ["ok"] * len(script["ops"])
        assert kernel[-1]["value"] == run_model(parse_script(script))[-1]["value"]
        assert kernel[-1]["value"] != model[-1]["value"]


@pytest.mark.kernel
@needs_guards
def test_time_budget_on_the_kernel(tmp_path):
    proc = fuzz_cli("--time", "5", "--findings", str(tmp_path), "--json", timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    assert json.loads(proc.stdout)["scripts"] >= 1


@pytest.mark.kernel
@needs_guards
def test_new_profiles_on_the_kernel_end_to_end(tmp_path):
    """A short real run over the disk, raw, extensions and hugetlb profiles: every script
    parses and runs on both sides (the hugetlb one reserves its huge pages, or the profile
    is skipped with the reason). Real differences it meets are findings, written whole
    (they do not fail this test: bench/results_fuzz.md and tests/fuzz_findings/ list them)."""
    from sparsemm.fuzz.engine import hugetlb_unavailable

    why = hugetlb_unavailable(PROFILES["hugetlb"].hugetlb)
    fz = Fuzzer(seed=5, profiles=["disk", "raw", "extensions", "hugetlb"], examples=8, max_ops=6,
                findings_dir=tmp_path, confirm_runs=1, shrink_tests=25, shrink_seconds=30)
    assert fz.stats.skipped == ({"hugetlb": why} if why else {})
    stats = fz.run()
    assert stats.scripts == 8 and stats.refused == 0, stats.refused_example
    ran = 8 - stats.unavailable
    assert stats.kernel_runs >= ran and stats.ops > 8
    for f in stats.findings:
        assert {"script.json", "kernel.json", "model.json", "diff.txt", "finding.json"} <= {
            p.name for p in f.path.iterdir()}
        parse_script(json.loads((f.path / "script.json").read_text()))


@pytest.mark.kernel
def test_hugetlb_profile_is_skipped_in_one_line_where_no_huge_pages_can_be_had(
        tmp_path, monkeypatch, capsys):
    """Where vm.nr_hugepages cannot be raised (here: the backend pointed at a path it cannot
    write, as for a user who is not root) the hugetlb profile is left out with the reason;
    alone, it leaves nothing to run: one line, exit 2."""
    from sparsemm.cli import main
    from sparsemm.opscript import kernel

    pages = PROFILES["hugetlb"].hugetlb
    if kernel._free_huge_pages() >= pages:
        pytest.skip("huge pages are free on this machine now: nothing to raise, nothing refused")
    blocked = tmp_path / "nr_hugepages"
    blocked.mkdir()
    monkeypatch.setattr(kernel, "_NR_HUGEPAGES", str(blocked))
    why = (f"the script needs {pages} free huge pages and vm.nr_hugepages cannot be raised "
           "here (Is a directory)")
    fz = Fuzzer(seed=1, profiles=["raw", "hugetlb"], examples=0, findings_dir=tmp_path / "f")
    assert fz.profiles == ("raw",) and fz.stats.skipped == {"hugetlb": why}
    assert main(["fuzz", "--profile", "hugetlb", "--examples", "1",
                 "--findings", str(tmp_path / "f")]) == 2
    assert capsys.readouterr().err == f"sparsemm fuzz: no profile to run: profile hugetlb skipped: {why}\n"
    assert not (tmp_path / "f").exists()
