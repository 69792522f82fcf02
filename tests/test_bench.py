"""bench/: `make bench` leaves the tracked files alone, every script has --quick and says its
run time, and the kernel child's op-time hook the replay benchmark relies on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sparsemm.opscript.kernel import OP_TIMES_ENV, run_kernel
from sparsemm.opscript.script import parse_script

from conftest import ROOT, needs_guards

BENCH = ROOT / "bench"
SCRIPTS = sorted(BENCH.glob("bench_*.py"))
EFENCE_LIB = ROOT / "src" / "sparsemm" / "efence" / "libsparsemm_efence.so.1"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A git repository holding this working tree's tracked files as they are now (edits
    included), committed, plus the built efence library (untracked, git-ignored)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    dest = tmp_path_factory.mktemp("bench-clone")
    files = git(ROOT, "ls-files", "-z").split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_symlink():  # tracked links stay links (tests/data/maps -> the package's samples)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / name)
        elif src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if EFENCE_LIB.exists():
        shutil.copy2(EFENCE_LIB, dest / EFENCE_LIB.relative_to(ROOT))
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "-c", "user.name=bench test", "-c", "user.email=bench@test.invalid", "commit", "-q", "-m", "tree")
    return dest


def env_for(clone: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(clone / "src"), "QILING_PYTHON": ""}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_each_script_has_quick_and_says_its_run_time(script):
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--record" in out.stdout
    assert "Run time on the 2-vCPU shared machine:" in out.stdout


def test_record_refuses_a_quick_run():
    out = subprocess.run([sys.executable, str(BENCH / "bench_designs.py"), "--quick", "--record"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode != 0
    assert "--record takes a full run" in out.stderr


def test_results_md_is_the_gathering_of_the_results_files(clone):
    """bench/RESULTS.md is exactly what `run_all.py --gather` makes of bench/results_*.md."""
    subprocess.run([sys.executable, "bench/run_all.py", "--gather"], cwd=clone, check=True,
                   env=env_for(clone), timeout=120, capture_output=True)
    try:
        assert git(clone, "status", "--porcelain") == "", (
            "bench/RESULTS.md is out of date: run `python bench/run_all.py --gather`")
    finally:
        git(clone, "checkout", "-q", "--", ".")  # the clone stays as committed for the next test


@pytest.mark.slow
def test_make_bench_quick_leaves_the_tree_clean(clone):
    """Every bench script, as `make bench` runs them but with --quick, in a copy of this tree:
    each succeeds, writes out/bench/results_*.md, and git sees no change at all."""
    proc = subprocess.run([sys.executable, "bench/run_all.py", "--quick"], cwd=clone,
                          env=env_for(clone), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert git(clone, "status", "--porcelain", "--untracked-files=all") == ""
    written = {p.name for p in (clone / "out" / "bench").glob("results_*.md")}
    assert len(written) == len(SCRIPTS), (written, [s.name for s in SCRIPTS])
    gathered = (clone / "out" / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    assert all(f"bench/{s.name}" in gathered for s in SCRIPTS)
    assert "a --quick run" in gathered


@needs_guards
def test_kernel_child_reports_its_op_time(tmp_path):
    """OP_TIMES_ENV: the child times its top-level ops alone and writes the sum per op name."""
    script = parse_script({"ops": [
        {"op": "mmap", "at": 0, "len": 8, "prot": "rw"},
        {"op": "madvise", "at": 1, "advice": "guard_install"},
        {"op": "madvise", "at": 3, "advice": "guard_install"},
        {"op": "touch", "at": 0, "len": 8, "access": "write"},
        {"op": "fork", "child": [{"op": "munmap", "at": 0, "len": 8}]},
    ]})
    path = tmp_path / "times.json"
    os.environ[OP_TIMES_ENV] = str(path)
    try:
        records = run_kernel(script, attempts=1)
    finally:
        del os.environ[OP_TIMES_ENV]
    assert len(records) == 5
    times = json.loads(path.read_text())
    assert times["ops"] == 5
    assert {k: v[0] for k, v in times["by_op"].items()} == {"mmap": 1, "madvise": 2, "touch": 1, "fork": 1}
    assert all(v[1] > 0 for v in times["by_op"].values())
    assert times["seconds"] == pytest.approx(sum(v[1] for v in times["by_op"].values()))
    assert 0 < times["cpu"] == pytest.approx(sum(v[2] for v in times["by_op"].values()))
    # a fork op holds its child's run: a fork, a pipe and a wait are slower than one madvise
    assert times["by_op"]["fork"][1] > times["by_op"]["madvise"][1] / 2


def test_no_op_times_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(OP_TIMES_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run_kernel(parse_script({"ops": [{"op": "mmap", "at": 0, "len": 1, "prot": "r"}]}), attempts=1)
    assert list(tmp_path.iterdir()) == []
