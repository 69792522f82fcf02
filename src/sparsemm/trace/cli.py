"""The ``sparsemm trace`` command: options, progress, output. The work is in ``record``, ``replay``, ``report``.

``add_parser(subparsers)`` registers the command (option errors are one line through the
shared ``sparsemm._options.Parser``). Every user-caused failure (strace missing, bad pid,
no command, an unreadable recording or trace line) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from sparsemm._options import count, number

__all__ = ["add_parser", "trace_main"]

EXIT_USAGE = 2
_PID_MAX = 1 << 22  # PID_MAX_LIMIT on 64-bit


class _Usage(Exception):
    """One line for stderr, exit status 2."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "trace", help="record a program's memory-management calls with strace; replay them under each design",
        description="Record the memory-management system calls of a program (all its threads and children) "
                    "with strace, replay them on the model as run and under the vma, pte and tree guard "
                    "designs, and check the as-run replay against the process's own /proc/PID/maps. "
                    "See docs/trace.md.",
        usage="sparsemm trace [options] -- CMD [ARGS...]\n       sparsemm trace [options] --pid PID\n"
              "       sparsemm trace [options] --load DIR")
    p.add_argument("--pid", type=count("--pid", 1, _PID_MAX),
                   help="attach to this running process instead of starting a command")
    p.add_argument("--duration", type=number("--duration", 0, 1e6, lo_open=True),
                   help="with --pid: seconds to trace (default: until the process exits or Ctrl-C)")
    p.add_argument("--load", metavar="DIR", help="replay a recording saved with --save (no tracing)")
    p.add_argument("--save", metavar="DIR", help="keep the recording (strace log and maps) in this new directory")
    p.add_argument("--focus", type=count("--focus", 1, _PID_MAX), metavar="PID",
                   help="report this traced process (a renderer, say) instead of the root one")
    p.add_argument("--json", action="store_true", help="print the result as JSON (schema sparsemm.trace/1)")
    p.add_argument("--no-series", action="store_true", help="with --json: leave the time series out")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of VMAs and kernel bytes over time per design")
    p.add_argument("--hold", type=number("--hold", 0, 60, lo_open=True), default=0.25,
                   help="seconds strace holds a task at execve and exit_group while its maps are read "
                        "(default 0.25)")
    p.add_argument("--jobs", type=count("--jobs", 1, 4), default=None,
                   help="worker processes for the replay (default: one per CPU, at most 4)")
    p.add_argument("--written", choices=("fork", "eager", "lazy"), default="fork",
                   help="when the replay assumes writable memory was written, so has an anon_vma (faults are "
                        "not in a trace): at each fork (default), at every call that makes memory "
                        "writable, or never; see docs/trace.md")
    p.add_argument("--with-payload", action="store_true",
                   help="pte and tree also turn the guard policy's decommitted payload (large PROT_NONE "
                        "ranges inside used memory, e.g. PartitionAlloc's) into markers / entries, as "
                        "analyze's +payload counts")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD", help="the program to run (after --)")
    p.set_defaults(func=trace_main)

    return p


def _progress(quiet: bool):
    if quiet:
        return None
    start = time.monotonic()

    def say(text: str) -> None:
        print(f"sparsemm trace: {text}", file=sys.stderr, flush=True)

    def replay_progress(done: int, total: int) -> None:
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        say(f"replaying: {done:,} of {total:,} trace lines{pct}, {time.monotonic() - start:.0f} s")

    say.replay = replay_progress
    return say


def trace_main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except _Usage as exc:
        print(f"sparsemm trace: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _main(args: argparse.Namespace) -> int:
    from sparsemm.trace import record as rc
    from sparsemm.trace import report
    from sparsemm.trace.parse import TraceParseError
    from sparsemm.trace.replay import replay_designs

    command = list(args.argv or [])
    if command and command[0] == "--":
        command = command[1:]
    sources = sum(bool(x) for x in (command, args.pid, args.load))
    if sources != 1:
        raise _Usage("give exactly one of: -- CMD [ARGS], --pid PID, --load DIR")
    if args.duration is not None and not args.pid:
        raise _Usage("--duration needs --pid")
    if args.save and args.load:
        raise _Usage("--save and --load do not go together")
    say = _progress(args.quiet)
    temp = None
    try:
        if args.load:
            try:
                rec = rc.load_recording(args.load)
            except ValueError as exc:
                raise _Usage(str(exc)) from None
        else:
            try:
                directory, is_temp = rc.new_directory(args.save)
            except (rc.RecordError, OSError) as exc:
                raise _Usage(str(exc)) from None
            temp = directory if is_temp else None
            try:
                if args.pid:
                    rec = rc.record_pid(args.pid, directory, duration=args.duration, hold=args.hold, progress=say)
                else:
                    rec = rc.record_command(command, directory, hold=args.hold, progress=say)
            except (rc.StraceMissing, rc.RecordError) as exc:
                raise _Usage(str(exc)) from None
        try:
            res = replay_designs(rec, written=args.written, jobs=args.jobs, focus=args.focus, payload=args.with_payload,
                                 progress=say.replay if say else None)
        except (TraceParseError, RuntimeError) as exc:
            # the program ran and cannot run again the same way: a replay failure keeps its recording
            kept = ""
            if temp is not None:
                kept = f" (the recording is kept: sparsemm trace --load {temp})"
                temp = None
            if isinstance(exc, TraceParseError):
                raise _Usage(f"cannot read the trace: {exc}{kept}") from None
            raise RuntimeError(f"{exc}{kept}") from None
        if args.focus is not None and res.root is None:
            raise _Usage(f"--focus {args.focus}: no replayed address space of that pid in the trace")
        if args.plot:
            try:
                report.plot(rec, res, args.plot)
            except OSError as exc:
                raise _Usage(f"--plot {args.plot}: {exc.strerror or exc}") from None
        print(report.to_json(rec, res, series=not args.no_series) if args.json else report.format_text(rec, res))
        return 0
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
