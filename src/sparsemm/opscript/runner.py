"""Run an op script on a backend: the one entry point the CLI and the tests use.

Owns backend selection. The kernel backend runs in a fresh child process and has only the
kernel's own guard design; the model backend runs in this process on ``sparsemm.model``
under any registered design (``sparsemm.model.designs``).
"""

from __future__ import annotations

from sparsemm.model import designs
from sparsemm.opscript.dispatch import BackendUnavailable
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import Script

__all__ = ["BACKENDS", "BackendUnavailable", "run_script"]

BACKENDS = ("kernel", "model")


def run_script(script: Script, backend: str = "kernel", *, design: str | None = None) -> list[dict]:
    """Execute ``script`` on ``backend`` under ``design`` (default: the kernel's own);
    return the records (docs/opscript.md). ``BackendUnavailable`` for an unknown backend
    or design, or a design the kernel backend cannot run."""
    native = designs.kernel_design()
    design = native if design is None else design
    if backend == "kernel":
        if design != native:
            raise BackendUnavailable(
                f"the kernel has only the {native!r} guard design; --design {design} runs on the model")
        from sparsemm.opscript.kernel import run_kernel

        return run_kernel(script)
    if backend == "model":
        return run_model(script, design=design)
    raise BackendUnavailable(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
