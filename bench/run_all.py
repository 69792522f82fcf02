"""Run every benchmark in bench/ one after another and gather their results.

``make bench`` (``run_all.py``): each ``bench_*.py`` prints its results and writes
``out/bench/results_*.md`` (untracked); they are gathered into ``out/bench/RESULTS.md``.
``make bench-record`` (``run_all.py --record``) writes the tracked ``bench/results_*.md`` and
regathers ``bench/RESULTS.md``. ``--quick`` passes ``--quick`` to every script (a smoke run of
a few minutes; never recorded). Scripts run one at a time, never in parallel: the machine has
two cores and the figures are ratios measured within one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import OUT_DIR, load  # noqa: E402

INTRO = """# Benchmark results

Gathered by `make bench-record` (`bench/run_all.py --record`) from the `results_*.md` each
benchmark writes; `make bench` writes the same to `out/bench/` and leaves these files alone.
Four sections are readings written by hand of earlier runs (pooled runs, comparisons with
other checkouts) and say so; `make bench-record` does not rewrite them.

Machine: a 2-vCPU Firecracker guest, Linux 6.18, CPython 3.11, **shared with up to eight
other jobs**: each section gives the load average at its start and end (often 8 to 15 on the
2 vCPUs). Absolute times are therefore slow and noisy, and a second core is never free: read
the ratios, which each script measures side by side (alternating) within one run, and the
spread given beside each median. Every section says how its figures were obtained, with the
command and the date; predictions of the cost model are marked as such.
"""

#: Sections first in RESULTS.md (the headline figures); the rest follow by name.
ORDER = ["replay", "analyze_designs", "qiling", "model"]


def gather(src: Path, dest: Path) -> None:
    """Concatenate ``src/results_*.md`` into ``dest``, headline sections first."""
    parts = sorted(src.glob("results_*.md"), key=lambda p: (
        ORDER.index(p.stem[8:]) if p.stem[8:] in ORDER else len(ORDER), p.name))
    body = [INTRO] + [p.read_text(encoding="utf-8").strip() + "\n" for p in parts]
    dest.write_text("\n".join(body), encoding="utf-8")
    print(f"gathered {len(parts)} results into {dest.relative_to(ROOT)}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="benchmarks to run (bench_NAME.py or NAME); default: all")
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script")
    ap.add_argument("--record", action="store_true", help="write bench/results_*.md and bench/RESULTS.md")
    ap.add_argument("--gather", action="store_true", help="run nothing; regather bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.record and args.quick:
        ap.error("--record takes full runs only")
    if args.gather:
        gather(HERE, HERE / "RESULTS.md")
        return 0
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.names:
        wanted = {n.removesuffix(".py").removeprefix("bench_") for n in args.names}
        unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            ap.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    flags = ["--quick"] if args.quick else ["--record"] if args.record else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    failed = []
    for script in scripts:
        print(f"== {script.name} {' '.join(flags)} (load average {load()})", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, str(script), *flags], cwd=ROOT, env=env)
        print(f"== {script.name}: exit {proc.returncode} in {time.monotonic() - t0:.0f} s", flush=True)
        if proc.returncode:
            failed.append(script.name)
    if args.record:
        gather(HERE, HERE / "RESULTS.md")
    else:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        gather(OUT_DIR, OUT_DIR / "RESULTS.md")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
