"""Shared fixtures: the kernel feature gate and helpers to run scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsemm.native import libc

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "conformance"

HAS_GUARDS = libc.guard_regions_supported()
needs_guards = pytest.mark.skipif(
    not HAS_GUARDS, reason="this kernel has no guard regions (MADV_GUARD_INSTALL needs Linux >= 6.13)")


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m sparsemm ARGS`` and capture its output."""
    return subprocess.run([sys.executable, "-m", "sparsemm", *args], input=stdin,
                          capture_output=True, text=True, timeout=300)


def script_doc(ops, **top) -> str:
    return json.dumps({"ops": ops, **top})
