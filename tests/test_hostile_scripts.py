"""Hostile op scripts: every command refuses bad scripts in one line, on both backends alike,
and the kernel backend's children never outlive, hang or crash the command.

The issue-10 reproducers are the hand-made cases; hypothesis adds mutated scripts
(``SPARSEMM_HOSTILE_EXAMPLES`` scales them; tests/hostile.py has the contract).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsemm import abi
from sparsemm.opscript import script as sc
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import ScriptError, decode_script_text, parse_script

from conftest import needs_guards
from hostile import EXAMPLES, check, finish, refused, run_case, session_members, start

BACKENDS = ("model", "kernel")


def doc(ops, **top) -> str:
    return json.dumps({"ops": ops, **top})


def run(text: str, backend: str, *extra, env=None):
    return run_case(["run", "-", "--backend", backend, *extra], stdin=text, env=env)


# --- the issue's reproducers, on both backends ------------------------------------------------

def nested_forks(depth: int) -> list:
    ops = [{"op": "snapshot"}]
    for _ in range(depth):
        ops = [{"op": "fork", "child": ops}]
    return ops



REPRODUCERS = {
    "op is a list": ('{"ops": [{"op": []}]}', "op 0 field 'op'"),
    "300-digit arena_pages": ('{"arena_pages": ' + "9" * 300 + ', "ops": []}', "about 301 digits"),
    "5000-digit integer": ('{"arena_pages": ' + "9" * 5000 + ', "ops": []}', "too many digits"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "nested deeper than 64"),
    "deep nesting in a string-free object": ('{"a":' * 5000 + "1" + "}" * 5000, "nested deeper"),
    "300 nested forks": (doc(nested_forks(300)), "nested deeper"),
    "300 sibling forks": (doc([{"op": "fork", "child": [{"op": "snapshot"}]}] * 300),
                          "op 256 (fork) field 'op': more than 256 fork ops"),
    "forks nest 9 deep": (doc(nested_forks(sc.MAX_FORK_DEPTH + 1)), "forks nest deeper than 8"),
    "lone surrogate in note": ('{"note": "\\ud800", "ops": [{"op": "snapshot"}]}', "lone surrogate"),
    "lone surrogate in file name": ('{"files": {"\\udc80x": {"pages": 1}}, "ops": []}', "lone surrogate"),
    "lone surrogate in an op note": ('{"ops": [{"op": "snapshot", "note": "a\\udfff"}]}', "op 0 (snapshot) field 'note'"),
    "page-form at of 2^52 wraps": (doc([{"op": "mmap", "at": 1 << 52, "prot": "rw"}]), "does not fit 64 bits"),
    "at_bytes at 2^64": (doc([{"op": "munmap", "at_bytes": 1 << 64}]), "does not fit 64 bits"),
    "at_bytes below -2^63": (doc([{"op": "munmap", "at_bytes": -(1 << 63) - abi.ARENA_BASE - 1}]),
                             "does not fit 64 bits"),
    "len_bytes 2^64": (doc([{"op": "munmap", "at": 0, "len_bytes": 1 << 64}]), "does not fit 64 bits"),
    "raw advice beyond 32 bits": (doc([{"op": "madvise", "at": 0, "advice": 4294967300}]),
                                  "does not fit the kernel's int"),
    "raw advice below int": (doc([{"op": "madvise", "at": 0, "advice": -(1 << 31) - 1}]),
                             "does not fit the kernel's int"),
    "hwpoison": (doc([{"op": "madvise", "at": 0, "advice": "hwpoison"}]), "--allow-dangerous"),
    "soft_offline": (doc([{"op": "madvise", "at": 0, "advice": "soft_offline"}]), "--allow-dangerous"),
    "raw 100": (doc([{"op": "madvise", "at": 0, "advice": 100}]), "MADV_HWPOISON"),
    "raw 101": (doc([{"op": "madvise", "at": 0, "advice": 101}]), "MADV_SOFT_OFFLINE"),
    "process_madvise 100": (doc([{"op": "process_madvise", "ranges": [[0, 1]], "advice": 100}]),
                            "MADV_HWPOISON"),
    "hwpoison in a fork child": (doc([{"op": "fork", "child": [{"op": "madvise", "at": 0, "advice": 100}]}]),
                                 "MADV_HWPOISON"),
    "snapshot of a 2^23-page arena": ('{"arena_pages": 8388608, "ops": [{"op": "snapshot"}]}',
                                      "snapshots take arenas of at most"),
    "arena beyond the child's space": ('{"arena_pages": 34359738368, "ops": []}', "arena_pages"),
    "op leaves the arena": (doc([{"op": "munmap", "at_bytes": -abi.ARENA_BASE, "len": 100}]),
                            "leaves the arena"),
    "touch past the arena": (doc([{"op": "touch", "at": 1020, "len": 10, "access": "write"}]),
                             "leaves the arena"),
    "outside_arena reaching the interpreter": (
        doc([{"op": "munmap", "at_bytes": -abi.ARENA_BASE, "len_bytes": abi.TASK_SIZE}], outside_arena=True),
        "could reach memory that is not the script's"),
    "outside_arena madvise over everything": (
        doc([{"op": "madvise", "at": 0, "len_bytes": 1 << 47, "advice": "dontfork"}], outside_arena=True),
        "could reach memory"),
    "too many ops": ('{"ops": [' + ",".join(['{"op": "snapshot"}'] * (sc.MAX_OPS + 1)) + "]}",
                     "ops in all"),
    "too many files": (json.dumps({"files": {f"f{i}": {"pages": 0} for i in range(sc.MAX_FILES + 1)},
                                   "ops": []}), f"at most {sc.MAX_FILES}"),
    "too many file pages": (json.dumps({"files": {f"f{i}": {"pages": sc.MAX_FILE_PAGES} for i in range(3)},
                                        "ops": []}), "pages in all"),
    "populate budget": ('{"arena_pages": 4194304, "ops": [{"op": "mmap", "at": 0, "len": 4194304, '
                        '"prot": "rw", "flags": ["private", "anonymous", "populate"]}]}', "populate more than"),
    "mlock budget": ('{"arena_pages": 4194304, "ops": [{"op": "mlock", "at": 0, "len": 2000000}]}',
                     "populate more than"),
    "NaN": ('{"arena_pages": NaN, "ops": []}', "bad JSON"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
    "float at": (doc([{"op": "mmap", "at": 1.5, "prot": "rw"}]), "op 0 (mmap) field 'at'"),
    "bool len": (doc([{"op": "munmap", "at": 0, "len": True}]), "op 0 (munmap) field 'len'"),
    "ranges not pairs": (doc([{"op": "process_madvise", "ranges": [[1, 2, 3]], "advice": "cold"}]),
                         "field 'ranges'"),
    "4097 iovecs": (doc([{"op": "process_madvise", "ranges": [[0, 1]] * (sc.MAX_RANGES + 1),
                          "advice": "cold"}]), f"at most {sc.MAX_RANGES} [at, len]"),
    "pgoff beyond off_t": (json.dumps({"files": {"f": {"pages": 1}}, "ops": [
        {"op": "mmap", "at": 0, "prot": "r", "flags": ["shared"], "file": "f", "pgoff": 1 << 52}]}),
        "off_t"),
    "ftruncate beyond off_t": (json.dumps({"files": {"f": {"pages": 1}}, "ops": [
        {"op": "ftruncate", "file": "f", "bytes": 1 << 63}]}), "off_t"),
    "file name with a newline": ('{"files": {"a\\nb": {"pages": 1}}, "ops": []}', "bad file name"),
    "file name too long": (json.dumps({"files": {"é" * 150: {"pages": 1}}, "ops": []}), "bad file name"),
    "file spec with extra keys": ('{"files": {"f": {"pages": 1, "x": 2}}, "ops": []}', "want {\"pages\": N}"),
    "expect not a list": ('{"expect": 3, "ops": []}', "'expect'"),
    "tags not strings": ('{"tags": [1], "ops": []}', "a tag"),
    "outside_arena not a bool": ('{"outside_arena": 1, "ops": []}', "'outside_arena'"),
    "mmap_min_addr past the low zone": ('{"mmap_min_addr": {"sysctl": 0, "floor": 1048576}, "ops": []}',
                                        "'mmap_min_addr' must be"),
    "mmap_min_addr sysctl above floor": ('{"mmap_min_addr": {"sysctl": 8192, "floor": 4096}, "ops": []}',
                                         "'mmap_min_addr' must be"),
    "cap_sys_rawio not a bool": ('{"cap_sys_rawio": "yes", "ops": []}', "'cap_sys_rawio'"),
    "mmap past the low zone": (json.dumps({"outside_arena": True, "ops": [
        {"op": "mmap", "at_bytes": sc.LOW_ZONE_END - 4096 - abi.ARENA_BASE, "len": 2, "prot": "r",
         "flags": ["private", "anonymous", "fixed"]}]}), "could reach memory"),
}


@pytest.mark.parametrize("name", REPRODUCERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_reproducers_are_refused_in_one_line_on_both_backends(name, backend):
    text, needle = REPRODUCERS[name]
    if backend == "kernel" and name in ("too many ops",):
        pytest.skip("the same parser refuses it on the model; 20 MB through a pipe twice adds nothing")
    r = run_case(["run", "-", "--backend", backend, "--format", "text"], stdin=text)
    refused(r, needle)


def test_refusals_are_quick():
    # the snapshot and arena caps refuse before any work: no model materialises 2^23 pages
    t0 = time.monotonic()
    refused(run('{"arena_pages": 8388608, "ops": [{"op": "mmap", "at": 0, "len": 8388608, "prot": "rw"},'
                ' {"op": "snapshot"}]}', "model"), "snapshot")
    assert time.monotonic() - t0 < 30


def test_allow_dangerous_runs_on_the_model_and_explains():
    # never on the kernel: as root it would take a real page out of service
    text = doc([{"op": "mmap", "at": 0, "prot": "rw"}, {"op": "madvise", "at": 0, "advice": "hwpoison"}])
    r = check(run(text, "model", "--allow-dangerous"), allowed=(0,))
    assert "warning: op 1: hwpoison (MADV_HWPOISON)" in r.stderr and "lost until reboot" in r.stderr
    assert json.loads(r.stdout)[1]["ret"] == "EINVAL"  # the model has no CONFIG_MEMORY_FAILURE
    s = parse_script(json.loads(text), allow_dangerous=True)
    assert len(s.warnings) == 1
    with pytest.raises(ScriptError, match="refused"):
        parse_script(json.loads(text))


def test_lone_surrogate_text_output_is_refused_not_crashed():
    r = run_case(["run", "-", "--backend", "model", "--format", "text"],
                 stdin='{"note": "ok \\ud83d\\ude00", "ops": [{"op": "snapshot"}]}')
    check(r, allowed=(0,))
    assert "ok \U0001F600" in r.stdout  # a proper pair is fine


def test_same_scripts_refused_by_model_and_kernel_parsers():
    # the refusal is the parser's: one function for both backends
    for name, (text, needle) in REPRODUCERS.items():
        if isinstance(text, bytes) or name == "too many ops":
            continue
        with pytest.raises(ScriptError):
            parse_script(decode_script_text(text.encode("utf-8", "surrogatepass")))


# --- the kernel backend's children ---------------------------------------------------------------

LONG = {"arena_pages": 1 << 20, "ops": [
    {"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
    {"op": "touch", "at": 0, "len": 4, "access": "write"},
    {"op": "mmap", "at": 100, "len": 1, "prot": "r"},
    {"op": "touch", "at": 200, "len": 1_040_000, "access": "read"},  # ~1M EFAULT reads: seconds
    {"op": "snapshot"}]}


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _maps_has(pid: int, start: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return any(line.startswith(f"{start:x}-") for line in fh)
    except OSError:
        return False


def _kernel_child(cli_pid: int, mapped: int | None = None, timeout: float = 60) -> int:
    """The kernel backend child of ``cli_pid`` (its child, by parent pid), once it runs and
    has a mapping starting at ``mapped``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, cmd in session_members(cli_pid):
            if "sparsemm.opscript.kernel" in cmd and _ppid(pid) == cli_pid:
                if mapped is None or _maps_has(pid, mapped):
                    return pid
        time.sleep(0.02)
    raise AssertionError("the kernel backend child never showed up")


@needs_guards
def test_a_crash_keeps_the_records_and_names_the_op():
    args = ["run", "-", "--backend", "kernel"]
    data = json.dumps(LONG).encode()
    proc = start(args, stdin_data=data)
    proc.stdin.write(data)
    proc.stdin.close()
    proc.stdin = None
    child = _kernel_child(proc.pid, mapped=abi.ARENA_BASE + 100 * abi.PAGE_SIZE)
    os.kill(child, signal.SIGSEGV)
    r = check(finish(proc, args), allowed=(1,))
    assert "killed by SIGSEGV at op 3 (touch)" in r.stderr, r
    assert "the 3 record(s) before it are kept" in r.stderr
    assert [x["op"] for x in json.loads(r.stdout)] == ["mmap", "touch", "mmap"]
    assert len(r.stderr.strip().splitlines()) == 1


@needs_guards
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_cli_takes_its_children_down(sig):
    args = ["run", "-", "--backend", "kernel"]
    data = json.dumps(LONG).encode()
    proc = start(args, stdin_data=data)
    proc.stdin.write(data)
    proc.stdin.close()
    proc.stdin = None
    _kernel_child(proc.pid, mapped=abi.ARENA_BASE + 100 * abi.PAGE_SIZE)
    os.kill(proc.pid, sig)
    r = check(finish(proc, args), allowed=(128 + sig,))
    assert len(r.stderr.strip().splitlines()) == 1, r


@needs_guards
def test_sigkill_to_the_cli_kills_the_child_too():
    args = ["run", "-", "--backend", "kernel"]
    data = json.dumps(LONG).encode()
    proc = start(args, stdin_data=data)
    proc.stdin.write(data)
    proc.stdin.close()
    proc.stdin = None
    child = _kernel_child(proc.pid, mapped=abi.ARENA_BASE + 100 * abi.PAGE_SIZE)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(pid == child for pid, _ in session_members(proc.pid)):
        time.sleep(0.05)
    assert not any(pid == child for pid, _ in session_members(proc.pid)), "PR_SET_PDEATHSIG did not fire"


@needs_guards
def test_the_timeout_is_one_line_and_kills_the_child():
    r = check(run(json.dumps(LONG), "kernel", env={"SPARSEMM_CHILD_TIMEOUT": "1"}), allowed=(1,))
    assert "timed out after 1 s at op" in r.stderr and "TimeoutExpired" not in r.stderr, r
    assert len(r.stderr.strip().splitlines()) == 1


@needs_guards
def test_measure_timeout_is_one_line():
    r = check(run_case(["measure", "-", "--no-predict", "--repeat", "1"], stdin=json.dumps(LONG),
                       env={"SPARSEMM_CHILD_TIMEOUT": "1"}), allowed=(1,))
    assert "measure child timed out after 1 s" in r.stderr, r


@needs_guards
def test_fork_children_die_with_their_parent():
    # a fork child busy in a long touch; the kernel child is killed: the grandchild must go too
    long_child = {"arena_pages": 1 << 20, "ops": [
        {"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
        {"op": "fork", "child": [{"op": "mmap", "at": 100, "len": 1, "prot": "r"},
                                 {"op": "touch", "at": 200, "len": 1_040_000, "access": "read"}]}]}
    args = ["run", "-", "--backend", "kernel"]
    data = json.dumps(long_child).encode()
    proc = start(args, stdin_data=data)
    proc.stdin.write(data)
    proc.stdin.close()
    proc.stdin = None
    child = _kernel_child(proc.pid, mapped=abi.ARENA_BASE)
    grandchild = None
    deadline = time.monotonic() + 60
    while grandchild is None and time.monotonic() < deadline:
        for pid, _ in session_members(proc.pid):
            if _ppid(pid) == child and _maps_has(pid, abi.ARENA_BASE + 100 * abi.PAGE_SIZE):
                grandchild = pid
        time.sleep(0.02)
    assert grandchild is not None, "the fork child never showed up"
    os.kill(child, signal.SIGKILL)
    r = check(finish(proc, args), allowed=(1,))  # check(): the fork child is gone too
    assert "killed by SIGKILL at op 1 (fork); the 1 record(s) before it are kept" in r.stderr, r


@needs_guards
def test_an_arena_the_child_cannot_give_is_refused_with_what_is_in_the_way():
    # 'ulimit -s unlimited' puts the child's libraries bottom-up from TASK_SIZE / 3, inside
    # the arena zone: a 64 TiB arena then overlaps them and the child says so
    def legacy_layout():
        resource.setrlimit(resource.RLIMIT_STACK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    text = json.dumps({"arena_pages": sc.MAX_ARENA_PAGES, "ops": [{"op": "mmap", "at": 0, "prot": "rw"}]})
    r = run_case(["run", "-", "--backend", "kernel"], stdin=text, preexec=legacy_layout)
    refused(r, "overlaps the kernel backend child's own mapping", "can give at most")
    assert "Traceback" not in r.stderr


@needs_guards
@pytest.mark.parametrize("hard", [None, 128])
def test_many_files_raise_the_descriptor_limit_or_are_refused(hard):
    files = {f"f{i}": {"pages": 0} for i in range(1000)}  # more than the soft limit of 128
    text = json.dumps({"files": files, "ops": [{"op": "snapshot"}]})

    def low_limit():
        soft, old_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard if hard is not None else old_hard))

    r = run_case(["run", "-", "--backend", "kernel"], stdin=text, preexec=low_limit)
    if hard is None:
        check(r, allowed=(0,))
        assert json.loads(r.stdout)[0]["ret"] == "ok"
    else:
        refused(r, "open descriptors", "RLIMIT_NOFILE")


@needs_guards
def test_outside_arena_ops_that_hold_nothing_of_the_child_run_on_both_backends():
    text = doc([{"op": "mmap", "at": 1022, "len": 4, "prot": "rw"},  # crosses the arena's end
                {"op": "munmap", "at": 1023, "len": 2},
                {"op": "mprotect", "at": 0, "len_bytes": 1 << 47, "prot": "r"},  # stops at the hole
                {"op": "munmap", "at_bytes": abi.TASK_SIZE - abi.ARENA_BASE, "len": 1},  # EINVAL
                {"op": "snapshot"}], outside_arena=True)
    model = check(run(text, "model"), allowed=(0,))
    kernel = check(run(text, "kernel"), allowed=(0,))
    assert json.loads(model.stdout) == json.loads(kernel.stdout)


def test_the_child_refuses_an_op_reaching_its_own_memory_in_the_zone():
    # the parser cannot know where the child's libraries are; the child checks its own maps
    from sparsemm.opscript.kernel import ChildRefused, KernelRunner

    zone = abi.ARENA_BASE + (1 << 40)
    s = parse_script({"outside_arena": True, "ops": [
        {"op": "munmap", "at_bytes": zone - abi.ARENA_BASE, "len": 1},
        {"op": "mprotect", "at_bytes": zone - abi.ARENA_BASE - abi.PAGE_SIZE, "len": 2, "prot": "r"}]})
    runner = KernelRunner(s)
    runner.own = [(zone, zone + abi.PAGE_SIZE, "/usr/lib/libc.so.6")]
    maps = [(zone - abi.PAGE_SIZE, zone, "")] + runner.own  # address order, as in maps
    with pytest.raises(ChildRefused, match="memory of the kernel backend child itself"):
        runner.check_reach(s.ops[0], maps)
    with pytest.raises(ChildRefused, match="libc"):
        runner.check_reach(s.ops[1], maps)  # the run from the start reaches the library


# --- generated scripts -----------------------------------------------------------------------------

HOSTILE_INTS = [0, 1, -1, 4095, 4096, 1 << 20, (1 << 31) - 1, 1 << 31, (1 << 32) + 4, 1 << 52,
                (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, -(1 << 63), -(1 << 63) - 1, 10 ** 30,
                sc.MAX_ARENA_PAGES, sc.MAX_ARENA_PAGES + 1, 100, 101]
hostile_scalar = st.one_of(
    st.sampled_from(HOSTILE_INTS), st.integers(-5000, 5000),
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
    st.sampled_from(["", "rw", "none", "rwx", "\ud800", "a\udfff", "x" * 300, "hwpoison", "guard_install",
                     "private", "fixed", "read", "write", "f", "\n", "\x00", "é"]),
)
hostile_value = st.recursive(hostile_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["op", "at", "len", "x", "pages"]), inner,
                                                 max_size=3)), max_leaves=8)
FIELDS = ["at", "at_bytes", "len", "len_bytes", "new_len", "new_len_bytes", "to", "to_bytes", "prot",
          "flags", "advice", "file", "pgoff", "pgoff_bytes", "access", "value", "child", "pages", "bytes",
          "seals", "ranges", "note", "bogus"]
BASE_OPS = [
    {"op": "mmap", "at": 0, "len": 4, "prot": "rw"},
    {"op": "mmap", "at": 8, "len": 2, "prot": "r", "flags": ["shared"], "file": "f", "pgoff": 1},
    {"op": "munmap", "at": 1, "len": 1},
    {"op": "mprotect", "at": 0, "len": 2, "prot": "r"},
    {"op": "madvise", "at": 0, "len": 2, "advice": "guard_install"},
    {"op": "mremap", "at": 0, "len": 2, "new_len": 3, "flags": ["maymove"]},
    {"op": "mlock", "at": 0, "len": 1},
    {"op": "touch", "at": 0, "len": 2, "access": "write", "value": 7},
    {"op": "fork", "child": [{"op": "snapshot"}]},
    {"op": "snapshot"},
    {"op": "ftruncate", "file": "f", "pages": 2},
    {"op": "fallocate_punch", "file": "f", "at": 0, "len": 1},
    {"op": "seal", "file": "f", "seals": ["grow"]},
    {"op": "process_madvise", "ranges": [[0, 1]], "advice": "cold"},
]


@st.composite
def hostile_doc(draw):
    ops = [dict(o) for o in draw(st.lists(st.sampled_from(BASE_OPS), min_size=1, max_size=8))]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(ops))
        op[draw(st.sampled_from(FIELDS))] = draw(hostile_value)
    top = {"ops": ops, "files": {"f": {"pages": 4}}}
    if draw(st.booleans()):
        top[draw(st.sampled_from(["arena_pages", "files", "note", "tags", "outside_arena", "expect",
                                  "ops", "bogus"]))] = draw(hostile_value)
    return top


def _cheap(s) -> bool:
    """Cheap enough for the shared machine's kernel: a small arena and few populated pages."""
    return s.arena_pages <= 1 << 16


@settings(max_examples=EXAMPLES * 25, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_doc())
def test_generated_scripts_parse_or_refuse_and_run_on_the_model(d):
    try:
        s = parse_script(d)
    except ScriptError as exc:
        assert "\n" not in str(exc)
        str(exc).encode("utf-8")  # printable whatever the script held
        return
    records = run_model(s)
    assert len(records) == len(s.ops)
    json.dumps(records).encode("utf-8")


@needs_guards
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile_doc(), st.sampled_from(BACKENDS))
def test_generated_scripts_keep_the_cli_contract(d, backend):
    try:
        s = parse_script(d)
    except ScriptError:
        s = None
    if backend == "kernel" and s is not None and not _cheap(s):
        backend = "model"
    text = json.dumps(d)
    r = check(run(text, backend))
    if s is None:
        refused(r)
