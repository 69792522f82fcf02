"""What every bench script shares: its options (``--quick``, ``--record``), where its results
go, and the header that says when, how and on what machine they were measured.

A script prints its results and writes them to ``out/bench/results_NAME.md`` (git-ignored);
only ``--record`` (``make bench-record``) writes the tracked ``bench/results_NAME.md``, and
only for a full run. Nothing here measures anything.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: Untracked results (``/out/`` is in .gitignore).
OUT_DIR = ROOT / "out" / "bench"

BUSY = ("measured on a busy machine shared with other jobs: compare the ratios "
        "measured side by side within this run, not absolute times")


def parser(doc: str, full: str, quick: str) -> argparse.ArgumentParser:
    """An argument parser whose help gives the script's docstring and its run times
    (``full``, ``quick``: e.g. "about 6 minutes"), with ``--quick`` and ``--record``."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Run time on the 2-vCPU shared machine: {full} (--quick: {quick}). Results: "
               "stdout and out/bench/ (untracked); --record writes bench/ (tracked).")
    ap.add_argument("--quick", action="store_true", help=f"a smaller run ({quick}): checks the "
                    "script works; its figures are not for the record")
    ap.add_argument("--record", action="store_true",
                    help="write the tracked bench/results_*.md (full runs only; make bench-record)")
    return ap


def code_version() -> str:
    """The commit the measured code is at, "with local changes" when ``src/`` or the bench
    scripts differ from it (not the results files a recording run rewrites); "unknown"
    outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short=10", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "src", "bench/*.py")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (" with local changes" if dirty else "")


def load() -> str:
    """The 1-minute load average, as text."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


class Run:
    """One run of a bench script: its name (``results_NAME.md``), options and clock.

    ``Run("model", args, argv, full="about 6 minutes", quick="about 20 s")``; then
    ``run.header(title, [method lines])`` for the first lines of the results and
    ``run.write(text)`` to print and store them.
    """

    def __init__(self, name: str, args: argparse.Namespace, argv: list[str], *, full: str, quick: str):
        if args.record and args.quick:
            raise SystemExit(f"bench_{name}: --record takes a full run, not --quick")
        self.name, self.args, self.argv = name, args, list(argv)
        self.full, self.quick = full, quick
        self.t0 = time.monotonic()
        self.load_start = load()

    @property
    def command(self) -> str:
        script = f"bench/{Path(sys.argv[0]).name}"
        return "PYTHONPATH=src python3 " + " ".join([script, *map(shlex.quote, self.argv)])

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def header(self, title: str, method: list[str] = ()) -> list[str]:
        """The results' title and its provenance lines (date, command, time taken, machine)."""
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        kind = "a --quick run (a smoke test, not figures for the record)" if self.args.quick else "a full run"
        lines = [
            f"## {title}",
            "",
            f"- Date: {now}; {kind}; took {self.elapsed():.0f} s (a full run takes {self.full}, "
            f"--quick {self.quick}).",
            f"- Command: `{self.command}`; code: {code_version()}.",
            f"- Machine: Linux {platform.release()}, {platform.machine()}, Python "
            f"{platform.python_version()}, {os.cpu_count()} vCPUs; load average {self.load_start} "
            f"at the start, {load()} at the end: {BUSY}.",
        ]
        return lines + [f"- {m}" for m in method] + [""]

    def path(self) -> Path:
        return (HERE if self.args.record else OUT_DIR) / f"results_{self.name}.md"

    def write(self, text: str, *, echo: bool = True) -> Path:
        """Write ``text`` to this run's results file (and print it, with ``echo``); return the file."""
        dest = self.path()
        dest.parent.mkdir(parents=True, exist_ok=True)
        text = text.rstrip("\n") + "\n"
        dest.write_text(text, encoding="utf-8")
        if echo:
            print(text)
        print(f"written to {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}", flush=True)
        return dest


def skip(run: Run, title: str, why: str) -> int:
    """A prerequisite is missing: with ``--record`` that is an error (exit 2, nothing written);
    otherwise the results say the run was skipped and why (exit 0)."""
    if run.args.record:
        print(f"bench_{run.name}: cannot record: {why}", file=sys.stderr)
        return 2
    print(f"bench_{run.name}: skipped: {why}", file=sys.stderr)
    run.write("\n".join(run.header(title) + [f"Skipped: {why}."]))
    return 0


class Tee:
    """Collects what is printed while it is active (``with Tee() as tee: ...; tee.text``)
    and still prints it."""

    def __init__(self):
        self.parts: list[str] = []
        self._stdout = None

    def write(self, s: str) -> int:
        self.parts.append(s)
        return self._stdout.write(s)

    def flush(self) -> None:
        self._stdout.flush()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def __enter__(self) -> "Tee":
        self._stdout, sys.stdout = sys.stdout, self
        return self

    def __exit__(self, *exc) -> None:
        sys.stdout = self._stdout
