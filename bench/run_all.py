"""Run every benchmark in bench/ and gather their results into bench/RESULTS.md.

Each ``bench_*.py`` writes its own ``results_*.md`` (figures, date, command);
this script runs them one after another (never in parallel: the machine has
two cores and the figures are ratios measured in one run) and concatenates.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    """``run_all.py [NAME ...]`` runs the named benchmarks (all by default);
    ``run_all.py --gather`` only rebuilds RESULTS.md from the results files."""
    gather_only = "--gather" in argv
    only = {a for a in argv if a != "--gather"}
    failed = []
    for script in [] if gather_only else sorted(HERE.glob("bench_*.py")):
        if only and script.stem not in only and script.stem.removeprefix("bench_") not in only:
            continue
        print(f"== {script.name}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, str(script)], cwd=HERE.parent)
        print(f"== {script.name}: exit {proc.returncode} in {time.monotonic() - t0:.0f} s", flush=True)
        if proc.returncode:
            failed.append(script.name)
    parts = ["# Benchmark results\n",
             "Gathered by `make bench` (`bench/run_all.py`) from the `results_*.md` each benchmark "
             "writes. Machine: 2 vCPU Firecracker guest, Linux 6.18, CPython 3.11; the machine is "
             "noisy, so compare the ratios measured within one run, not absolute times.\n"]
    for part in sorted(HERE.glob("results_*.md")):
        parts.append(part.read_text().strip() + "\n")
    (HERE / "RESULTS.md").write_text("\n".join(parts))
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
