"""Every conformance-corpus script measured on the kernel beside the model's prediction.

For each script of tests/conformance (model design ``pte``, the kernel's): ``measure_script``
with one run, and the rows whose verdict is ``MISMATCH`` (a process figure off its
prediction, or kernel bytes off by more than the page-granular charge). Whole-machine slab
rows are never results from one run, so only VMAs, VmPTE and memcg bytes are judged.
Runs about 8 minutes, as root. Usage: ``.venv/bin/python bench/bench_measure_corpus.py``.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

from sparsemm.opscript.designs import run_design
from sparsemm.opscript.measure import compare, measure_script, prediction_from_counts
from sparsemm.opscript.script import load_script

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "conformance"


def main() -> int:
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M:%S %Z')} kernel {platform.release()} -->")
    print("| script | quantity | predicted | measured |")
    print("|---|---|---|---|")
    n = bad = 0
    skipped = []
    for path in sorted(CORPUS.rglob("*.json")):
        name = str(path.relative_to(CORPUS))
        script = load_script(str(path))
        result = run_design(script, "pte")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
