"""Driver for the efence allocator: find the built library, set its environment, run a program.

Owns ``Options`` (the library's settings and their environment variables), the
library's location and the exit-status rule (the program's status; 128 + signal
when a signal killed it). It must not reach into the library's memory: that is
``efence.c``'s alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

LIB_NAME = "libsparsemm_efence.so.1"  # setup.py builds it under this name
BUILD_ERROR = "libsparsemm_efence.build-error.txt"
ENV_PREFIX = "SPARSEMM_EFENCE_"
MODES = ("auto", "markers", "prot_none")
ON_ERROR = ("abort", "continue")
MAX_BACKTRACE = 64  # frames; efence.c's MAX_BT
MAX_ALIGN = 4096  # bytes; a bigger alignment is asked per call (memalign & co)
DEFAULT_QUARANTINE = 256 << 20  # bytes of freed blocks kept guarded
MAX_QUARANTINE = 1 << 47  # bytes: the whole user address space of x86-64
MAX_SAMPLE = 1 << 32


class LibraryNotBuilt(RuntimeError):
    """The C library is missing: the install had no C compiler, or the build failed."""


@dataclass(slots=True)
class Options:
    """What the library does; each field is one ``SPARSEMM_EFENCE_*`` variable."""

    mode: str = "auto"  # markers where the kernel has them, else prot_none (with a warning)
    underflow: bool = False  # guard before each block instead of after it
    align: int = 1  # bytes; > 1 leaves up to align - 1 bytes between a block's end and its guard
    quarantine: int = DEFAULT_QUARANTINE  # bytes (page-rounded) of freed blocks kept guarded
    sample: int = 1  # guard one allocation in `sample`; the rest go to the system allocator
    backtrace: int = 0  # frames kept per allocation and free (0: none)
    on_error: str = "abort"  # double or invalid free: "abort" after the report, or "continue"

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad option."""
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.align < 1 or self.align & (self.align - 1) or self.align > MAX_ALIGN:
            raise ValueError(f"--align must be a power of two from 1 to {MAX_ALIGN}, not {self.align}")
        if not 0 <= self.quarantine <= MAX_QUARANTINE:
            raise ValueError(f"--quarantine must be 0..{MAX_QUARANTINE} bytes, not {self.quarantine}")
        if not 1 <= self.sample <= MAX_SAMPLE:
            raise ValueError(f"--sample must be 1..{MAX_SAMPLE}, not {self.sample}")
        if not 0 <= self.backtrace <= MAX_BACKTRACE:
            raise ValueError(f"--backtrace must be 0..{MAX_BACKTRACE} frames, not {self.backtrace}")
        if self.on_error not in ON_ERROR:
            raise ValueError(f"--on-error must be one of {', '.join(ON_ERROR)}, not {self.on_error!r}")

    def env(self) -> dict[str, str]:
        """The ``SPARSEMM_EFENCE_*`` variables for these options (all of them, explicitly)."""
        self.check()
        return {
            ENV_PREFIX + "MODE": self.mode,
            ENV_PREFIX + "UNDERFLOW": "1" if self.underflow else "0",
            ENV_PREFIX + "ALIGN": str(self.align),
            ENV_PREFIX + "QUARANTINE": str(self.quarantine),
            ENV_PREFIX + "SAMPLE": str(self.sample),
            ENV_PREFIX + "BACKTRACE": str(self.backtrace),
            ENV_PREFIX + "ON_ERROR": self.on_error,
        }


def library_dir() -> Path:
    """The directory the library is built into (this package's own directory)."""
    return Path(str(resources.files("sparsemm.efence")))


def library_path() -> Path:
    """The built library; ``LibraryNotBuilt`` says why it is missing."""
    lib = library_dir() / LIB_NAME
    if lib.is_file():
        return lib
    err = library_dir() / BUILD_ERROR
    why = err.read_text().strip() if err.is_file() else "no build of it was found"
    raise LibraryNotBuilt(
        f"the efence library is not built ({why}); install a C compiler (apt-get install gcc) "
        f"and reinstall sparsemm (pip install . or pip install -e .)")


def environment(options: Options, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the library preloaded first
    and the options set. Existing ``LD_PRELOAD`` entries are kept after ours."""
    env = dict(os.environ if base is None else base)
    lib = str(library_path())
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != lib]
    env["LD_PRELOAD"] = " ".join([lib, *preload])
    env.update(options.env())
    return env


def exit_status(returncode: int) -> int:
    """A shell's exit status for a ``subprocess`` return code: 128 + signal when killed."""
    return 128 - returncode if returncode < 0 else returncode


_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def run(argv: list[str], options: Options, *, env: dict[str, str] | None = None) -> int:
    """Run ``argv`` under the allocator; return its exit status (128 + signal if killed).

    SIGINT is ignored here while the program runs (the terminal sends it to the
    program too); SIGTERM, SIGHUP and SIGQUIT sent to us are passed on to it.
    Raises ``LibraryNotBuilt``, ``ValueError`` (bad options) and ``OSError`` (the
    program cannot be started).
    """
    child_env = environment(options, env)
    proc = subprocess.Popen(argv, env=child_env)
    previous = {}

    def forward(signum, _frame):
        proc.send_signal(signum)

    try:
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
            for sig in _FORWARDED:
                previous[sig] = signal.signal(sig, forward)
        returncode = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return exit_status(returncode)
