"""``sparsemm guards`` and ``sparsemm snapshot`` on a real process holding guard markers.

The child (tests/markers_child.py) installs markers at places it draws itself, in
anonymous, memfd and on-disk file mappings, and tells them over a pipe. ``guards`` must
find exactly those runs, by both reading methods; a snapshot must round-trip; analyzing
the snapshot must equal analyzing the live pid, with the markers counted; the rebuild,
built on the kernel, must measure what the model predicts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from sparsemm.analyze import snapshot as snap_mod
from sparsemm.analyze.report import analyze_source
from sparsemm.native.guards import METHODS

from conftest import needs_guards, run_cli

CHILD = Path(__file__).resolve().parent / "markers_child.py"

pytestmark = needs_guards


def start_child(tmp: Path, user: str | None = None):
    cmd = [sys.executable, str(CHILD), str(tmp)]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user_group(user)}", "--clear-groups", *cmd]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    if not line:
        child.wait(timeout=30)
        raise RuntimeError(f"the marker child exited with {child.returncode}")
    return child, json.loads(line)


def stop_child(child) -> None:
    child.stdin.close()
    child.wait(timeout=30)


@pytest.fixture(scope="module")
def child(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("markers")
    proc, told = start_child(tmp)
    try:
        yield proc.pid, told, tmp
    finally:
        stop_child(proc)


def runs_of(told) -> list[list[int]]:
    return [list(r) for r in told["markers"]]


def marker_items(doc) -> list[list[int]]:
    return sorted([g["start"], g["end"]] for g in doc["guards"] if g["design"] == "marker")


# --- sparsemm guards -------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], *(["--method", m] for m in METHODS), ["--scan-all"]],
                         ids=["auto", *METHODS, "scan-all"])
def test_guards_json_finds_exactly_the_markers(child, extra):
    pid, told, _ = child
    cp = run_cli("guards", str(pid), "--json", *extra)
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["schema"] == "sparsemm.guards/1" and doc["pid"] == pid
    for g in doc["guards"]:
        assert type(g["start"]) is int and type(g["end"]) is int and g["start"] < g["end"]
    assert marker_items(doc) == runs_of(told)
    # The child's PROT_NONE guard page is listed as the guard VMA it is, not as a marker.
    vma_guards = [[g["start"], g["end"]] for g in doc["guards"] if g["design"] == "prot_none_vma"]
    assert [list(r) for r in told["prot_none"]] == [r for r in vma_guards if r in told["prot_none"]]
    t = doc["totals"]
    assert t["marker_runs"] == len(told["markers"])
    assert t["marker_bytes"] == sum(e - s for s, e in told["markers"])
    assert doc["method"] == (extra[1] if extra[:1] == ["--method"] else "pagemap_scan")
    assert doc["read"]["stable"] is True


def test_guards_json_per_vma_backing_and_perms(child):
    pid, told, _ = child
    doc = json.loads(run_cli("guards", str(pid), "--json").stdout)
    where = {name: tuple(r) for name, r in told["mappings"].items()}
    backing = {}
    for v in doc["vmas"]:
        if v["design"] != "marker":
            continue
        for name, (s, e) in where.items():
            if v["start"] <= s < v["end"]:
                backing[name] = (v["backing"], v["perms"], v["gu"], v["path"])
    assert backing["anon"][:2] == ("anon", "rw-p")
    assert backing["memfd"][:2] == ("memfd", "rw-s")
    assert backing["shmem"][:2] == ("shared-anon", "rw-s")
    assert backing["file_shared"][:2] == ("file", "r--s")
    assert backing["file_private"][:2] == ("file", "rw-p")
    assert backing["file_shared"][3] == told["path"]
    assert all(gu in (True, None) for _, _, gu, _ in backing.values())  # every marker VMA is flagged gu


def test_guards_text_lists_the_same_runs(child):
    pid, told, _ = child
    cp = run_cli("guards", str(pid))
    assert cp.returncode == 0, cp.stderr
    found = [[int(a, 16), int(b, 16)] for a, b in re.findall(r"^\s+([0-9a-f]+)-([0-9a-f]+)\s", cp.stdout, re.M)]
    assert sorted(found) == runs_of(told)
    assert f"{pid}:" in cp.stdout.splitlines()[0]
    assert f"total: {len(told['markers'])} marker run(s)" in cp.stdout
    assert "PROT_NONE VMA" in cp.stdout  # the mprotect guard page


def test_guards_of_a_kernel_thread_is_a_sentence():
    kthreads = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_kthread(p)]
    if not kthreads:
        pytest.skip("no kernel thread visible in this pid namespace")
    cp = run_cli("guards", str(kthreads[0]))
    assert cp.returncode == 0, cp.stderr
    assert "is a kernel thread" in cp.stdout
    doc = json.loads(run_cli("guards", str(kthreads[0]), "--json").stdout)
    assert doc["kernel_thread"] is True and doc["guards"] == []


def _is_kthread(pid: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return bool(int(stat[stat.rindex(")") + 2:].split()[6]) & snap_mod.PF_KTHREAD)


@pytest.mark.parametrize("args, needle", [
    (["guards", "999999999"], "no process with pid 999999999"),
    (["guards", "notapid"], "not a pid"),
    (["snapshot", "999999999", "-o", "OUT"], "no process"),
    (["snapshot", "--all"], "-o/--output is required"),
    (["snapshot", "self", "--all", "-o", "OUT"], "not both"),
])
def test_cli_errors_are_one_line(tmp_path, args, needle):
    cp = run_cli(*[str(tmp_path / "x.json") if a == "OUT" else a for a in args])
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], cp.stderr


# --- permission: another user ----------------------------------------------------------------

def user_group(user: str) -> str:
    import grp
    import pwd

    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


def _as_nobody_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run a command as nobody"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    try:
        import pwd

        pwd.getpwnam("nobody")
    except KeyError:
        return "no user nobody"
    probe = subprocess.run(["setpriv", "--reuid=nobody", f"--regid={user_group('nobody')}", "--clear-groups",
                            sys.executable, "-c", "import sparsemm"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"nobody cannot import sparsemm from this checkout: {probe.stderr.strip()[:120]}"
    return None


def as_nobody(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=nobody", f"--regid={user_group('nobody')}", "--clear-groups",
                           sys.executable, "-m", "sparsemm", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_permission_denied_is_one_line_with_a_hint(child):
    why = _as_nobody_possible()
    if why:
        pytest.skip(why)
    pid, _, _ = child
    for args in (["guards", str(pid)], ["snapshot", str(pid), "-o", "/dev/null"], ["analyze", str(pid)]):
        cp = as_nobody(*args)
        assert cp.returncode == 2, (args, cp.stdout, cp.stderr)
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1, cp.stderr
        assert "permission denied" in lines[0] and "PTRACE_MODE_READ" in lines[0], lines[0]
        assert "uid 0 (root)" in lines[0] and "uid 65534 (nobody)" in lines[0], lines[0]


def test_snapshot_all_skips_and_counts_what_it_may_not_read():
    """As nobody: the one process of nobody's (a marker child) is saved, the rest counted."""
    why = _as_nobody_possible()
    if why:
        pytest.skip(why)
    with tempfile.TemporaryDirectory(prefix="sparsemm-nobody-") as tmp:  # pytest's tmp is root-only
        os.chmod(tmp, 0o777)
        mine, told = start_child(Path(tmp), user="nobody")
        try:
            out = Path(tmp) / "snaps"
            cp = as_nobody("snapshot", "--all", "-o", str(out))
            assert cp.returncode == 0, cp.stderr
        finally:
            stop_child(mine)
        files = sorted(out.iterdir())
        check_nobody_snapshots(files, mine.pid, told, cp)


def check_nobody_snapshots(files, pid, told, cp):
    pids = {snap_mod.load_snapshot(f.read_text(), f.name).pid: f for f in files}
    assert pid in pids
    saved = snap_mod.load_snapshot(pids[pid].read_text())
    assert [list(r) for r in saved.guards] == runs_of(told)
    m = re.search(r"(\d+) process\(es\) saved .* skipped (\d+) not permitted", cp.stderr)
    assert m, cp.stderr
    assert int(m.group(1)) == len(files) and int(m.group(2)) > 0


# --- snapshots ---------------------------------------------------------------------------------

def test_snapshot_round_trip(child, tmp_path):
    pid, told, _ = child
    s = snap_mod.take(pid)
    assert s.pid == pid and s.comm and s.cmdline[-2:] == [str(CHILD), str(child[2])]
    assert [list(r) for r in s.guards] == runs_of(told)
    assert s.guard_method == "pagemap_scan" and s.read["stable"] and s.read["attempts"] >= 1
    assert s.smaps is not None and s.maps == snap_mod._headers(s.smaps)
    assert s.taken_at.endswith("Z") and s.uptime_s is not None and s.uptime_s >= 0
    back = snap_mod.load_snapshot(s.dumps(), "x")
    assert back == s
    out = tmp_path / "p.snapshot.json"
    cp = run_cli("snapshot", str(pid), "-o", str(out))
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == "sparsemm.snapshot/1"
    for key in ("pid", "comm", "cmdline", "taken_at", "uptime_s", "kernel", "maps", "smaps", "guards",
                "guard_method", "read"):
        assert key in doc
    assert [[g["start"], g["end"]] for g in doc["guards"]] == runs_of(told)


def test_analyze_of_a_snapshot_equals_analyze_of_the_live_pid(child, tmp_path):
    pid, told, _ = child
    path = tmp_path / "child.snapshot.json"
    path.write_text(snap_mod.take(pid).dumps())
    live, saved = analyze_source(str(pid)), analyze_source(str(path))

    def comparable(r):
        doc = r.to_json(with_mappings=True)
        for key in ("seconds", "source", "input", "uptime_s"):  # uptime_s: when each was read
            doc.pop(key)
        return doc

    assert live.input_kind == "pid" and saved.input_kind == "snapshot"
    assert comparable(live) == comparable(saved)
    n = len(told["markers"])
    assert live.existing_markers == n
    assert live.existing_marker_bytes == sum(e - s for s, e in told["markers"])
    # pte keeps the markers (only the mprotect guard page merges away); the rebuild as the
    # process was has the original's count.
    assert live.guards >= 1 and live.designs["pte"].vmas == live.formula["pte"] < live.vmas
    assert live.vma_matches_original is True and live.rebuilt_vmas == live.vmas
    # Under vma every run is a PROT_NONE VMA (1 or 2 more VMAs each); under tree an entry.
    assert live.vmas + n <= live.designs["vma"].vmas <= live.vmas + 2 * n
    assert live.designs["tree"].vmas == live.formula["tree"]
    assert live.designs["tree"].guard_entries >= n
    assert live.warnings == []


def test_cli_analyze_snapshot_and_mappings_show_the_markers(child, tmp_path):
    pid, told, _ = child
    path = tmp_path / "c.json"
    path.write_text(snap_mod.take(pid).dumps())
    cp = run_cli("analyze", str(path), "--json", "--mappings")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["input"] == "snapshot" and doc["guards"]["existing_markers"] == len(told["markers"])
    listed = sorted([r["start"], r["end"]] for m in doc["mappings"] for r in m["markers"])
    assert listed == runs_of(told)
    for m in doc["mappings"]:
        if m["markers"]:
            assert m["designs"]["vma"] == "split" and m["designs"]["tree"] == "split"
    cp = run_cli("analyze", str(path), "--mappings")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.count("existing marker") == len(told["markers"])


def test_saved_smaps_with_gu_but_no_runs_warns(child, tmp_path):
    pid, _, _ = child
    smaps = tmp_path / "child.smaps"
    smaps.write_text(Path(f"/proc/{pid}/smaps").read_text())
    cp = run_cli("analyze", str(smaps), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["guards"]["existing_markers"] is None
    assert len(doc["warnings"]) == 1 and "VmFlags gu" in doc["warnings"][0]
    warn = [line for line in cp.stderr.splitlines() if "warning" in line]
    assert len(warn) == 1 and "unknown" in warn[0]
    cp = run_cli("analyze", str(smaps))
    assert cp.returncode == 0 and "warning:" in cp.stdout and "unknown" in cp.stdout


def test_snapshot_all_tarball(child, tmp_path):
    pid, told, _ = child
    out = tmp_path / "all.tar.gz"
    cp = run_cli("snapshot", "--all", "-o", str(out))
    assert cp.returncode == 0, cp.stderr
    assert "saved to" in cp.stderr
    with tarfile.open(out) as tar:
        names = tar.getnames()
        member = next(n for n in names if n.startswith(f"{pid}-"))
        saved = snap_mod.load_snapshot(tar.extractfile(member).read().decode(), member)
    assert [list(r) for r in saved.guards] == runs_of(told)
    assert all(n.endswith(".snapshot.json") for n in names)
    assert not list(tmp_path.glob(".sparsemm-snapshots-*"))  # no temporary file left


@pytest.mark.parametrize("doc, needle", [
    ({"schema": "other"}, "schema"),
    ({"guards": [{"start": "0x1000", "end": 8192}]}, "guards[0]"),
    ({"guards": [{"start": 4096, "end": 8192}]}, "not inside any VMA"),
    ({"maps": 5}, "field 'maps'"),
])
def test_bad_snapshot_files_are_one_line(child, tmp_path, doc, needle):
    pid, _, _ = child
    good = snap_mod.take(pid).to_json()
    good.update(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(good))
    cp = run_cli("analyze", str(path))
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], cp.stderr


# --- on the kernel: the rebuild with the markers measures what the model predicts ----------------

@pytest.mark.slow  # tens of seconds (make test's slowest 20)
@pytest.mark.kernel
@pytest.mark.parametrize("design", ["vma", "pte"])
def test_reproduce_with_existing_markers_exact(child, design):
    from sparsemm.analyze.reproduce import reproduce

    pid, told, _ = child
    report = analyze_source(str(pid))
    assert report.existing_markers == len(told["markers"])
    r = reproduce(report.layout_obj, design, repeat=1)
    assert r.measured.failed_ops == 0
    assert r.exact_vmas and r.exact_vmpte, r.rows
    assert r.measured.values["arena_vmas"] == report.designs[design].vmas


def test_pagemap_words_agree_with_pagemap_scan_across_chunks():
    """Bit 58 is read in chunks of _WORDS_CHUNK pages: runs on both sides of a chunk
    boundary, and one across it, come out as PAGEMAP_SCAN gives them (a 1 GiB PROT_NONE
    reservation: markers need no memory)."""
    from sparsemm import abi
    from sparsemm.native import _scan, libc

    P = abi.PAGE_SIZE
    n = 2 * _scan._WORDS_CHUNK + 8
    addr = libc.mmap(0, n * P, abi.PROT_NONE, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MapFlag.NORESERVE)
    try:
        c = _scan._WORDS_CHUNK
        for first, npages in ((0, 1), (c - 3, 2), (c - 1, 3), (2 * c - 1, 1), (n - 2, 2)):
            libc.madvise(addr + first * P, npages * P, abi.MADV_GUARD_INSTALL)
        words = _scan._scan_words(addr, n * P, abi.PAGE_IS_GUARD)
        assert words == _scan._scan_ioctl(addr, n * P, abi.PAGE_IS_GUARD)
        assert words == [(addr, addr + P), (addr + (c - 3) * P, addr + (c + 2) * P),
                         (addr + (2 * c - 1) * P, addr + 2 * c * P), (addr + (n - 2) * P, addr + n * P)]
    finally:
        libc.munmap(addr, n * P)


@pytest.mark.kernel
@pytest.mark.parametrize("design", ["vma", "pte"])
def test_reproduce_with_the_payload_as_markers_exact(design):
    """The renderer's +payload layout (decommitted payload as guard installs) built on the
    kernel measures what the model predicts; under vma it is the original's count."""
    from sparsemm.analyze.reproduce import reproduce

    path = Path(__file__).resolve().parent / "data" / "maps" / "chromium150_renderer_heavy_default.maps"
    report = analyze_source(str(path))
    r = reproduce(report.layout_payload_obj, design, repeat=1)
    assert r.measured.failed_ops == 0
    assert r.exact_vmas and r.exact_vmpte, r.rows
    want = report.vmas if design == "vma" else report.designs_with_payload["pte"].vmas
    assert r.measured.values["arena_vmas"] == want == (1400 if design == "vma" else 722)
