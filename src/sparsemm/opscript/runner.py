"""Run an op script on a backend: the one entry point the CLI and the tests use.

Owns backend selection. The kernel backend runs in a fresh child process; the
model backend runs in this process on ``sparsemm.model``.
"""

from __future__ import annotations

from sparsemm.opscript.script import Script

BACKENDS = ("kernel", "model")
DESIGNS = ("pte", "vma", "tree")


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (not implemented, or the kernel lacks a feature)."""


def run_script(script: Script, backend: str = "kernel", *, design: str = "pte") -> list[dict]:
    """Execute ``script`` on ``backend``; return the records (OPSCRIPT.md)."""
    if backend == "kernel":
        if design != "pte":
            raise BackendUnavailable(
                f"the kernel has only the 'pte' guard design; --design {design} runs on the model")
        from sparsemm.opscript.kernel import run_kernel

        return run_kernel(script)
    if backend == "model":
        try:
            from sparsemm.opscript.model_backend import run_model
        except ImportError:
            raise BackendUnavailable("the model backend is not implemented yet") from None
        return run_model(script, design=design)
    raise BackendUnavailable(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
