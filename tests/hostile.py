"""What every hostile-input test checks about a ``sparsemm`` command: the exit contract.

``run_case(args)`` runs ``python -m sparsemm ARGS`` in a session of its own, with a
per-case timeout; ``check(result)`` asserts the contract of docs/opscript.md and
docs/analyze.md: an exit status among those documented (0, 1, 2; 128+N after a signal the
test sent), never a negative one (an interpreter crash), no traceback, exactly one stderr
line for exit 2, no hang, and nothing left running in the command's session afterwards.
``SPARSEMM_HOSTILE_EXAMPLES`` scales the generated cases (default ``EXAMPLES``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

EXAMPLES = int(os.environ.get("SPARSEMM_HOSTILE_EXAMPLES", "20"))
#: Seconds one case may take before it counts as a hang (SPARSEMM_HOSTILE_TIMEOUT).
CASE_TIMEOUT = float(os.environ.get("SPARSEMM_HOSTILE_TIMEOUT", "120"))


@dataclass
class Result:
    args: tuple
    returncode: int
    stdout: str
    stderr: str
    hung: bool = False
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"sparsemm {' '.join(map(str, self.args))[:200]}: rc={self.returncode} hung={self.hung} "
                f"leftovers={self.leftovers} stderr={self.stderr[-800:]!r}")


def session_members(sid: int) -> list[tuple[int, str]]:
    """Live processes (not zombies) of session ``sid``: (pid, command line)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read().decode("ascii", "replace")
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) < 4 or rest[0] in ("Z", "X") or int(rest[3]) != sid:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            cmd = "?"
        out.append((int(name), cmd))
    return out


def _kill_all(sid: int) -> None:
    for pid, _ in session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _leftovers(sid: int, grace: float = 3.0) -> list[str]:
    """What still runs in the session ``grace`` seconds after its leader ended (a child
    killed by PDEATHSIG needs a moment); anything found is killed and reported."""
    deadline = time.monotonic() + grace
    while True:
        members = session_members(sid)
        if not members or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    _kill_all(sid)
    return [f"{pid} {cmd[:120]}" for pid, cmd in members]


def start(args, *, stdin_data: bytes | None = None, env: dict | None = None, preexec=None,
          cwd=None) -> subprocess.Popen:
    """``python -m sparsemm ARGS`` as the leader of a new session (so its whole tree is found)."""
    def setup():
        os.setsid()
        if preexec is not None:
            preexec()

    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    return subprocess.Popen([sys.executable, "-m", "sparsemm", *argv], cwd=cwd,
                            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, preexec_fn=setup)


def finish(proc: subprocess.Popen, args, *, stdin_data: bytes | None = None,
           timeout: float = CASE_TIMEOUT, t0: float | None = None) -> Result:
    t0 = time.monotonic() if t0 is None else t0
    hung = False
    try:
        out, err = proc.communicate(stdin_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        _kill_all(proc.pid)
        out, err = proc.communicate()
    seconds = time.monotonic() - t0
    return Result(tuple(args), proc.returncode, out.decode("utf-8", "replace"),
                  err.decode("utf-8", "replace"), hung, _leftovers(proc.pid), seconds)


def run_case(args, *, stdin: str | bytes | None = None, env: dict | None = None,
             timeout: float = CASE_TIMEOUT, preexec=None, cwd=None) -> Result:
    data = stdin.encode("utf-8", "surrogatepass") if isinstance(stdin, str) else stdin
    t0 = time.monotonic()
    proc = start(args, stdin_data=data, env=env, preexec=preexec, cwd=cwd)
    return finish(proc, args, stdin_data=data, timeout=timeout, t0=t0)


def check(r: Result, allowed=(0, 1, 2)) -> Result:
    """The contract every command keeps on any input."""
    assert not r.hung, f"hang: {r}"
    assert r.returncode >= 0, f"interpreter crash: {r}"
    assert r.returncode in allowed, f"undocumented exit status: {r}"
    assert "Traceback" not in r.stderr, f"traceback: {r}"
    assert not r.leftovers, f"left processes running: {r}"
    if r.returncode == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sparsemm"), f"exit 2 without one line: {r}"
    return r


def refused(r: Result, *needles: str) -> Result:
    """Exit 2, one stderr line containing every needle, nothing on stdout."""
    check(r, allowed=(2,))
    assert r.stdout == "", f"output for a refused input: {r}"
    for needle in needles:
        assert needle in r.stderr, f"{needle!r} not in: {r}"
    return r
