"""The one place a kernel-side child process is started, watched and cleaned up.

Owns ``run_child``: the kernel backend (``opscript.kernel``) and ``measure``
(``opscript.measure``) run their ops in a fresh ``python -m sparsemm.opscript.child
MODULE``, which sets itself to die with its parent (``PR_SET_PDEATHSIG``) before running
``MODULE`` as ``__main__``. The child leads its own process group; whatever ends the run
(its end, a crash, the timeout, an exception or signal in the caller) kills that group
before the child is reaped. Knows nothing of scripts or records.
"""

from __future__ import annotations

import ctypes
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["ChildTimeout", "ChildExit", "run_child", "child_setup", "set_pdeathsig",
           "describe_status", "DEFAULT_TIMEOUT", "default_timeout"]

#: Seconds a child may run (``SPARSEMM_CHILD_TIMEOUT`` overrides it).
DEFAULT_TIMEOUT = 600.0
#: The modules ``run_child`` may start (the child refuses any other).
CHILD_MODULES = ("sparsemm.opscript.kernel", "sparsemm.opscript.measure")
_PARENT_ENV = "SPARSEMM_PARENT_PID"
_PR_SET_PDEATHSIG = 1
_STDERR_KEEP = 64 << 10  # bytes of the child's stderr kept for the error message
_CHUNK = 1 << 16
_QUALIFIED = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=\w+: )")  # "pkg.mod.Error: x" -> "Error: x"


class ChildTimeout(RuntimeError):
    """The child ran longer than its timeout (``seconds``); it and its process group were killed."""

    def __init__(self, seconds: float):
        super().__init__(f"timed out after {seconds:g} s")
        self.seconds = seconds


@dataclass(slots=True)
class ChildExit:
    """How a child ended: ``returncode`` (negative: killed by that signal), its standard
    output (``b""`` when lines went to ``on_line``) and the tail of its standard error."""

    returncode: int
    stdout: bytes
    stderr: str

    def last_error_line(self) -> str:
        """The last line of stderr (an exception's ``Type: message``), or a description of
        the exit status."""
        lines = self.stderr.strip().splitlines()
        if not lines:
            return describe_status(self.returncode)
        return _QUALIFIED.sub("", " ".join(lines[-1].split()))


def default_timeout() -> float:
    """``SPARSEMM_CHILD_TIMEOUT`` in seconds, or ``DEFAULT_TIMEOUT``. ``SettingError`` if bad."""
    return _env_timeout() or DEFAULT_TIMEOUT


def _env_timeout() -> float | None:
    from sparsemm._input import env_seconds

    return env_seconds("SPARSEMM_CHILD_TIMEOUT", None)


def describe_status(returncode: int) -> str:
    """``-11`` -> ``"killed by SIGSEGV"``; ``3`` -> ``"exit status 3"``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def run_child(module: str, payload: bytes, *, timeout: float, on_line=None,
              env: dict[str, str] | None = None) -> ChildExit:
    """Run ``python -m sparsemm.opscript.child MODULE`` with ``payload`` on its stdin.

    Each complete stdout line goes to ``on_line(bytes)`` as it arrives (without the
    newline); without ``on_line`` stdout is returned whole. Raises ``ChildTimeout`` after
    ``timeout`` seconds (or ``SPARSEMM_CHILD_TIMEOUT``, if smaller). ``env`` adds to the child's environment. Whatever happens (the child ends, crashes, times out, ``on_line``
    raises, the caller gets a signal), the child's process group is killed before the
    child is reaped, so nothing it started outlives the call. O(output).
    """
    if module not in CHILD_MODULES:
        raise ValueError(f"unknown child module {module!r}")
    limit = _env_timeout()  # the user's bound on every child, whatever the caller asked
    if limit is not None:
        timeout = min(timeout, limit)
    env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {}), _PARENT_ENV: str(os.getpid())}
    proc = None
    try:  # (a signal between fork and here leaves the child to PR_SET_PDEATHSIG)
        proc = subprocess.Popen([sys.executable, "-m", __name__, module], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                process_group=0, close_fds=True)
        deadline = time.monotonic() + timeout
        out, err = _pump(proc, payload, deadline, timeout, on_line)
        _wait_exited(proc, deadline, timeout)
    finally:
        if proc is not None:
            _reap(proc)
    return ChildExit(proc.returncode, out, err.decode("utf-8", "replace"))


def _pump(proc: subprocess.Popen, payload: bytes, deadline: float, timeout: float, on_line
          ) -> tuple[bytes, bytes]:
    """Write ``payload`` and read stdout/stderr until both end, or the deadline passes."""
    sel = selectors.DefaultSelector()
    todo = memoryview(payload)
    stdin = proc.stdin
    if todo:
        os.set_blocking(stdin.fileno(), False)
        sel.register(stdin, selectors.EVENT_WRITE)
    else:
        stdin.close()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    out = bytearray()
    err = bytearray()
    pending = b""
    open_readers = 2
    try:
        while open_readers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildTimeout(timeout)
            for key, _ in sel.select(remaining):
                if key.fileobj is stdin:
                    try:
                        todo = todo[os.write(stdin.fileno(), todo[:_CHUNK]):]
                    except (BrokenPipeError, BlockingIOError) as exc:
                        if isinstance(exc, BlockingIOError):
                            continue
                        todo = todo[:0]  # the child is gone: its exit status says why
                    if not todo:
                        sel.unregister(stdin)
                        stdin.close()
                    continue
                data = os.read(key.fileobj.fileno(), _CHUNK)
                if not data:
                    sel.unregister(key.fileobj)
                    open_readers -= 1
                    continue
                if key.fileobj is proc.stderr:
                    err += data
                    if len(err) > 2 * _STDERR_KEEP:
                        del err[:-_STDERR_KEEP]
                elif on_line is None:
                    out += data
                else:
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        on_line(line)
        if pending and on_line is not None:
            on_line(pending)  # a last line without its newline (the child died writing it)
    finally:
        sel.close()
    return bytes(out), bytes(err)


def _wait_exited(proc: subprocess.Popen, deadline: float, timeout: float) -> None:
    """Wait (without reaping) until the child has exited: its pipes closed, it is ending."""
    while True:
        if time.monotonic() > deadline:
            raise ChildTimeout(timeout)
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return
        if info is not None:
            return
        time.sleep(0.001)


def _reap(proc: subprocess.Popen) -> None:
    """Kill the child's process group, then reap the child. Signals that would interrupt
    the cleanup (SIGINT, SIGTERM, SIGHUP) wait until it is done."""
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        if proc.returncode is None:
            # The child is alive or a zombie (not yet reaped), so its pid, which is the
            # group's id, cannot have been reused: the group is ours to kill.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------------------------------
# Inside the child.


def set_pdeathsig(expected_parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; if the parent is
    already gone (it is not ``expected_parent``), exit now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def child_setup() -> None:
    """First thing in a child: die with the parent that started it."""
    parent = os.environ.pop(_PARENT_ENV, None)
    set_pdeathsig(int(parent) if parent and parent.isdigit() else None)


def _main() -> None:
    import runpy

    if len(sys.argv) != 2 or sys.argv[1] not in CHILD_MODULES:
        sys.exit(f"usage: python -m {__name__} {{{','.join(CHILD_MODULES)}}}")
    child_setup()
    module = sys.argv[1]
    del sys.argv[1]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main()
