"""The strace output parser on real output captured on this machine (tests/data/trace).

The three files are one program (threads sending signals, a fork, an ENOMEM mmap, a memfd
mapping, process_madvise with an iovec, mremap, mlock2, an execve from a non-leader thread)
traced three ways: ``-X raw -ttt -y -o`` (what ``sparsemm trace`` runs), the default
symbolic output with ``-tt``, and stderr output with ``-r`` (``[pid N]`` prefixes, none for
the first process).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from sparsemm import abi
from sparsemm.trace import parse as tp

DATA = Path(__file__).resolve().parent / "data" / "trace"
RAW = DATA / "threads_raw.strace"
SYMBOLIC = DATA / "threads_symbolic.strace"
STDERR = DATA / "threads_stderr_relative.strace"


def events(path, default_pid=0):
    return list(tp.parse_file(path, default_pid))


def calls(evs, name):
    return [e for e in evs if e.kind == tp.CALL and e.name == name]


def test_every_line_is_accounted_for():
    text = RAW.read_text().splitlines()
    evs = events(RAW)
    # entry halves: "<unfinished ...>", and the execve that ends "<pid changed to N ...>"
    unfinished = sum(1 for ln in text if ln.endswith("<unfinished ...>") or ln.endswith(" ...>"))
    resumed = sum(1 for ln in text if "resumed>" in ln)
    enters = sum(1 for e in evs if e.kind == tp.ENTER)
    # one event per line, except that an entry half waits for its resumed half (clone and
    # exit_group entry halves are reported too)
    assert len(evs) == len(text) - unfinished + enters
    assert resumed == unfinished  # every half finds its other half, the changed-pid execve too
    assert sorted(e.lineno for e in evs) == [e.lineno for e in evs]


def test_split_calls_are_joined_with_both_halves():
    text = RAW.read_text().splitlines()
    evs = {e.lineno: e for e in events(RAW) if e.kind == tp.CALL}
    checked = 0
    for i, line in enumerate(text, 1):
        m = re.match(r"(\d+) \S+ <\.\.\. (\w+) resumed>(.*)\) += (\S+)", line)
        if not m or m.group(2) != "mmap":
            continue
        pid = m.group(1)
        entry = next(text[j] for j in range(i - 2, -1, -1) if text[j].startswith(pid + " ")
                     and "unfinished" in text[j])
        ev = evs[i]
        assert ev.pid == int(pid) and ev.name == "mmap"
        first_arg = re.search(r"mmap\(([^,]+), (\d+)", entry)
        assert ev.args[0] == first_arg.group(1) and ev.args[1] == first_arg.group(2)
        assert ev.ret == int(m.group(4), 16)
        checked += 1
    assert checked >= 5


def test_values_errors_fds_and_structs():
    evs = events(RAW)
    enomem = [e for e in calls(evs, "mmap") if e.err]
    assert len(enomem) == 1 and enomem[0].err == "ENOMEM" and enomem[0].ret == -1
    assert tp.int_arg(enomem[0].args[1]) == 1 << 60
    memfd = [e for e in calls(evs, "mmap") if "memfd" in e.args[4]]
    assert tp.fd_arg(memfd[0].args[4]) == (3, "/memfd:frag")
    assert tp.flags_arg(memfd[0].args[3], tp.MAP_NAMES) == abi.MAP_SHARED
    anon = calls(evs, "mmap")[0]
    assert tp.fd_arg(anon.args[4]) == (-1, None)
    pm = calls(evs, "process_madvise")
    assert [tp.flags_arg(e.args[3], tp.MADV_NAMES) for e in pm] == [abi.Madv.GUARD_INSTALL, abi.Madv.PAGEOUT]
    ranges = tp.iovec_arg(pm[0].args[1])
    assert [n for _, n in ranges] == [4096, 8192] and pm[0].ret == 12288
    (mr,) = calls(evs, "mremap")
    assert tp.flags_arg(mr.args[3], tp.MREMAP_NAMES) == abi.MremapFlag.MAYMOVE and mr.ret > 4096
    (m2,) = calls(evs, "mlock2")
    assert tp.flags_arg(m2.args[2], tp.MLOCK_NAMES) == abi.MLOCK_ONFAULT
    threads = [e for e in calls(evs, "clone3")]
    assert threads and all(tp.flags_arg(tp.struct_field(e.args[0], "flags"), tp.CLONE_NAMES)
                           & (tp.CLONE_VM | tp.CLONE_THREAD) == tp.CLONE_VM | tp.CLONE_THREAD for e in threads)
    forks = calls(evs, "clone")
    assert len(forks) == 1 and not tp.flags_arg(forks[0].args[1][6:], tp.CLONE_NAMES) & tp.CLONE_VM
    assert forks[0].ret > 0


def test_process_events():
    evs = events(RAW)
    exits = {e.pid: e.status for e in evs if e.kind == tp.EXITED}
    fork_child = calls(evs, "clone")[0].ret
    assert exits[fork_child] == 3
    signals = Counter(e.name for e in evs if e.kind == tp.SIGNAL)
    assert signals["SIGUSR1"] >= 10 and signals["SIGCHLD"] == 1
    (sup,) = [e for e in evs if e.kind == tp.SUPERSEDED]
    leader = evs[0].pid
    assert sup.pid == leader and sup.status != leader
    execs = calls(evs, "execve")
    assert execs[-1].pid == leader and execs[-1].changed_pid == leader and execs[-1].ok
    assert '"/bin/true"' in execs[-1].args[0]
    enters = [e for e in evs if e.kind == tp.ENTER]
    assert {e.name for e in enters} >= {"clone"}


def _decoded(evs):
    """(name, prot/flags/advice values) of every mm call: what does not depend on addresses."""
    out = Counter()
    for e in evs:
        if e.kind != tp.CALL:
            continue
        if e.name == "mmap":
            out[("mmap", tp.flags_arg(e.args[2], tp.PROT_NAMES), tp.flags_arg(e.args[3], tp.MAP_NAMES) & ~0x10,
                 e.err)] += 1
        elif e.name == "mprotect":
            out[("mprotect", tp.flags_arg(e.args[2], tp.PROT_NAMES))] += 1
        elif e.name == "madvise":
            out[("madvise", tp.flags_arg(e.args[2], tp.MADV_NAMES))] += 1
        elif e.name in ("mremap", "mlock2", "munmap", "brk", "process_madvise"):
            out[(e.name,)] += 1
    return out


def test_symbolic_output_decodes_to_the_same_calls():
    raw, sym = _decoded(events(RAW)), _decoded(events(SYMBOLIC))
    assert sum(raw.values()) > 100
    # the same program: the same calls with the same flags, whatever the spelling
    for key in set(raw) | set(sym):
        if key[0] in ("brk", "munmap", "mmap"):  # malloc's brk/arena choices vary a little between runs
            continue
        assert raw[key] == sym[key], key
    assert abs(sum(raw.values()) - sum(sym.values())) <= 8
    assert tp.flags_arg("PROT_READ|PROT_WRITE", tp.PROT_NAMES) == 3
    assert tp.flags_arg("MAP_PRIVATE|MAP_ANONYMOUS|MAP_STACK", tp.MAP_NAMES) == 0x20022
    assert tp.flags_arg("CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|"
                        "CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID", tp.CLONE_NAMES) == 0x3D0F00
    assert tp.flags_arg("0x3 /* PROT_READ|PROT_WRITE */", tp.PROT_NAMES) == 3
    assert tp.flags_arg("MADV_GUARD_INSTALL", tp.MADV_NAMES) == 102
    with pytest.raises(ValueError, match="unknown flag 'MAP_BOGUS'"):
        tp.flags_arg("MAP_PRIVATE|MAP_BOGUS", tp.MAP_NAMES)


def test_clock_times_are_seconds():
    evs = events(SYMBOLIC)
    ts = [e.ts for e in evs]
    assert all(t is not None for t in ts)
    assert 0 < ts[-1] - ts[0] < 60


def test_stderr_output_with_pid_prefixes_and_relative_times():
    evs = events(STDERR, default_pid=4242)
    pids = Counter(e.pid for e in evs)
    assert pids[4242] > 50 and len(pids) >= 5  # the first process unprefixed, threads "[pid N]"
    ts = [e.ts for e in tp.parse_file(STDERR, 4242, order="entry")]
    assert ts == sorted(ts) and 0 < ts[-1] < 60  # -r deltas, summed; a split call at its entry
    assert len(calls(evs, "clone3")) == len(calls(events(RAW), "clone3"))


def test_split_args_keeps_nested_and_quoted_text():
    assert tp.split_args('"a, b", [1, 2], {x=1, y=[3, 4]}, 5') == ['"a, b"', "[1, 2]", "{x=1, y=[3, 4]}", "5"]
    assert tp.split_args('3</path/with, comma>, 0') == ["3</path/with, comma>", "0"]
    assert tp.split_args('"q\\"uote, x", 1') == ['"q\\"uote, x"', "1"]
    assert tp.split_args("") == []


def test_bad_lines_name_the_line():
    bad = ["100 1.000000 mmap(NULL, 4096, 0x3, 0x22, -1, 0) = 0x7f0000000000",
           "100 1.000001 this is not strace output"]
    with pytest.raises(tp.TraceParseError) as info:
        list(tp.parse_lines(bad, "t.strace"))
    assert str(info.value).startswith("t.strace:2: ") and "\n" not in str(info.value)
    with pytest.raises(tp.TraceParseError, match="t.strace:1: .*no return value"):
        list(tp.parse_lines(["100 mmap(NULL, 4096, 0x3"], "t.strace"))


def test_padded_returns_delays_and_interruptions():
    lines = ["7 1.0 brk(NULL)       = 0x55d0c0010000",
             "7 1.1 execve(\"/bin/x\", [\"x\"], 0x1 /* 1 var */) = 0 (DELAYED)",
             "7 1.2 mmap(NULL, 4096, 0x3, 0x22, -1, 0) = ? ERESTARTSYS (To be restarted if SA_RESTART is set)",
             "7 1.3 exit_group(0)                           = ?",
             "7 1.4 +++ killed by SIGKILL +++",
             "8 1.5 <... mmap resumed>) = 0x1000",  # entry half before the trace began (attach)
             ]
    evs = list(tp.parse_lines(lines))
    assert evs[0].ret == 0x55D0C0010000 and evs[0].args == ["NULL"]
    assert evs[1].ok and evs[1].ret == 0
    assert evs[2].ret is None and evs[2].err == "ERESTARTSYS"
    assert evs[3].name == "exit_group" and evs[3].ret is None and evs[3].ok
    assert evs[4].kind == tp.KILLED and evs[4].name == "SIGKILL"
    assert len(evs) == 5


def test_entry_order_puts_a_split_call_where_it_began():
    """Chromium's network thread unmapped a file view (entered first, printed last) while
    another thread grew a mapping into the freed range in place: only the entry order makes
    the mremap possible."""
    path = DATA / "chromium_reorder.strace"
    by_line = [(e.name, tp.int_arg(e.args[0])) for e in tp.parse_file(path) if e.kind == tp.CALL]
    by_entry = [(e.name, tp.int_arg(e.args[0])) for e in tp.parse_file(path, order="entry") if e.kind == tp.CALL]
    assert by_line.index(("munmap", 0x7F81BB297000)) > by_line.index(("mremap", 0x7F81BB28C000))
    assert by_entry.index(("munmap", 0x7F81BB297000)) < by_entry.index(("mremap", 0x7F81BB28C000))
    assert sorted(by_line) == sorted(by_entry)
    ts = [e.ts for e in tp.parse_file(path, order="entry")]
    assert ts == sorted(ts)


def test_a_barrier_keeps_calls_in_flight_after_the_map_read():
    """A renderer thread entered mprotect just before another entered exit_group, where the
    map was read; the mprotect waited for the read's mmap lock and completed after it."""
    path = DATA / "chromium_exit_barrier.strace"
    barrier = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "exit_group(0 <unf" in ln)
    order = [(e.kind, e.name, e.args[0] if e.args else None)
             for e in tp.parse_file(path, order="entry", barriers={barrier}) if e.pid in (5862, 5873)]
    pos_exit = order.index((tp.ENTER, "exit_group", "0"))
    pos_late = order.index((tp.CALL, "mprotect", "0x291c0078c000"))
    pos_done = order.index((tp.CALL, "mprotect", "0x291c00788000"))
    assert pos_done < pos_exit < pos_late
    plain = [(e.kind, e.name, e.args[0] if e.args else None)
             for e in tp.parse_file(path, order="entry") if e.pid in (5862, 5873)]
    assert plain.index((tp.CALL, "mprotect", "0x291c0078c000")) < plain.index((tp.ENTER, "exit_group", "0"))


def test_calls_strace_could_not_name_are_read():
    """strace prints ``???(`` for a call whose number it could not read at its entry (seen in
    a Chromium trace: a task caught inside a call as it was killed). Such lines are calls
    named ``???``, not errors; a result half that names the call completes it by that name."""
    lines = ["9 1.0 ???( <unfinished ...>",
             "9 1.1 +++ killed by SIGKILL +++",
             "10 1.2 ???()                    = ?",
             "11 1.3 ???( <unfinished ...>",
             "11 1.4 <... ??? resumed>)       = 0",
             "12 1.5 ???( <unfinished ...>",
             "12 1.6 <... munmap resumed>)    = 0"]
    evs = list(tp.parse_lines(lines))
    assert [(e.pid, e.kind, e.name) for e in evs] == [
        (9, tp.KILLED, "SIGKILL"), (10, tp.CALL, tp.UNNAMED), (11, tp.CALL, tp.UNNAMED), (12, tp.CALL, "munmap")]
    assert evs[1].ret is None and evs[2].ret == 0
    assert [e.name for e in tp.parse_lines(lines, order="entry")] == [e.name for e in evs]


def test_a_call_in_progress_at_detach_is_no_event():
    """strace -p ends with ``<detached ...>`` on a call still in progress (seen at the end of
    a --pid trace: the heartbeat's madvise): neither half gives a call."""
    lines = ["10500 1.0 madvise(NULL, 0, 0) = 0",
             "10500 1.1 madvise(NULL, 0, 0 <detached ...>",
             "7 1.2 mmap(NULL, 4096, 0x3, 0x22, -1, 0 <unfinished ...>",
             "7 1.3 <... mmap resumed> <detached ...>"]
    for order in ("line", "entry"):
        evs = list(tp.parse_lines(lines, order=order))
        assert [(e.pid, e.name, e.ret) for e in evs] == [(10500, "madvise", 0)]
