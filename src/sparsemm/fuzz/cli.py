"""The ``sparsemm fuzz`` subcommand: options, the progress line, the summary, exit status.

Owns only presentation: ``add_parser(subparsers)`` registers the command, the loop is
``engine.Fuzzer``. Exit status 0 nothing found, 1 a confirmed difference, 2 a bad
option (one line on stderr), 128 + the signal when stopped before anything was found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time

from sparsemm._options import count, number
from sparsemm.fuzz.engine import Fuzzer, FuzzError, Recheck, Stats, backends_from_env, recheck
from sparsemm.fuzz.generate import DEFAULT_PROFILES, PROFILES, count_ops
from sparsemm.fuzz.suppress import KNOWN, SuppressionError, load_rules

DEFAULT_TIME = 60.0
MAX_TIME = 366 * 24 * 3600.0  # a year: anything longer is a typo
MAX_EXAMPLES = 10**9
MAX_OPS = 100_000  # a script's top-level ops
EXIT_FOUND, EXIT_USAGE = 1, 2


def add_parser(subparsers) -> None:
    profiles = "; ".join(f"{p.name}: {p.summary}" for p in PROFILES.values())
    p = subparsers.add_parser(
        "fuzz", help="random scripts on the model and the kernel; shrink and keep differences",
        description="Generate op scripts, run each on the model and on the running kernel, "
                    "and on a difference confirm it, shrink it to a minimal script and write "
                    "it to the findings directory (docs/fuzzing.md).",
        epilog=f"Profiles: {profiles}. Default profiles: {' '.join(DEFAULT_PROFILES)}; "
               "'all' runs every profile. Exit status: 0 no difference, 1 a confirmed "
               "difference, 2 bad option, 128 + the signal (130 for Ctrl-C) when stopped "
               "with nothing found.")
    p.add_argument("--time", metavar="SECONDS", type=number("time", 0, MAX_TIME, lo_open=True),
                   help=f"time budget, shrinking included (default {DEFAULT_TIME:g} unless "
                        "--examples is given)")
    p.add_argument("--seed", metavar="N", type=count("seed", 0, (1 << 64) - 1),
                   help="seed of the run (default: a random one, printed)")
    p.add_argument("--profile", metavar="NAME", nargs="+", action="extend", dest="profiles",
                   help="profiles to cycle through (repeatable)")
    p.add_argument("--findings", metavar="DIR", default="fuzz-findings",
                   help="where findings are written (default ./fuzz-findings; created on the "
                        "first finding; signatures already there count as known)")
    p.add_argument("--max-ops", metavar="N", type=count("max-ops", 1, MAX_OPS),
                   help="most top-level ops per script (default: the profile's)")
    p.add_argument("--examples", metavar="N", type=count("examples", 1, MAX_EXAMPLES),
                   help="stop after N scripts")
    p.add_argument("--suppress", metavar="FILE", action="append", default=[],
                   help="suppression file of known divergences (repeatable); 'known' is the "
                        "one shipped with sparsemm for docs/divergences.md")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--recheck", metavar="DIR",
                   help="generate nothing: run every finding under DIR again and say which "
                        "still differ (exit 1), agree now, or differ differently")
    p.set_defaults(func=fuzz_main)


def _options(args) -> dict:
    time_limit, examples, max_ops, seed = args.time, args.examples, args.max_ops, args.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    if time_limit is None and examples is None:
        time_limit = DEFAULT_TIME
    profiles = args.profiles or list(DEFAULT_PROFILES)
    if "all" in profiles:
        profiles = list(PROFILES)
    for name in profiles:
        if name not in PROFILES:
            raise FuzzError(f"--profile: unknown profile {name!r} (known: {', '.join(PROFILES)}, all)")
    if os.path.exists(args.findings) and not os.path.isdir(args.findings):
        raise FuzzError(f"--findings: {args.findings} exists and is not a directory")
    rules = []
    for path in args.suppress:
        rules.extend(load_rules(path))
    return {"seed": seed, "profiles": profiles, "time_limit": time_limit, "examples": examples,
            "max_ops": max_ops, "findings_dir": args.findings, "rules": rules}


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _ProgressLine:
    """One line on a terminal's stderr, redrawn at most four times a second."""

    def __init__(self, fuzzer_ref: list):
        self._fuzzer = fuzzer_ref
        self._last = 0.0
        self.shown = False

    def __call__(self, stats: Stats) -> None:
        now = time.monotonic()
        if now - self._last < 0.25:
            return
        self._last = now
        left = self._fuzzer[0].remaining() if self._fuzzer else None
        line = (f"fuzz: {stats.scripts:,} scripts  {stats.ops:,} ops  "
                f"{stats.differences} differences  {len(stats.findings)} findings  "
                f"{_clock(stats.elapsed)} elapsed"
                + (f", {_clock(left)} left" if left is not None else "")
                + (f"  [{stats.activity}]" if stats.activity else ""))
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        sys.stderr.write("\r\x1b[K" + line[:width])
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def summary_text(stats: Stats) -> str:
    lines = [f"sparsemm fuzz: {stats.scripts:,} scripts ({stats.ops:,} ops, {stats.kernel_runs:,} "
             f"kernel runs) in {_clock(stats.elapsed)}, seed {stats.seed}, profiles "
             f"{' '.join(stats.profiles)}" + (" (interrupted)" if stats.interrupted else "")]
    flaky = sum(stats.flaky.values())
    suppressed = sum(stats.suppressed.values())
    lines.append(f"  {stats.differences} differences: {len(stats.findings)} new findings, "
                 f"{stats.duplicates} duplicates, {flaky} not reproducible, "
                 f"{suppressed} suppressed")
    for f in stats.findings:
        ops = count_ops(f.script.get("ops", []))
        partly = "" if f.shrink.get("complete", True) else ", not fully shrunk"
        lines.append(f"  {f.path}: {f.signature} ({ops} ops, {f.hits} hits{partly})")
    for profile, why in stats.skipped.items():
        lines.append(f"  profile {profile} skipped: {why}")
    if stats.unavailable:
        lines.append(f"  {stats.unavailable} scripts the kernel backend could not run here, "
                     f"first: {stats.unavailable_example}")
    if stats.refused:
        lines.append(f"  {stats.refused} generated scripts refused by the parser (a generator "
                     f"bug), first: {stats.refused_example}")
    for sig, hits in stats.previous.items():
        lines.append(f"  known finding seen again: {sig} ({hits} hits)")
    for sig, n in stats.flaky.items():
        lines.append(f"  not reproducible: {sig} ({n}x)")
    for divergence, n in stats.suppressed.items():
        lines.append(f"  suppressed: {divergence} ({n}x)")
    return "\n".join(lines)


def recheck_main(args: argparse.Namespace) -> int:
    """``--recheck DIR``: one line per finding; exit 1 while any still differs."""
    if not os.path.isdir(args.recheck):
        print(f"sparsemm fuzz: --recheck: {args.recheck} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    out = []

    def show(r: Recheck) -> None:
        if args.json:
            return
        if r.state == "agrees":
            line = "agrees now: record its script into tests/conformance/, then delete it"
        elif r.state == "differs":
            line = f"still differs: {r.signature}"
        else:
            line = f"differs differently: {r.run.diff.signature} (was {r.signature})"
        print(f"{r.path}: {line}", flush=True)

    try:
        out = recheck(args.recheck, backends_from_env(), on_each=show)
    except FuzzError as exc:
        print(f"sparsemm fuzz: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    if args.json:
        print(json.dumps([{"dir": str(r.path), "signature": r.signature, "state": r.state,
                           "now": r.run.diff.signature if r.run.diff else None} for r in out],
                         indent=2))
    elif not out:
        print(f"{args.recheck}: no findings")
    return EXIT_FOUND if any(r.state != "agrees" for r in out) else 0


def fuzz_main(args: argparse.Namespace) -> int:
    if args.recheck is not None:
        return recheck_main(args)
    try:
        opts = _options(args)
        backends = backends_from_env()
    except (FuzzError, SuppressionError) as exc:
        print(f"sparsemm fuzz: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ref: list = []
    line = _ProgressLine(ref) if sys.stderr.isatty() else None
    try:
        fuzzer = Fuzzer(**opts, backends=backends, on_progress=line)
    except FuzzError as exc:
        print(f"sparsemm fuzz: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ref.append(fuzzer)
    for profile, why in fuzzer.stats.skipped.items():
        print(f"sparsemm fuzz: profile {profile} skipped: {why}", file=sys.stderr, flush=True)
    stopped: list[int] = []

    def stop(signum, frame):  # SIGTERM/SIGHUP end the run as Ctrl-C does, with what it has
        stopped.append(signum)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        stats = fuzzer.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if line is not None:
        line.clear()
    if args.json:
        print(json.dumps(stats.summary(), indent=2))
    else:
        print(summary_text(stats))
    if stats.findings or stats.previous:
        return EXIT_FOUND
    if stats.interrupted:
        return 128 + (stopped[0] if stopped else signal.SIGINT)
    return 0
