"""Parser for ``strace -f`` output: lines in, one ``Event`` per completed system call or process event.

Owns ``Event``, ``TraceParseError`` and the decoding of argument values (hex, decimal,
``NULL``, symbolic or raw flags, ``-y`` file descriptors, ``clone3`` structs, iovec
arrays). Joins ``<unfinished ...>`` / ``<... NAME resumed>`` halves per pid, follows
``<pid changed to N ...>`` across a multi-threaded execve, and reports signals, exits,
kills and ``superseded by execve``. It knows nothing of the model or of /proc.
"""

from __future__ import annotations

import heapq
import re
import signal as _signal
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from sparsemm import abi

__all__ = ["Event", "TraceParseError", "parse_lines", "parse_file", "split_args", "int_arg",
           "flags_arg", "fd_arg", "iovec_arg", "struct_field", "PROT_NAMES", "MAP_NAMES",
           "MADV_NAMES", "MREMAP_NAMES", "MLOCK_NAMES", "MCL_NAMES", "CLONE_NAMES", "CLONE_VM",
           "CLONE_THREAD", "CLONE_VFORK", "PR_SET_VMA", "SYSCALL_ALIASES", "UNNAMED"]

# Event kinds.
CALL = "call"  # a completed system call (name, args, ret/err)
ENTER = "enter"  # the entry half of an unfinished clone-family or exit_group call
SIGNAL = "signal"  # "--- SIGSEGV {...} ---" (name = the signal)
EXITED = "exited"  # "+++ exited with N +++" (status = N)
KILLED = "killed"  # "+++ killed by SIGKILL +++" (name = the signal)
SUPERSEDED = "superseded"  # "+++ superseded by execve in pid N +++" (status = N)

#: Unknown syscalls as an older strace prints them, by the name this parser gives them.
SYSCALL_ALIASES = {"syscall_0x1ce": "mseal", "syscall_462": "mseal"}
#: The name strace prints (``???(``) for a call whose number it could not read at its entry
#: (a task caught inside a call, a task being killed); its result half may name it.
UNNAMED = "???"

_CLONE_FAMILY = frozenset({"clone", "clone3", "fork", "vfork"})
#: Calls whose unfinished entry half is reported as an ENTER event: a clone's flags are
#: needed before its child's first call; exit_group is where the final map is read.
_ENTER_NAMES = _CLONE_FAMILY | {"exit_group"}


class TraceParseError(ValueError):
    """A line this parser cannot read. ``str()`` is one line: ``SOURCE:LINE: what``."""

    def __init__(self, source: str, lineno: int, reason: str):
        self.source, self.lineno = source, lineno
        self.reason = " ".join(reason.split())
        super().__init__(f"{source}:{lineno}: {self.reason}")


@dataclass(slots=True)
class Event:
    """One completed system call, or one process event, of one task (thread id ``pid``).

    ``lineno`` is the 1-based line that completed it (the ``resumed`` line of a split call):
    the position recorded snapshots refer to. ``ts`` is seconds (``-ttt`` epoch, ``-tt``
    clock time, or the running sum of ``-r`` deltas), None without timestamps. ``args`` are
    the raw argument texts (``end_ts``: when a split call's result was printed); ``ret`` is
    the return value (None for ``?``), ``err`` the errno
    name of a failed call (``"ENOMEM"``), ``status`` an exit status or the pid of a
    superseding execve. ``changed_pid``: an execve line that ended ``<pid changed to N ...>``.
    """

    lineno: int
    pid: int
    ts: float | None
    kind: str
    name: str = ""
    args: list[str] = field(default_factory=list)
    ret: int | None = None
    err: str | None = None
    status: int | None = None
    changed_pid: int | None = None
    end_ts: float | None = None  # when its result was printed (a split call: later than ts)

    @property
    def ok(self) -> bool:
        """The call succeeded (no errno)."""
        return self.err is None


# --- value tables ---------------------------------------------------------------------------

def _names(prefix: str, items) -> dict[str, int]:
    return {prefix + name: int(value) for name, value in items}


PROT_NAMES = {"PROT_NONE": 0, "PROT_READ": abi.PROT_READ, "PROT_WRITE": abi.PROT_WRITE,
              "PROT_EXEC": abi.PROT_EXEC, "PROT_SEM": 0x8, "PROT_GROWSDOWN": abi.PROT_GROWSDOWN,
              "PROT_GROWSUP": abi.PROT_GROWSUP, "PROT_BTI": 0x10, "PROT_MTE": 0x20}
MAP_NAMES = _names("MAP_", ((m.name, m.value) for m in abi.MapFlag))
MAP_NAMES.update({"MAP_ANON": int(abi.MapFlag.ANONYMOUS), "MAP_32BIT": 0x40, "MAP_FILE": 0,
                  "MAP_DROPPABLE": 0x08, "MAP_SHARED_VALIDATE": int(abi.MapFlag.SHARED_VALIDATE)})
MADV_NAMES = _names("MADV_", ((m.name, m.value) for m in abi.Madv))
MREMAP_NAMES = _names("MREMAP_", ((m.name, m.value) for m in abi.MremapFlag))
MLOCK_NAMES = {"MLOCK_ONFAULT": abi.MLOCK_ONFAULT}
MCL_NAMES = {"MCL_CURRENT": abi.MCL_CURRENT, "MCL_FUTURE": abi.MCL_FUTURE, "MCL_ONFAULT": abi.MCL_ONFAULT}

# include/uapi/linux/sched.h
CLONE_VM, CLONE_VFORK, CLONE_THREAD = 0x100, 0x4000, 0x10000
CLONE_NAMES = {
    "CLONE_NEWTIME": 0x80, "CLONE_VM": CLONE_VM, "CLONE_FS": 0x200, "CLONE_FILES": 0x400,
    "CLONE_SIGHAND": 0x800, "CLONE_PIDFD": 0x1000, "CLONE_PTRACE": 0x2000, "CLONE_VFORK": CLONE_VFORK,
    "CLONE_PARENT": 0x8000, "CLONE_THREAD": CLONE_THREAD, "CLONE_NEWNS": 0x20000,
    "CLONE_SYSVSEM": 0x40000, "CLONE_SETTLS": 0x80000, "CLONE_PARENT_SETTID": 0x100000,
    "CLONE_CHILD_CLEARTID": 0x200000, "CLONE_DETACHED": 0x400000, "CLONE_UNTRACED": 0x800000,
    "CLONE_CHILD_SETTID": 0x1000000, "CLONE_NEWCGROUP": 0x2000000, "CLONE_NEWUTS": 0x4000000,
    "CLONE_NEWIPC": 0x8000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000, "CLONE_IO": 0x80000000, "CLONE_CLEAR_SIGHAND": 0x100000000,
    "CLONE_INTO_CGROUP": 0x200000000,
}
CLONE_NAMES.update({s.name: int(s) for s in _signal.Signals})  # the exit signal in the low byte

#: include/uapi/linux/prctl.h: PR_SET_VMA and its PR_SET_VMA_ANON_NAME sub-command.
PR_SET_VMA = 0x53564D41
PR_NAMES = {"PR_SET_VMA": PR_SET_VMA, "PR_SET_VMA_ANON_NAME": 0}


# --- argument text ----------------------------------------------------------------------------

_OPEN = {"(": ")", "[": "]", "{": "}"}
_SLOW_CHARS = re.compile(r'["(\[{<]').search


def split_args(text: str) -> list[str]:
    """Split an argument list at its top-level commas. Brackets, braces, parentheses,
    quoted strings (with backslash escapes) and ``-y`` path annotations (``3</path>``)
    are kept whole. O(len(text))."""
    if not text:
        return []
    if _SLOW_CHARS(text) is None:
        return text.split(", ")
    out: list[str] = []
    depth: list[str] = []
    start = i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "<" and i and text[i - 1].isdigit() and not depth:
            close = text.find(">", i)
            i = n - 1 if close < 0 else close
        elif c in _OPEN:
            depth.append(_OPEN[c])
        elif depth and c == depth[-1]:
            depth.pop()
        elif c == "," and not depth:
            out.append(text[start:i].strip())
            start = i + 1
        i += 1
    out.append(text[start:].strip())
    return out


_COMMENT = re.compile(r"\s*/\*.*?\*/")


def int_arg(text: str) -> int:
    """A numeric argument: ``NULL``, hex, octal, decimal, negative, or ``0x3 /* PROT_... */``
    (``-X verbose``). ValueError otherwise."""
    t = text.strip()
    if "/*" in t:
        t = _COMMENT.sub("", t).strip()
    if t == "NULL":
        return 0
    return int(t, 0) if not (len(t) > 1 and t[0] == "0" and t[1].isdigit()) else int(t, 8)


def flags_arg(text: str, names: dict[str, int]) -> int:
    """A flags argument in raw (``0x22``), symbolic (``MAP_PRIVATE|MAP_ANONYMOUS``) or mixed
    (``0x1200000|SIGCHLD``, ``MAP_PRIVATE|0x40000000``) form. ValueError naming an
    unknown symbol."""
    t = text.strip()
    if "/*" in t:
        t = _COMMENT.sub("", t).strip()
    value = 0
    for tok in t.split("|"):
        tok = tok.strip()
        if not tok:
            raise ValueError(f"empty flag in {text!r}")
        if tok[0].isdigit() or tok[0] == "-":
            value |= int_arg(tok)
        elif tok in names:
            value |= names[tok]
        else:
            raise ValueError(f"unknown flag {tok!r}")
    return value


_FD = re.compile(r"(-?\d+)(?:<(.*)>)?(\s*\(deleted\))?\Z", re.S)


def fd_arg(text: str) -> tuple[int, str | None]:
    """``3</usr/lib/libc.so.6>`` -> ``(3, "/usr/lib/libc.so.6")``; ``-1`` -> ``(-1, None)``.
    A ``(deleted)`` suffix is dropped. Paths keep strace's escapes. ValueError otherwise."""
    m = _FD.match(text.strip())
    if m is None:
        raise ValueError(f"bad file descriptor {text!r}")
    path = m.group(2)
    if path is not None and path.endswith(" (deleted)"):
        path = path[:-10]
    return int(m.group(1)), path


_IOV = re.compile(r"\{\s*iov_base=([^,}]+),\s*iov_len=([^}]+)\}")


def iovec_arg(text: str) -> list[tuple[int, int]]:
    """``[{iov_base=0x7f.., iov_len=4096}, ...]`` -> ``[(base, len), ...]``. An elided
    array (``0x7ffd...`` or ``[...]``) gives []: its ranges are unknown."""
    return [(int_arg(b), int_arg(n)) for b, n in _IOV.findall(text)]


def struct_field(text: str, name: str) -> str | None:
    """The raw text of ``name=`` in a printed struct (``{flags=0x3d0f00, ...}``), or None."""
    m = re.search(r"[{,]\s*" + re.escape(name) + r"=([^,}]*)", text)
    return m.group(1).strip() if m else None


# --- lines --------------------------------------------------------------------------------------

# [pid N] / N prefix, then an optional timestamp (-ttt epoch, -tt/-t clock time, -r delta).
_HEAD = re.compile(r"(?:\[pid\s+(\d+)\]\s*|(\d+)\s+)?\s*(?:(\d+\.\d+|\d\d:\d\d:\d\d(?:\.\d+)?)\s+)?")
_RESUMED = re.compile(r"<\.\.\. ([\w?]+) resumed>\s?")
_CALL = re.compile(r"([a-z_][\w]*|\?\?\?)\(")  # "???": a call strace could not name
_RET = re.compile(r"\s*(0x[0-9a-f]+|-?\d+|\?)(?:\s+([A-Z][A-Z0-9_]+)(?:\s+\([^)]*\))?)?")
_UNFINISHED = " <unfinished ...>"
_DETACHED = " <detached ...>"  # strace detached (``-p`` ended) while the call was in progress
_PID_CHANGED = re.compile(r"\s*<pid changed to (\d+) \.\.\.>\s*\Z")
_EXITED = re.compile(r"\+\+\+ exited with (-?\d+) \+\+\+")
_KILLED = re.compile(r"\+\+\+ killed by (SIG\w+)")
_SUPERSEDED = re.compile(r"\+\+\+ superseded by execve in pid (\d+) \+\+\+")
_SIGNAL = re.compile(r"--- (?:stopped by )?(SIG\w+|\w+)")


def _clock(text: str) -> float:
    if ":" not in text:
        return float(text)
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


class _Parser:
    """The state across lines: per-pid unfinished calls, and how timestamps read."""

    __slots__ = ("source", "default_pid", "pending", "relative", "clock", "last_clock")

    def __init__(self, source: str, default_pid: int):
        self.source = source
        self.default_pid = default_pid
        self.pending: dict[int, tuple[str, str, int | None, float | None]] = {}  # pid -> (name, text, changed, entry ts)
        self.relative: bool | None = None  # -r deltas (decided at the first timestamp)
        self.clock = 0.0
        self.last_clock: float | None = None

    def fail(self, lineno: int, reason: str):
        raise TraceParseError(self.source, lineno, reason)

    def timestamp(self, text: str | None) -> float | None:
        if text is None:
            return None
        value = _clock(text)
        if self.relative is None:  # -r prints small deltas; -ttt epoch seconds; -tt clock time
            self.relative = ":" not in text and value < 1e6
        if self.relative:
            self.clock += value
            return self.clock
        if ":" in text and self.last_clock is not None and value < self.last_clock - 43200:
            value += 86400  # -tt crossed midnight
        self.last_clock = value
        return value

    def line(self, lineno: int, line: str) -> Event | None:
        line = line.rstrip("\n")
        if not line.strip():
            return None
        m = _HEAD.match(line)
        pid = int(m.group(1) or m.group(2) or self.default_pid)
        ts = self.timestamp(m.group(3))
        body = line[m.end():]
        if body.endswith(_DETACHED):  # its result is not in the trace: no call, no event
            self.pending.pop(pid, None)
            return None
        c = body[:1]
        if c == "<":
            r = _RESUMED.match(body)
            if r is None:
                self.fail(lineno, f"cannot read {body[:60]!r}")
            name = r.group(1)
            held = self.pending.pop(pid, None)
            if held is None or (held[0] != name and "???" not in (name, held[0])):
                return None  # the entry half predates the trace (attach): nothing to complete
            if held[0] == UNNAMED and name != UNNAMED:  # the result half names the call
                held = (name, *held[1:])
            entry_ts = held[3] if held[3] is not None else ts  # a joined call is placed at its entry
            event = self.finish(lineno, pid, entry_ts, held[0], held[1] + body[r.end():], held[2])
            event.end_ts = ts
            return event
        if c == "+":
            if (x := _EXITED.match(body)) is not None:
                self.pending.pop(pid, None)
                return Event(lineno, pid, ts, EXITED, status=int(x.group(1)))
            if (x := _KILLED.match(body)) is not None:
                self.pending.pop(pid, None)
                return Event(lineno, pid, ts, KILLED, name=x.group(1))
            if (x := _SUPERSEDED.match(body)) is not None:
                return Event(lineno, pid, ts, SUPERSEDED, status=int(x.group(1)))
            self.fail(lineno, f"cannot read process event {body[:60]!r}")
        if c == "-" and body.startswith("--- "):
            x = _SIGNAL.match(body)
            return Event(lineno, pid, ts, SIGNAL, name=x.group(1) if x else "?")
        if body.startswith("strace: ") or body.startswith("????"):
            return None  # strace's own messages, when stderr was captured with the trace
        x = _CALL.match(body)
        if x is None:
            self.fail(lineno, f"cannot read {body[:60]!r}: not a system call, signal or exit")
        name = SYSCALL_ALIASES.get(x.group(1), x.group(1))
        rest = body[x.end():]
        if rest.endswith(_UNFINISHED):
            text = rest[: -len(_UNFINISHED)]
            changed = None
            pc = _PID_CHANGED.search(text)
            if pc is not None:
                changed = int(pc.group(1))
                text = text[: pc.start()]
            if changed is not None:
                self.pending[changed] = (name, text, changed, ts)  # the execve completes as the leader
            else:
                self.pending[pid] = (name, text, None, ts)
            if name in _ENTER_NAMES:
                return Event(lineno, pid, ts, ENTER, name=name, args=split_args(text))
            return None
        pc = _PID_CHANGED.search(rest)
        if pc is not None:  # "execve(...) <pid changed to N ...>" then the leader's resumed line
            self.pending[int(pc.group(1))] = (name, rest[: pc.start()], int(pc.group(1)), ts)
            return None
        return self.finish(lineno, pid, ts, name, rest, None)

    def finish(self, lineno: int, pid: int, ts, name: str, text: str, changed) -> Event:
        eq = text.rfind(" = ")  # strace pads short calls: "brk(NULL)       = 0x55..."
        close = len(text[:eq].rstrip()) - 1 if eq >= 0 else -1
        if close < 0 or text[close] != ")":
            if text.rstrip().endswith(")"):  # e.g. "exit_group(0)" cut short at the end of a trace
                return Event(lineno, pid, ts, CALL, name=name, args=split_args(text.rstrip()[:-1]))
            self.fail(lineno, f"{name}: no return value in {text[-60:]!r}")
        args = split_args(text[:close])
        r = _RET.match(text, eq + 3)
        if r is None:
            self.fail(lineno, f"{name}: cannot read the return value {text[eq + 3:][:40]!r}")
        raw, err = r.group(1), r.group(2)
        ret = None if raw == "?" else int(raw, 0)
        if err is None and ret is not None and ret < 0 and name != "brk":
            err = "E?"
        if err in ("DELAYED", "INJECTED"):
            err = None
        return Event(lineno, pid, ts, CALL, name=name, args=args, ret=ret, err=err, changed_pid=changed)


def parse_lines(lines: Iterable[str], source: str = "<trace>", default_pid: int = 0, *,
                order: str = "line", barriers=frozenset()) -> Iterator[Event]:
    """Events from strace output lines. ``default_pid`` is the pid of lines without one (a
    trace made without ``-f``, or strace's stderr output for its first process). Raises
    ``TraceParseError`` on a line that is neither a system call, a signal, a process event
    nor one of strace's own messages. O(length of the text).

    ``order="line"``: as the lines complete them. ``order="entry"``: by entry time (a call's
    ``ts`` is when it was entered; strace prints a split call's result only when it is
    done, after calls of other threads that began later): an event is held back until no
    call still in flight entered before it. Memory O(calls in flight). ``barriers``: line
    numbers where the process's map was read (entry order only): the event of such a line
    comes after every call completed on an earlier line and before every call still in
    flight there, whatever their entry times (those had not been applied when it was read:
    reading /proc/PID/maps holds the mmap lock they wait for)."""
    if order not in ("line", "entry"):
        raise ValueError(f"order {order!r}: want 'line' or 'entry'")
    parser = _Parser(source, default_pid)
    carry = ""
    held: list = []  # heap of (ts, lineno, event)
    for lineno, line in enumerate(lines, 1):
        if carry:  # the rest of a line strace's own message cut in two (stderr output)
            line, carry = carry + line.lstrip(" "), ""
        cut = line.find("strace: Process ")
        if cut > 0:
            carry = line[:cut]
            continue
        event = parser.line(lineno, line)
        if order == "line" or (event is not None and event.ts is None and not held):
            if event is not None:
                yield event
            continue
        if event is not None and lineno in barriers:
            while held:
                yield heapq.heappop(held)[2]
            yield event
            continue
        if event is not None:
            heapq.heappush(held, (event.ts if event.ts is not None else float("-inf"), lineno, event))
        oldest = min((p[3] for p in parser.pending.values() if p[3] is not None), default=None)
        while held and (oldest is None or held[0][0] <= oldest):
            yield heapq.heappop(held)[2]
    while held:
        yield heapq.heappop(held)[2]


def parse_file(path, default_pid: int = 0, *, order: str = "line", barriers=frozenset()) -> Iterator[Event]:
    """``parse_lines`` over a file (read line by line, never whole)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        yield from parse_lines(f, str(path), default_pid, order=order, barriers=barriers)
