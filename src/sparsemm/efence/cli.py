"""The ``sparsemm efence`` subcommand: parse its options and run the program under the allocator.

Owns the argument parser and the one-line error messages; the work is
``driver.run``. Registered from ``sparsemm.cli`` through ``add_parser``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from sparsemm.efence import driver

EXIT_USAGE = 2
EXIT_NOT_FOUND = 127  # as env(1), nohup(1) and timeout(1): the command was not found
EXIT_CANNOT_RUN = 126  # found but not executable

_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

EPILOG = """\
The library reads its settings from the environment, so it can also be preloaded
directly (sparsemm efence --print-env shows the exact variables):
  LD_PRELOAD=<path printed by --print-env>
  SPARSEMM_EFENCE_MODE=auto|markers|prot_none   SPARSEMM_EFENCE_UNDERFLOW=0|1
  SPARSEMM_EFENCE_ALIGN=N   SPARSEMM_EFENCE_QUARANTINE=BYTES[K|M|G]   SPARSEMM_EFENCE_SAMPLE=N
  SPARSEMM_EFENCE_BACKTRACE=FRAMES   SPARSEMM_EFENCE_ON_ERROR=abort|continue
Exit status: the program's; 128 + N when signal N killed it (139 for SIGSEGV);
127 when the command is not found, 126 when it cannot be run, 2 for a bad option
or a missing library. Details: docs/efence.md."""


def _size(text: str) -> int:
    t = text.strip().lower()
    unit = t[-1:] if t[-1:] in ("k", "m", "g") else ""
    digits = t[: len(t) - len(unit)]
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 64M)")
    return int(digits) * _SUFFIX[unit]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``efence`` on the ``sparsemm`` subparsers."""
    p = subparsers.add_parser(
        "efence", help="run a native program with every heap block ending at a guard page",
        description="Run CMD with a guard-page allocator preloaded (LD_PRELOAD): each malloc'd "
                    "block ends exactly at a guard page, so an overflow faults at the faulting "
                    "write, and the report names the block. Guards are guard markers "
                    "(MADV_GUARD_INSTALL), so 100,000 live blocks cost a handful of VMAs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=driver.MODES, default="auto",
                   help="guards as markers (Linux 6.13+) or PROT_NONE pages; auto: markers where "
                        "the kernel has them. prot_none costs two VMAs per live block and stops at "
                        "vm.max_map_count (default auto)")
    p.add_argument("--underflow", action="store_true",
                   help="put the guard before each block (catches underflows, not overflows)")
    p.add_argument("--align", type=int, default=1, metavar="N",
                   help="alignment of malloc'd blocks in bytes (default 1: every block ends exactly "
                        "at its guard). N > 1 costs exactness: up to N-1 bytes past a block's end "
                        "are writable without a fault. CPython with PYTHONMALLOC=malloc and code "
                        "that relies on glibc's 16-byte alignment need --align 16")
    p.add_argument("--quarantine", type=_size, default=driver.DEFAULT_QUARANTINE, metavar="BYTES",
                   help="freed blocks (page-rounded) kept guarded before their slot is reused; "
                        "K, M, G suffixes (default 256M)")
    p.add_argument("--sample", type=int, default=1, metavar="N",
                   help="guard one allocation in N and pass the rest to the system allocator "
                        "(default 1: guard all)")
    p.add_argument("--backtrace", type=int, nargs="?", const=16, default=0, metavar="FRAMES",
                   help="record the call stack of each allocation and free (default depth 16) and "
                        "print it in reports")
    p.add_argument("--on-error", choices=driver.ON_ERROR, default="abort",
                   help="after reporting a double or invalid free: abort (default) or continue "
                        "(the call is ignored and the allocator's state is untouched)")
    p.add_argument("--print-env", action="store_true",
                   help="print the environment variables (shell syntax) instead of running CMD")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS]",
                   help="the program to run and its arguments")
    p.set_defaults(func=_efence)
    return p


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"sparsemm efence: {message}", file=sys.stderr)
    return status


def _efence(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    options = driver.Options(mode=args.mode, underflow=args.underflow, align=args.align,
                             quarantine=args.quarantine, sample=args.sample,
                             backtrace=args.backtrace, on_error=args.on_error)
    try:
        options.check()
        lib = driver.library_path()
    except (ValueError, driver.LibraryNotBuilt) as exc:
        return _fail(str(exc))
    if args.print_env:
        print(f"LD_PRELOAD={shlex.quote(str(lib))}")
        for name, value in options.env().items():
            print(f"{name}={shlex.quote(value)}")
        return 0
    if not command:
        return _fail("no command given (usage: sparsemm efence [OPTIONS] -- CMD [ARGS])")
    if args.mode == "markers":
        from sparsemm.native import libc

        if not libc.guard_regions_supported():
            return _fail("--mode markers: this kernel has no guard markers (MADV_GUARD_INSTALL "
                         "needs Linux 6.13+); use --mode prot_none")
    elif args.mode == "prot_none":
        from sparsemm.native.mapping import max_map_count

        limit = max_map_count()
        print(f"sparsemm efence: warning: --mode prot_none makes every live block two VMAs; the "
              f"program fails at vm.max_map_count ({limit}), about {limit // 2} live blocks",
              file=sys.stderr)
    try:
        return driver.run(command, options)
    except FileNotFoundError as exc:
        return _fail(f"cannot run {command[0]!r}: {exc.strerror}", EXIT_NOT_FOUND)
    except PermissionError as exc:
        return _fail(f"cannot run {command[0]!r}: {exc.strerror}", EXIT_CANNOT_RUN)
    except OSError as exc:
        return _fail(f"cannot run {command[0]!r}: {exc.strerror or exc}", EXIT_CANNOT_RUN)
