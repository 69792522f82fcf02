"""Every conformance-corpus script measured on the kernel beside the model's prediction.

For each script of tests/conformance (model design ``pte``, the kernel's): ``measure_script``
with one run, and the rows whose verdict is ``MISMATCH`` (a process figure off its
prediction, or kernel bytes off by more than the page-granular charge). Whole-machine slab
rows are never results from one run, so only VMAs, VmPTE and memcg bytes are judged.
As root. Usage: ``.venv/bin/python bench/bench_measure_corpus.py`` (``--quick``: every 20th
script). Without a memory cgroup the run is skipped (exit 0; with ``--record``, exit 2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Run, Tee, parser, skip  # noqa: E402
from sparsemm.model import designs  # noqa: E402
from sparsemm.native import memcg  # noqa: E402
from sparsemm.opscript.designs import run_design  # noqa: E402
from sparsemm.opscript.measure import compare, measure_script, prediction_from_counts  # noqa: E402
from sparsemm.opscript.script import load_script  # noqa: E402

KERNEL_DESIGN = designs.kernel_design()  # the design the running kernel implements

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "conformance"
FULL, QUICK = "about 16 minutes", "about 30 s (every 20th script)"
TITLE = "The conformance corpus measured beside the model (`bench/bench_measure_corpus.py`)"


def main(argv: list[str]) -> int:
    args = parser(__doc__, FULL, QUICK).parse_args(argv)
    run = Run("measure_corpus", args, argv, full=FULL, quick=QUICK)
    try:
        memcg.find_hierarchy()
    except memcg.MemcgUnavailable as exc:
        return skip(run, TITLE, f"no memory cgroup: {exc}")
    if os.geteuid() != 0:
        return skip(run, TITLE, "needs root (it makes memory cgroups)")
    paths = sorted(CORPUS.rglob("*.json"))
    if args.quick:
        paths = paths[::20]
    n = bad = 0
    skipped = []
    with Tee() as tee:
        print("| script | quantity | predicted | measured |")
        print("|---|---|---|---|")
        for path in paths:
            name = str(path.relative_to(CORPUS))
            script = load_script(str(path))
            result = run_design(script, KERNEL_DESIGN)
            if result.error:
                skipped.append(f"{name} (model: {result.error})")
                continue
            m = measure_script(script, repeat=1)
            n += 1
            rows = [r for r in compare(m, prediction_from_counts(result.counts)) if r.verdict == "MISMATCH"]
            bad += bool(rows)
            for r in rows:
                print(f"| {name} | {r.key} | {r.predicted:,} | {r.measured:,} |", flush=True)
        print(f"\n{n} scripts measured, {bad} with a mismatch" +
              (f"; not measured: {', '.join(skipped)}" if skipped else ""))
    head = run.header(TITLE, [
        "Each script of tests/conformance (model design `pte`, the kernel's) measured once "
        "(`measure_script(repeat=1)`); listed: the rows whose verdict is MISMATCH. Whole-machine "
        "slab rows are never results from one run, so only VMAs, VmPTE and memcg bytes are judged. "
        "The reading: results_costs_memcg.md and docs/divergences.md."])
    run.write("\n".join(head) + tee.text, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
