"""Run test code in a forked child and watch it: a crash is a signal, a hang a timeout.

The native tests use it wherever a bug would take the interpreter down (a
SIGSEGV, a deadlock): the parent survives to report it, and never waits forever.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import signal
import time
import traceback
from dataclasses import dataclass


@dataclass(slots=True)
class ChildResult:
    status: int | None  # raw wait status; None when the child hung and was killed
    output: bytes  # what the child wrote to its report pipe

    @property
    def hung(self) -> bool:
        return self.status is None

    @property
    def signal(self) -> int | None:
        if self.status is not None and os.WIFSIGNALED(self.status):
            return os.WTERMSIG(self.status)
        return None

    @property
    def exit_code(self) -> int | None:
        if self.status is not None and os.WIFEXITED(self.status):
            return os.WEXITSTATUS(self.status)
        return None

    def describe(self) -> str:
        if self.hung:
            what = "hung (killed after the timeout)"
        elif self.signal is not None:
            what = f"died of signal {signal.Signals(self.signal).name}"
        else:
            what = f"exited {self.exit_code}"
        tail = self.output.decode(errors="replace")[-2000:]
        return f"child {what}; its report ends with:\n{tail}"


def run_in_child(fn, timeout: float) -> ChildResult:
    """Fork; in the child call ``fn(report)`` where ``report(text)`` writes to a pipe
    the parent reads. Exit status 0 if ``fn`` returns None or 0, its int otherwise,
    99 on an exception (traceback reported). Kills the child after ``timeout`` s."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        rc = 0
        try:
            os.close(rfd)
            faulthandler.disable()
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            signal.signal(signal.SIGBUS, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

            def report(text: str) -> None:
                data = (text + "\n").encode(errors="replace")
                while data:
                    data = data[os.write(wfd, data):]

            rc = fn(report) or 0
        except BaseException:
            try:
                os.write(wfd, traceback.format_exc().encode(errors="replace"))
            except BaseException:
                pass
            rc = 99
        os._exit(rc)
    os.close(wfd)
    os.set_blocking(rfd, False)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    status = None
    try:
        while True:
            try:
                while chunk := os.read(rfd, 65536):
                    chunks.append(chunk)
            except BlockingIOError:
                pass
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        try:
            while chunk := os.read(rfd, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass
    finally:
        os.close(rfd)
    return ChildResult(status, b"".join(chunks))


def in_child_with_timeout(fn, timeout: float) -> int | None:
    """``fn()`` in a child: its raw wait status, or None if it hung past ``timeout`` s."""
    return run_in_child(lambda report: fn(), timeout).status
