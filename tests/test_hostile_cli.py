"""Hostile command lines: every option error names the option in one line with exit 2;
odd values (inf, nan, 1e308, huge counts, undecodable bytes) never reach a traceback.

The issue-10 reproducers are the hand-made cases; hypothesis draws command lines from
pools of hostile values (``SPARSEMM_HOSTILE_EXAMPLES`` scales them; tests/hostile.py has
the contract).
"""

from __future__ import annotations

import json
import os
import time
from multiprocessing import Process

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsemm.opscript import lock

from conftest import ROOT
from hostile import EXAMPLES, check, refused, run_case

SMALL_MAPS = ROOT / "tests" / "data" / "maps" / "python311_glibc236_200threads.maps"
SCRIPT = json.dumps({"ops": [{"op": "mmap", "at": 0, "len": 2, "prot": "rw"},
                             {"op": "madvise", "at": 1, "advice": "guard_install"}, {"op": "snapshot"}]})


@pytest.mark.parametrize("command", ["analyze", "reproduce"])
@pytest.mark.parametrize("option, value", [
    ("--max-guard-kib", "inf"), ("--max-guard-kib", "1e308"), ("--max-guard-kib", "nan"),
    ("--max-guard-kib", "-1"), ("--max-guard-kib", "0x10"), ("--max-borderline-mib", "nan"),
    ("--max-borderline-mib", "-inf"), ("--cost-ratio", "inf"), ("--cost-ratio", "-0.5"),
    ("--neighbour-perms", "rwxs"), ("--neighbour-perms", "r"), ("--touch", "all"),
])
def test_policy_options_name_the_option(command, option, value):
    refused(run_case([command, str(SMALL_MAPS), f"{option}={value}"]), f"argument {option}:", repr(value))


@pytest.mark.parametrize("command, target", [("measure", "-"), ("reproduce", str(SMALL_MAPS))])
@pytest.mark.parametrize("value", ["0", "-1", "101", "10" * 20, "abc", "1e3", "", "inf"])
def test_absurd_repeat_is_refused(command, target, value):
    refused(run_case([command, target, "--repeat", value], stdin=SCRIPT), "argument --repeat:")


@pytest.mark.parametrize("args, needle", [
    ([], "the following arguments are required"),
    (["frobnicate"], "invalid choice"),
    (["run"], "the following arguments are required: script"),
    (["run", "-", "--backend", "qemu"], "argument --backend"),
    (["run", "-", "--bogus"], "unrecognized arguments"),
    (["analyze", str(SMALL_MAPS), "--plot", "x.jpg"], "--plot x.jpg"),
    (["analyze", str(SMALL_MAPS), "--plot", "/no/such/dir/x.png"], "no directory"),
    (["analyze", "/no/such/file"], "no such file"),
    (["analyze", b"/tmp/\xff\xfe-no-such.maps"], "no such file"),
    (["run", b"/tmp/\xff-no-such.json"], "no such file"),
])
def test_usage_errors_are_one_line(args, needle):
    refused(run_case(args, stdin=SCRIPT), needle)


def test_an_undecodable_file_name_is_analyzed_and_printed(tmp_path):
    name = b"\xff\xfe.maps"
    (tmp_path / name.decode("utf-8", "surrogateescape")).write_bytes(SMALL_MAPS.read_bytes())
    path = str(tmp_path).encode() + b"/" + name
    r = check(run_case(["analyze", path]), allowed=(0,))
    assert "VMAs" in r.stdout
    r = check(run_case(["analyze", path, "--json"]), allowed=(0,))
    json.loads(r.stdout)


def test_environment_timeouts_are_checked():
    refused(run_case(["run", "-", "--backend", "kernel"], stdin=SCRIPT,
                     env={"SPARSEMM_CHILD_TIMEOUT": "-3"}), "SPARSEMM_CHILD_TIMEOUT")


# --- the measurement lock ------------------------------------------------------------------------

def _private(tmp_path):
    d = tmp_path / "locks"
    d.mkdir(mode=0o700)
    return d


def test_the_lock_lives_in_a_private_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARSEMM_MEASURE_LOCK", raising=False)
    runtime = _private(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with lock.measure_lock(timeout=5) as path:
        assert path == str(runtime / "sparsemm" / "measure.lock")
        st = os.stat(runtime / "sparsemm")
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()
        assert (runtime / "sparsemm" / "measure.lock").read_text().strip() == str(os.getpid())
    runtime.chmod(0o755)  # a runtime directory open to others is not used
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert lock.lock_path() == f"/tmp/sparsemm-{os.geteuid()}/measure.lock"


def test_a_symlinked_lock_file_is_refused(tmp_path, monkeypatch):
    d = _private(tmp_path)
    target = tmp_path / "someone-elses-file"
    target.write_text("keep me")
    (d / "measure.lock").symlink_to(target)
    monkeypatch.setenv("SPARSEMM_MEASURE_LOCK", str(d / "measure.lock"))
    with pytest.raises(lock.LockError, match="symbolic link"):
        with lock.measure_lock(timeout=1):
            pass
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("problem", ["mode", "owner", "symlink"])
def test_a_lock_directory_others_control_is_refused(tmp_path, monkeypatch, problem):
    d = _private(tmp_path)
    if problem == "mode":
        d.chmod(0o777)
        needle = "open to others"
    elif problem == "owner":
        if os.geteuid() != 0:
            pytest.skip("giving a directory away needs root")
        os.chown(d, 65534, 65534)
        needle = "belongs to uid 65534"
    else:
        real = d
        d = tmp_path / "link"
        d.symlink_to(real)
        needle = "not a directory"
    monkeypatch.setenv("SPARSEMM_MEASURE_LOCK", str(d / "measure.lock"))
    with pytest.raises(lock.LockError, match=needle):
        with lock.measure_lock(timeout=1):
            pass


def _hold(path: str, seconds: float) -> None:
    os.environ["SPARSEMM_MEASURE_LOCK"] = path
    with lock.measure_lock(timeout=5):
        time.sleep(seconds)


def test_waiting_for_the_lock_times_out_naming_the_holder(tmp_path, monkeypatch):
    path = str(_private(tmp_path) / "measure.lock")
    holder = Process(target=_hold, args=(path, 30))
    holder.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (os.path.exists(path) and open(path).read().strip()):
            time.sleep(0.05)
        r = check(run_case(["measure", "-", "--no-predict", "--repeat", "1"], stdin=SCRIPT,
                           env={"SPARSEMM_MEASURE_LOCK": path, "SPARSEMM_LOCK_TIMEOUT": "1"}),
                  allowed=(1,))
        assert "waited 1 s for the measurement lock" in r.stderr and f"held by pid {holder.pid}" in r.stderr, r
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        holder.terminate()
        holder.join()


# --- generated command lines -------------------------------------------------------------------

HOSTILE = ["", "0", "-1", "1", "3", "inf", "-inf", "nan", "1e308", "1e-308", "10" * 20, "0x10", "none",
           "None", "rw-p", "---p", "rw-s", "auto", "rss", "first", "pte", "vma", "tree", "json", "text",
           "model", "kernel", "x.png", "x.svg", "-", "--", "é", "\x01", " 1 "]
OPTIONS = {
    "run": ["--backend", "--design", "--format", "--allow-dangerous"],
    "compare": ["--design", "--allow-dangerous"],
    "designs": ["--design", "--json", "--allow-dangerous"],
    "measure": ["--repeat", "--json", "--no-predict"],
    "analyze": ["--json", "--plot", "--max-guard-kib", "--max-borderline-mib", "--cost-ratio",
                "--neighbour-perms", "--strict-guards", "--touch"],
    "reproduce": ["--design", "--repeat", "--json", "--max-guard-kib", "--max-borderline-mib",
                  "--cost-ratio", "--neighbour-perms", "--strict-guards", "--touch"],
    "demo": ["--plot", "--no-reproduce"],
    "probe": ["--json"],
}
FLAGS = {"--allow-dangerous", "--json", "--no-predict", "--strict-guards", "--no-reproduce"}
TARGETS = {
    "run": ["-", "/no/such.json", "/dev/null", str(ROOT)], "compare": ["-"], "designs": ["-"],
    "measure": ["-"], "analyze": [str(SMALL_MAPS), "-", "/no/such", "/proc/self", "/dev/null", "/proc/0"],
    "reproduce": [str(SMALL_MAPS), "/no/such", str(ROOT / "tests" / "data" / "maps")],
    "demo": [], "probe": [],
}


@st.composite
def command_line(draw):
    command = draw(st.sampled_from(sorted(OPTIONS)))
    args = [command]
    if TARGETS[command]:
        args.append(draw(st.sampled_from(TARGETS[command])))
    for _ in range(draw(st.integers(0, 3))):
        if not OPTIONS[command]:
            break
        opt = draw(st.sampled_from(OPTIONS[command]))
        args.append(opt)
        if opt not in FLAGS:
            args.append(draw(st.sampled_from(HOSTILE)))
    if command == "demo":
        args.append("--no-reproduce")  # the full demo rebuilds the renderer on the kernel: seconds
    return args


@pytest.mark.slow  # tens of seconds (make test's slowest 20)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(command_line())
def test_generated_command_lines_keep_the_contract(tmp_path_factory, args):
    cwd = tmp_path_factory.mktemp("cli")  # --plot and demo write here
    check(run_case(args, stdin=SCRIPT, cwd=cwd))
