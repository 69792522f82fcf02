"""Benchmark: what the second set of counts (decommitted payload as markers) costs ``analyze``.

Runs ``analyze()`` on the same maps with this checkout and with a baseline checkout (one
without the decommitted-payload rebuild), alternating the two in fresh processes, so the
ratio is measured side by side on the same (possibly busy) machine. The maps: the
synthetic 65,530-VMA PartitionAlloc super pages of ``bench_analyze.py`` (every super page
has a range of decommitted payload), the page-sized guard ladder (no payload: the cost
must not change) and the bundled Chromium renderer (119 payload ranges).

Run: ``PYTHONPATH=src python3 bench/bench_analyze_payload.py --baseline-src /path/to/old/src [--rounds N]``
Prints a table (medians and worst, seconds of ``analyze()`` alone, parsing excluded). Without
``--baseline-src`` (as in ``make bench``) there is nothing to compare: the results say so and
``--record`` leaves ``bench/results_analyze_payload.md``, the recorded comparison, as it is.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
RENDERER = HERE.parent / "tests" / "data" / "maps" / "chromium150_renderer_heavy_default.maps"
FULL, QUICK = "about 5 minutes with --baseline-src (none without)", "about 20 s (the renderer, 1 round)"
TITLE = "What the decommitted-payload counts cost `analyze` (`bench/bench_analyze_payload.py`)"

CHILD = """
import json, sys, time
from sparsemm.analyze.maps import parse_maps
from sparsemm.analyze.report import analyze
entries = parse_maps(open(sys.argv[1]).read())
t0 = time.perf_counter()
r = analyze(entries)
dt = time.perf_counter() - t0
out = {"seconds": dt, "pte": r.designs["pte"].map_count}
with_payload = getattr(r, "designs_with_payload", None)
if with_payload:
    out["pte_payload"] = with_payload["pte"].map_count
print(json.dumps(out))
"""


def run(src: Path, path: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cp = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True, env=env,
                        timeout=1800, check=True)
    return json.loads(cp.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(HERE))
    from _common import Run, parser

    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--baseline-src", help="the src/ directory of the checkout to compare with")
    ap.add_argument("--rounds", type=int, help="alternating rounds (default 5; --quick 1)")
    args = ap.parse_args(argv)
    run_ = Run("analyze_payload", args, argv, full=FULL, quick=QUICK)
    if not args.baseline_src:
        why = "no --baseline-src: a comparison with another checkout, run by hand"
        if args.record:
            print(f"bench_analyze_payload: not run ({why}); bench/results_analyze_payload.md "
                  "keeps its recorded comparison")
            return 0
        run_.write("\n".join(run_.header(TITLE) + [f"Not run: {why}."]))
        return 0
    rounds = args.rounds or (1 if args.quick else 5)
    from bench_analyze import LADDER, SUPER_PAGE, synthetic_map

    with tempfile.TemporaryDirectory() as tmp:
        maps = {}
        for name, shape in (() if args.quick else (("superpages 65,530 VMAs", SUPER_PAGE), ("ladder 65,530 VMAs", LADDER))):
            p = Path(tmp) / f"{name.split()[0]}.maps"
            p.write_text(synthetic_map(shape=shape))
            maps[name] = str(p)
        maps["renderer 1,400 VMAs"] = str(RENDERER)
        rows = []
        for name, path in maps.items():
            times = {"baseline": [], "this": []}
            last = {}
            for _ in range(rounds):
                for label, src in (("baseline", Path(args.baseline_src)), ("this", SRC)):
                    r = run(src, path)
                    times[label].append(r["seconds"])
                    last[label] = r
            med = {k: statistics.median(v) for k, v in times.items()}
            worst = {k: max(v) for k, v in times.items()}
            rows.append((name, med, worst, med["this"] / med["baseline"], last))
    lines = run_.header(TITLE, [
        f"`analyze()` alone (parsing excluded) in a fresh process per run, this checkout and "
        f"`{args.baseline_src}` alternating, {rounds} rounds; medians and worst, seconds."])
    lines += ["| map | baseline median / worst (s) | this median / worst (s) | ratio of medians | "
              "pte VMAs (this: guards only, +payload) |", "|---|---|---|---|---|"]
    for name, med, worst, ratio, last in rows:
        this = last["this"]
        lines.append(f"| {name} | {med['baseline']:.2f} / {worst['baseline']:.2f} | {med['this']:.2f} / "
                     f"{worst['this']:.2f} | {ratio:.2f} | {this['pte']:,}, {this.get('pte_payload', this['pte']):,} |")
    run_.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
