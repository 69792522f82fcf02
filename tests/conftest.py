"""Shared fixtures: the kernel feature gate and helpers to run scripts."""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from sparsemm.native import libc

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "conformance"

HAS_GUARDS = libc.guard_regions_supported()
needs_guards = pytest.mark.skipif(
    not HAS_GUARDS, reason="this kernel has no guard regions (MADV_GUARD_INSTALL needs Linux >= 6.13)")

#: ``make test`` installs strace (the Makefile's apt-get step) and sets this: there the tests
#: of ``sparsemm trace`` run, and fail if strace is missing, instead of skipping.
STRACE_REQUIRED = os.environ.get("SPARSEMM_REQUIRE_STRACE") == "1"
needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None and not STRACE_REQUIRED,
    reason="strace is not installed (make test installs it: apt-get install strace)")


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m sparsemm ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "sparsemm", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


def script_doc(ops, **top) -> str:
    return json.dumps({"ops": ops, **top})


def in_child(fn) -> int:
    """Run ``fn`` in a forked child; return the raw wait status. Exit 0 = fn returned."""
    pid = os.fork()
    if pid == 0:
        rc = 0
        try:
            faulthandler.disable()
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            rc = fn() or 0
        except BaseException:
            traceback.print_exc()
            rc = 99
        os._exit(rc)
    _, status = os.waitpid(pid, 0)
    return status


def died_of_sigsegv(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV


def observations(records):
    """What a script observed: snapshot and touch values, fork children nested (record
    lists of scripts rewritten with more or fewer ops still compare)."""
    out = []
    for r in records:
        if r["op"] in ("snapshot", "touch"):
            out.append(r["value"])
        elif r["op"] == "fork":
            out.append(observations(r["value"]))
    return out
