"""Record a real program's memory-management system calls with Debian's ``strace``, and its maps at the moments that matter.

Owns the strace command line, the heartbeat tracee, the holds (strace's delay injection
stops a task at ``execve`` exit and at ``exit_group`` entry while this module reads its
``/proc/PID/maps``), attaching to a running process (``--pid``), and the saved
``Recording``. It parses only what it needs to act (``parse.py``); replaying is ``replay.py``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparsemm import abi
from sparsemm.trace import parse as tp

__all__ = ["TRACED_SYSCALLS", "Snapshot", "Recording", "StraceMissing", "RecordError", "find_strace",
           "strace_command", "record_command", "record_pid", "load_recording", "INSTALL_HINT"]

#: The system calls recorded: every one that changes an address space, plus the process
#: events that create, replace or end one. ``prctl`` for PR_SET_VMA (anon names split VMAs).
TRACED_SYSCALLS = ("mmap", "munmap", "mprotect", "pkey_mprotect", "madvise", "mremap", "brk", "mlock",
                   "mlock2", "munlock", "mlockall", "munlockall", "process_madvise", "mseal", "shmat",
                   "shmdt", "prctl", "clone", "clone3", "fork", "vfork", "execve", "execveat", "exit",
                   "exit_group")

INSTALL_HINT = ("strace is not installed; sparsemm trace records system calls with it: "
                "install it with 'apt-get install strace' (Debian, Ubuntu), "
                "'dnf install strace' (Fedora) or your system's package manager")

_RECORDING = "recording.json"
_LOG = "strace.log"
_SCHEMA = "sparsemm.trace-recording/1"
_HEARTBEAT_PERIOD = 0.02  # seconds between the heartbeat's system calls
#: Seconds strace gets to detach (``--pid``: after its SIGINT) before it is killed; a killed
#: tracer's tracees are detached by the kernel, and the process is continued in any case.
_DETACH_GRACE = 30.0
# x86-64 syscall numbers a held task shows in /proc/TID/syscall.
_NR = {"execve": 59, "execveat": 322, "exit_group": 231}

_HEARTBEAT = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL when sparsemm goes
while True:
    libc.syscall(28, 0, 0, 0)  # madvise(NULL, 0, MADV_NORMAL): one traced call, no effect
    time.sleep(%f)
    if os.getppid() == 1:
        sys.exit(0)
""" % _HEARTBEAT_PERIOD


class StraceMissing(RuntimeError):
    """strace is not on PATH. ``str()`` says how to install it."""


class RecordError(RuntimeError):
    """Recording could not start or finish (bad pid, strace failed). One-line ``str()``."""


@dataclass(slots=True)
class Snapshot:
    """A process's map read while one of its tasks was held by strace (or SIGSTOP).

    ``lineno`` is the trace line of the event it belongs to (the execve that returned, the
    exit_group that was entered; 0 for ``attach``, the last line read for ``detach``).
    ``held`` says the task did not run between the checks around the read (same syscall
    shown in /proc/TID/syscall, same context-switch counts): the map is the state at that
    line. ``start_brk`` is /proc/PID/stat field 47 (exec and attach snapshots).
    """

    pid: int  # thread-group id
    tid: int  # the held task
    lineno: int
    kind: str  # "exec", "exit", "attach", "detach"
    maps: str
    smaps: str | None = None
    start_brk: int | None = None
    held: bool = True
    note: str = ""
    taken_at: float = 0.0  # time.time()
    comm: str = ""
    cmdline: list[str] = field(default_factory=list)
    tids: list[int] = field(default_factory=list)  # attach: the tasks of the process
    #: the guard-marker runs ``[start, end)`` in bytes read with the map (page tables, through
    #: ``native.guards``); None when they could not be read (the reason in ``note``)
    guards: list[list[int]] | None = None


@dataclass(slots=True)
class Recording:
    """A recorded run: the strace log, the snapshots and how they were taken."""

    directory: str
    mode: str  # "command" or "pid"
    command: list[str]
    root_pid: int
    heartbeat_pid: int
    snapshots: list[Snapshot]
    max_map_count: int
    kernel: str
    strace_version: str
    hold_seconds: float
    started_at: float
    duration_s: float
    lines: int
    untraced: list[str] = field(default_factory=list)  # syscalls this strace cannot name
    notes: list[str] = field(default_factory=list)
    exit_status: int | None = None

    @property
    def log(self) -> Path:
        return Path(self.directory) / _LOG

    def save(self) -> None:
        doc = {"schema": _SCHEMA, **{k: v for k, v in asdict(self).items() if k != "directory"}}
        (Path(self.directory) / _RECORDING).write_text(json.dumps(doc), encoding="utf-8")


def load_recording(directory) -> Recording:
    """A recording saved by ``sparsemm trace --save DIR``. ValueError (one line) if DIR holds none."""
    d = Path(directory)
    meta = d / _RECORDING
    if not meta.is_file() or not (d / _LOG).is_file():
        raise ValueError(f"{directory}: not a trace recording (want {_RECORDING} and {_LOG} in it)")
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta}: unreadable ({exc})") from None
    if doc.get("schema") != _SCHEMA:
        raise ValueError(f"{meta}: schema {doc.get('schema')!r}, want {_SCHEMA!r}")
    doc.pop("schema")
    try:
        doc["snapshots"] = [Snapshot(**s) for s in doc["snapshots"]]
        return Recording(directory=str(d), **doc)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"{meta}: malformed ({exc})") from None


# --- strace ----------------------------------------------------------------------------------

def find_strace() -> str:
    """The strace executable, or StraceMissing with the install hint."""
    path = shutil.which("strace")
    if path is None:
        raise StraceMissing(INSTALL_HINT)
    return path


def _strace_version(strace: str) -> str:
    try:
        out = subprocess.run([strace, "-V"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.split("version")[-1].strip() or first or "unknown"


def _known_syscalls(strace: str) -> tuple[list[str], list[str]]:
    """(names this strace accepts, names it does not) among TRACED_SYSCALLS. An older strace
    (Debian 12 has 6.1) does not know mseal; it cannot be traced by name there."""
    known, unknown = [], []
    for name in TRACED_SYSCALLS:
        try:
            rc = subprocess.run([strace, "-e", f"trace={name}", "-o", os.devnull, "true"],
                                capture_output=True, timeout=10).returncode
        except (OSError, subprocess.SubprocessError):
            rc = 1
        (known if rc == 0 else unknown).append(name)
    return known, unknown


def strace_command(strace: str, syscalls, out: str, hold_us: int, *, attach: list[int],
                   seccomp: bool) -> list[str]:
    """The strace argv: follow forks, exact numbers (``-X raw``), epoch timestamps, file
    paths for descriptors (``-y``), and the two holds (delay injection) that let this
    module read a task's maps at execve exit and exit_group entry."""
    cmd = [strace, "-f", "-X", "raw", "-ttt", "-y", "-s", "256", "-e", "trace=" + ",".join(syscalls),
           "-e", f"inject=execve,execveat:delay_exit={hold_us}",
           "-e", f"inject=exit_group:delay_enter={hold_us}", "-o", out]
    if seccomp:
        cmd.insert(2, "--seccomp-bpf")
    for pid in attach:
        cmd += ["-p", str(pid)]
    return cmd


# --- /proc ---------------------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rfind(")") + 2:].split()  # fields 3.. (comm may hold spaces)


def _task_state(tid: int) -> tuple[str | None, str | None]:
    """(first word of /proc/TID/syscall, 'voluntary/nonvoluntary' switch counts)."""
    sc = _read(f"/proc/{tid}/syscall")
    st = _read(f"/proc/{tid}/status")
    switches = None
    if st is not None:
        switches = "/".join(line.split()[1] for line in st.splitlines()
                            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))
    return (sc.split()[0] if sc else None), switches


def _tgid(tid: int) -> int | None:
    st = _read(f"/proc/{tid}/status")
    if st is None:
        return None
    for line in st.splitlines():
        if line.startswith("Tgid:"):
            return int(line.split()[1])
    return None


def _cmdline(pid: int) -> list[str]:
    raw = _read(f"/proc/{pid}/cmdline")
    return [a for a in raw.split("\0") if a] if raw else []


def take_snapshot(tid: int, lineno: int, kind: str, expect_nr: int | None, *, smaps: bool) -> Snapshot | None:
    """Read the maps of the process of ``tid``, checking around the read that the task stayed
    held (in system call ``expect_nr``). None when the process is gone or has no map left."""
    pid = _tgid(tid) or tid
    before = _task_state(tid)
    maps = _read(f"/proc/{pid}/maps")
    if not maps:
        return None  # gone, or already exiting (a fatal signal won the race: its mm is released)
    sm = _read(f"/proc/{pid}/smaps") if smaps else None
    fields = _stat_fields(pid)
    guards, why = _marker_runs(pid, maps)
    after = _task_state(tid)
    held = before == after and before[0] is not None and (
        expect_nr is None or before[0] == str(expect_nr))
    note = "" if held else (f"task {tid} was not held through the read (syscall {before[0]} -> {after[0]}, "
                            f"context switches {before[1]} -> {after[1]})")
    if why:
        note = (note + "; " if note else "") + why
    start_brk = int(fields[44]) if fields and len(fields) > 44 else None
    comm = (_read(f"/proc/{pid}/comm") or "").strip()
    return Snapshot(pid=pid, tid=tid, lineno=lineno, kind=kind, maps=maps, smaps=sm, start_brk=start_brk,
                    held=held, note=note, taken_at=time.time(), comm=comm, cmdline=_cmdline(pid),
                    guards=guards)


def _marker_runs(pid: int, maps: str) -> tuple[list[list[int]] | None, str]:
    """The guard-marker runs of every VMA of ``maps`` (PAGEMAP_SCAN skips unpopulated page
    tables, so asking for all of them is cheap), merged where they touch; or (None, why)."""
    from sparsemm.native import guards as native_guards

    ranges = []
    for line in maps.splitlines():
        head = line.split(" ", 1)[0]
        start, _, end = head.partition("-")
        try:
            lo, hi = int(start, 16), int(end, 16)
        except ValueError:
            continue
        if hi <= abi.TASK_SIZE:
            ranges.append((lo, hi))
    try:
        with native_guards.PagemapReader(pid, native_guards.guard_method()) as reader:
            runs = reader.runs(ranges)
    except (OSError, RuntimeError, ValueError) as exc:
        return None, f"guard markers not read ({' '.join(str(exc).split())})"
    merged: list[list[int]] = []
    for s, e in runs:
        if merged and merged[-1][1] == s:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return merged, ""


# --- the recording loop ---------------------------------------------------------------------------

class _Session:
    """One strace run: reads its output from a FIFO as it comes, writes the log, takes the
    snapshots the holds allow, and knows when the traced processes are all gone."""

    def __init__(self, directory: Path, hold: float, progress, root_pid: int | None):
        self.directory = directory
        self.hold = hold
        self.progress = progress
        self.fifo = str(directory / "strace.fifo")
        os.mkfifo(self.fifo, 0o600)
        self.log = open(directory / _LOG, "w", encoding="utf-8", errors="surrogateescape")
        self.parser = tp._Parser(str(directory / _LOG), 0)
        self.snapshots: list[Snapshot] = []
        self.lines = 0
        self.live: set[int] = set()
        self.seen_root = False
        self.root_pid = root_pid
        self.heartbeat: subprocess.Popen | None = None
        self.strace: subprocess.Popen | None = None
        self.stderr_path = directory / "strace.stderr"
        self.notes: list[str] = []
        self.last_progress = time.monotonic()
        self.started = time.monotonic()
        self.fd: int | None = None
        self.buf = b""
        self.last_real = time.monotonic()  # when strace last wrote a line that is not the heartbeat's

    def start_heartbeat(self) -> int:
        self.heartbeat = subprocess.Popen([sys.executable, "-c", _HEARTBEAT], stdin=subprocess.DEVNULL)
        return self.heartbeat.pid

    def start_strace(self, argv: list[str]) -> None:
        with open(self.stderr_path, "w") as err:
            self.strace = subprocess.Popen(argv, stderr=err, preexec_fn=_term_with_parent)

    def stop_heartbeat(self) -> None:
        if self.heartbeat is not None and self.heartbeat.poll() is None:
            self.heartbeat.kill()
            self.heartbeat.wait()

    def strace_error(self) -> str:
        text = _read(str(self.stderr_path)) or ""
        lines = [ln for ln in text.splitlines() if ln.startswith("strace:") and "attached" not in ln
                 and "detached" not in ln]
        return lines[-1] if lines else f"strace exited with status {self.strace.returncode}"

    def handle(self, line: str) -> None:
        self.lines += 1
        self.log.write(line)
        try:
            event = self.parser.line(self.lines, line)
        except tp.TraceParseError:
            return  # replay reports it, with its line
        if event is None:
            return
        hb = self.heartbeat.pid if self.heartbeat else -1
        if event.pid == hb:
            return
        self.last_real = time.monotonic()
        kind, name = event.kind, event.name
        if kind == tp.CALL and name in ("execve", "execveat") and event.ok:
            pid = event.pid
            self.live.add(pid)
            if not self.seen_root and self.root_pid is None:
                self.seen_root = True  # strace's own exec of the launcher: it cannot be held
                return
            snap = take_snapshot(pid, self.lines, "exec", _NR[name], smaps=True)
            if snap is not None:
                self.snapshots.append(snap)
        elif kind == tp.ENTER and name == "exit_group":
            snap = take_snapshot(event.pid, self.lines, "exit", _NR["exit_group"], smaps=False)
            if snap is not None:
                self.snapshots.append(snap)
        elif kind == tp.CALL and name in ("clone", "clone3", "fork", "vfork") and event.ret and event.ret > 0:
            self.live.add(event.ret)
        elif kind in (tp.EXITED, tp.KILLED):
            self.live.discard(event.pid)
        elif kind == tp.SUPERSEDED:
            self.live.discard(event.status)
            self.live.add(event.pid)
        if self.progress and time.monotonic() - self.last_progress > 2:
            self.last_progress = time.monotonic()
            self.progress(f"recording: {self.lines:,} lines, {len(self.live)} live tasks, "
                          f"{time.monotonic() - self.started:.0f} s")

    def open(self) -> None:
        self.fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.buf = b""

    def pump(self, timeout: float) -> bool:
        """Read and handle what strace wrote within ``timeout`` seconds; False once strace
        has exited and everything it wrote is handled."""
        r, _, _ = select.select([self.fd], [], [], timeout)
        chunk = _read_nonblock(self.fd) if r else b""
        if chunk:
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            for raw in lines:
                self.handle(raw.decode("utf-8", "surrogateescape") + "\n")
            return True
        if self.strace.poll() is None:
            if r:
                time.sleep(0.01)  # no writer yet (strace starting): select keeps answering
            return True
        while chunk := _read_nonblock(self.fd):  # strace is gone: what is left
            self.buf += chunk
        for raw in self.buf.split(b"\n"):
            if raw:
                self.handle(raw.decode("utf-8", "surrogateescape") + "\n")
        self.buf = b""
        return False

    def drain(self, idle: float = 0.2, limit: float = 5.0) -> None:
        """Handle output until strace has written nothing but heartbeats for ``idle`` seconds
        (at most ``limit`` seconds)."""
        start = self.last_real = time.monotonic()
        while time.monotonic() - self.last_real < idle and time.monotonic() - start < limit:
            if not self.pump(0.02):
                return

    def run(self, stop_when_idle: bool, deadline: float | None = None, on_stop=None,
            give_up: float | None = None) -> None:
        """Read until strace exits. ``stop_when_idle``: once every traced task of the command
        has exited, end the heartbeat so strace can finish. ``deadline``/``on_stop``: at that
        monotonic time call ``on_stop()`` (pid mode: stop, snapshot, detach). ``give_up``
        (set ``_DETACH_GRACE`` after ``on_stop`` too): at that time kill a strace still
        running, with a note, so a detach that never ends cannot hang the command."""
        stopped = False
        while self.pump(0.05):
            if stop_when_idle and self.seen_root and not self.live:
                self.stop_heartbeat()
            if not stopped and deadline is not None and time.monotonic() >= deadline:
                stopped = True
                on_stop()
                give_up = time.monotonic() + _DETACH_GRACE if give_up is None else give_up
            if give_up is not None and time.monotonic() >= give_up and self.strace.poll() is None:
                self.notes.append(f"strace had not detached {_DETACH_GRACE:.0f} s after it was told to: "
                                  "killed (the trace may end early)")
                self.strace.kill()
                give_up = None
        self.log.flush()

    def close(self) -> None:
        self.stop_heartbeat()
        if self.strace is not None and self.strace.poll() is None:
            self.strace.terminate()
            try:
                self.strace.wait(5)
            except subprocess.TimeoutExpired:
                self.strace.kill()
                self.strace.wait()
        self.log.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.unlink(self.fifo)
        except OSError:
            pass


def _term_with_parent() -> None:
    """In strace's child before exec: SIGTERM when sparsemm dies, so strace detaches its
    tracees (they run on untraced) instead of holding them."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _read_nonblock(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def _kernel() -> str:
    return os.uname().release


def _max_map_count() -> int:
    text = _read("/proc/sys/vm/max_map_count")
    return int(text) if text and text.strip().isdigit() else 65530


def record_command(argv: list[str], directory: Path, *, hold: float = 0.25, progress=None) -> Recording:
    """Run ``argv`` under strace, following every thread and child; return the Recording.

    The command is started through ``env`` so that its own ``execve`` is a traced one that
    strace can hold (strace's first exec of its child cannot be delayed): while it is held
    at the exit of that execve, the new image's maps are read. Each ``exit_group`` is held
    at entry for the same purpose (the final count). A heartbeat process, attached with
    ``-p``, makes strace end a pending ``exit_group(... <unfinished ...>`` line within
    ``_HEARTBEAT_PERIOD`` so that the hold is seen while it lasts.
    """
    strace = find_strace()
    if not argv:
        raise RecordError("no command given (sparsemm trace [options] -- CMD [ARGS])")
    exe = shutil.which(argv[0])
    if exe is None:
        raise RecordError(f"{argv[0]}: command not found")
    env = shutil.which("env") or "/usr/bin/env"
    known, unknown = _known_syscalls(strace)
    session = _Session(directory, hold, progress, None)
    started = time.time()
    try:
        hb = session.start_heartbeat()
        cmd = strace_command(strace, known, session.fifo, int(hold * 1e6), attach=[hb], seccomp=True)
        session.start_strace(cmd + ["--", env, "--", exe, *argv[1:]])
        session.open()
        try:
            session.run(stop_when_idle=True)
        except KeyboardInterrupt:
            session.notes.append("interrupted (Ctrl-C): the recording ends early")
        session.close()
        rc = session.strace.returncode
        root = next((s.pid for s in session.snapshots if s.kind == "exec"), 0)
        if not session.lines or (rc and not root):
            raise RecordError(session.strace_error())
    finally:
        session.close()
    rec = Recording(directory=str(directory), mode="command", command=[exe, *argv[1:]], root_pid=root,
                    heartbeat_pid=hb, snapshots=session.snapshots, max_map_count=_max_map_count(),
                    kernel=_kernel(), strace_version=_strace_version(strace), hold_seconds=hold,
                    started_at=started, duration_s=time.time() - started, lines=session.lines,
                    untraced=unknown, notes=session.notes, exit_status=rc)
    rec.save()
    return rec


# --- attach ----------------------------------------------------------------------------------------

def _tids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def _all_stopped(pid: int) -> bool:
    for tid in _tids(pid):
        f = _stat_fields(tid)
        if f is None or f[0] not in ("T", "t"):
            return False
    return True


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def _traced(pid: int, tracer: int) -> bool:
    for tid in _tids(pid):
        st = _read(f"/proc/{pid}/task/{tid}/status") or ""
        if f"TracerPid:\t{tracer}" not in st:
            return False
    return True


def record_pid(pid: int, directory: Path, *, duration: float | None, hold: float = 0.25,
               progress=None) -> Recording:
    """Attach strace to a running process (all its threads, and children it starts) for
    ``duration`` seconds (None: until it exits or Ctrl-C).

    The initial map is read with the process stopped by SIGSTOP, before strace attaches; it
    is continued (SIGCONT) once strace traces every thread, so no call is lost between the
    read and the trace. At the end the process is stopped again, its map read (the final
    count), strace detached and the process continued. The process sees the stop and its
    parent may be told of it (SIGCHLD), as for any SIGSTOP.
    """
    strace = find_strace()
    if not os.path.isdir(f"/proc/{pid}"):
        raise RecordError(f"pid {pid}: no such process")
    if pid == os.getpid():
        raise RecordError(f"pid {pid}: that is sparsemm itself")
    if _read(f"/proc/{pid}/maps") is None or not os.access(f"/proc/{pid}/mem", os.R_OK):
        raise RecordError(f"pid {pid}: permission denied (tracing needs ptrace access: the same user "
                          "and kernel.yama.ptrace_scope 0, or root)")
    tracer = (_read(f"/proc/{pid}/status") or "").split("TracerPid:\t")[-1].split()[0]
    if tracer not in ("", "0"):
        raise RecordError(f"pid {pid}: already traced by pid {tracer} (one tracer at a time)")
    known, unknown = _known_syscalls(strace)
    session = _Session(directory, hold, progress, pid)
    started = time.time()
    stopped = False  # we stopped the process and have not continued it yet

    def stop() -> None:
        nonlocal stopped
        stopped = True
        os.kill(pid, signal.SIGSTOP)

    def cont() -> None:
        nonlocal stopped
        if stopped and os.path.isdir(f"/proc/{pid}"):
            os.kill(pid, signal.SIGCONT)
        stopped = False

    def stop_and_measure() -> None:
        if not os.path.isdir(f"/proc/{pid}"):
            return
        stop()
        _wait(lambda: _all_stopped(pid), 5)
        session.drain()
        snap = take_snapshot(pid, session.lines, "detach", None, smaps=False)
        if snap is not None:
            snap.held = _all_stopped(pid)
            snap.note = "" if snap.held else "the process was not stopped through the read"
            session.snapshots.append(snap)
        session.strace.send_signal(signal.SIGINT)  # strace detaches on SIGINT
        session.stop_heartbeat()

    hb = -1
    try:
        stop()
        if not _wait(lambda: _all_stopped(pid), 5):
            raise RecordError(f"pid {pid}: did not stop within 5 s of SIGSTOP")
        tids = _tids(pid)
        snap = take_snapshot(pid, 0, "attach", None, smaps=True)
        if snap is None:
            raise RecordError(f"pid {pid}: exited")
        snap.tids = tids
        session.snapshots.append(snap)
        session.live.update(tids)
        session.seen_root = True
        hb = session.start_heartbeat()
        cmd = strace_command(strace, known, session.fifo, int(hold * 1e6), attach=[pid, hb], seccomp=False)
        session.start_strace(cmd)
        session.open()
        if not _wait(lambda: _traced(pid, session.strace.pid) or session.strace.poll() is not None, 10):
            raise RecordError(f"pid {pid}: strace did not attach within 10 s")
        cont()
        if session.strace.poll() is not None:
            raise RecordError(session.strace_error())
        deadline = time.monotonic() + duration if duration is not None else None
        try:
            session.run(stop_when_idle=True, deadline=deadline, on_stop=stop_and_measure)
        except KeyboardInterrupt:
            session.notes.append("interrupted (Ctrl-C)")
            stop_and_measure()
            session.run(stop_when_idle=True, give_up=time.monotonic() + _DETACH_GRACE)
    finally:
        session.close()  # strace detaches (SIGTERM) if it still runs
        cont()  # never leave the process stopped, whatever happened
    rec = Recording(directory=str(directory), mode="pid", command=_cmdline(pid) or snap.cmdline, root_pid=pid,
                    heartbeat_pid=hb, snapshots=session.snapshots, max_map_count=_max_map_count(),
                    kernel=_kernel(), strace_version=_strace_version(strace), hold_seconds=hold,
                    started_at=started, duration_s=time.time() - started, lines=session.lines,
                    untraced=unknown, notes=session.notes, exit_status=None)
    rec.save()
    return rec


def new_directory(save: str | None) -> tuple[Path, bool]:
    """The directory to record into: ``save`` (created, must be empty) or a temporary one
    (the bool says it is temporary)."""
    if save is None:
        return Path(tempfile.mkdtemp(prefix="sparsemm-trace-")), True
    d = Path(save)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise RecordError(f"--save {save}: exists and is not an empty directory")
    d.mkdir(parents=True, exist_ok=True)
    return d, False
