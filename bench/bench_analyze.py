"""Benchmark of ``sparsemm analyze``: a synthetic 65,530-VMA map analyzed under all three designs.

The map (made here) is PartitionAlloc-shaped: 2 MiB super pages of
``rw-p 8K | ---p 8K | rw-p 64K | ---p 4K | rw-p 128K | ---p 1836K`` back to back, plus a
few hundred file-backed VMAs, cut at exactly 65,530 VMAs (the default vm.max_map_count).

Run: ``cd /work/main && PYTHONPATH=src python3 bench/bench_analyze.py [--repeat N] [--profile] [--no-write]``
Prints a table and writes ``bench/results_analyze_designs.md`` (best of N, wall clock).
``--profile`` prints the top of a cProfile of one full analysis.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

from sparsemm.analyze.guards import find_guards
from sparsemm.analyze.maps import parse_maps
from sparsemm.analyze.rebuild import build_layout
from sparsemm.analyze.report import analyze
from sparsemm.model import designs
from sparsemm.opscript.designs import design_free_prefix, run_design, run_designs_shared
from sparsemm.opscript.script import parse_script

RESULTS = Path(__file__).resolve().parent / "results_analyze_designs.md"
TARGET_VMAS = 65_530
SUPER_PAGE = [("rw-p", 8), ("---p", 8), ("rw-p", 64), ("---p", 4), ("rw-p", 128), ("---p", 1836)]  # KiB
LADDER = [("rw-p", 60), ("---p", 4)]  # KiB: page-sized guards, the VMA design's worst case
SHAPES = {"superpages": SUPER_PAGE, "ladder": LADDER}


def synthetic_map(nvmas: int = TARGET_VMAS, files: int = 400, shape=SUPER_PAGE) -> str:
    """``nvmas`` maps lines: ``files`` library VMAs high, the repeated ``shape`` low. O(n)."""
    out = []
    addr = 0x5600_0000_0000
    for i in range(files):
        perms = ("r--p", "r-xp", "r--p", "rw-p")[i % 4]
        end = addr + 16 * 4096
        out.append(f"{addr:x}-{end:x} {perms} {(i % 4) * 16 * 4096:08x} fe:00 {1000 + i // 4}".ljust(73)
                   + f"/usr/lib/lib{i // 4}.so")
        addr = end + (4096 if i % 4 == 3 else 0)
    addr = 0x1000_0000_0000
    n = files
    while n < nvmas:
        for perms, kib in shape:
            if n == nvmas:
                break
            end = addr + kib * 1024
            out.append(f"{addr:x}-{end:x} {perms} 00000000 00:00 0 ")
            addr = end
            n += 1
    # maps is address-ordered: the super pages (0x1000…) come before the libraries (0x5600…)
    return "\n".join(out[files:] + out[:files]) + "\n"


def timed(fn, repeat: int) -> tuple[list[float], object]:
    """(wall times of ``repeat`` runs, the last result)."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = timed(fn, repeat)
    return min(times), out


def _bench_shape(shape, repeat: int, rows: list) -> float:
    """Time each stage of the analysis of one synthetic map; append rows; return the total."""
    entries = parse_maps(synthetic_map(shape=shape), "synthetic")
    assert len(entries) == TARGET_VMAS
    t, cls = best(lambda: find_guards(entries), repeat)
    rows.append(("find_guards", t, f"{cls.summary.guards:,} guards"))
    t, lay = best(lambda: build_layout(entries, cls), repeat)
    rows.append(("build_layout (rebuild script)", t, f"{len(lay.script['ops']):,} ops"))
    t, script = best(lambda: parse_script(lay.script), repeat)
    k = design_free_prefix(script)
    rows.append(("parse_script (the layout script)", t, f"{k:,} ops before the first guard op"))
    for d in designs.names():
        t, res = best(lambda d=d: run_design(script, d), repeat)
        rows.append((f"model run, design {d} alone (whole script)", t, res.error or f"{res.counts.vmas:,} VMAs"))
    t, _ = best(lambda: run_designs_shared(script, parallel=False), repeat)
    rows.append(("run_designs_shared, one design at a time", t, "prefix once, 3 tails"))
    t, _ = best(lambda: run_designs_shared(script, parallel=True), repeat)
    rows.append(("run_designs_shared, parallel", t, "prefix once, 3 tails at once"))
    times, rep = timed(lambda: analyze(entries, source="synthetic"), repeat)
    t, med = min(times), statistics.median(times)
    rows.append(("analyze() total (best; median, worst in the result column)", t,
                 f"median {med:.2f} s, worst {max(times):.2f} s; " + "; ".join(
                     f"{n} {d.map_count:,}" if not d.error else f"{n} n/a" for n, d in rep.designs.items())))
    return med


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    rows = []
    totals = {}
    for shape_name, shape in SHAPES.items():
        rows.append((f"**{shape_name}** map", None, " · ".join(f"`{p} {k}K`" for p, k in shape)))
        totals[shape_name] = _bench_shape(shape, args.repeat, rows)
    width = max(len(r[0]) for r in rows)
    table = [f"| {'what':<{width}} | time ms | result |", f"|{'-' * (width + 2)}|---------|--------|"]
    table += [f"| {name:<{width}} | {'' if t is None else f'{t * 1000:7.1f}':>7} | {what} |"
              for name, t, what in rows]
    print("\n".join(table))
    total = max(totals.values())
    verdict = "under" if total < 2.0 else "OVER"
    summary = ", ".join(f"{k} {v:.2f} s" for k, v in totals.items())
    print(f"\nanalyze total (median of {args.repeat}): {summary}; worst {verdict} the 2 s target")

    prof = ""
    if args.profile or total >= 2.0:
        worst = max(totals, key=totals.get)
        entries = parse_maps(synthetic_map(shape=SHAPES[worst]), "synthetic")
        import cProfile
        import io
        import pstats

        def in_one_process():
            # what analyze() does, with every design in this process so the profiler sees it
            cls = find_guards(entries)
            script = parse_script(build_layout(entries, cls).script)
            for d in designs.names():
                run_design(script, d)

        pr = cProfile.Profile()
        pr.enable()
        in_one_process()
        pr.disable()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(18)
        prof = s.getvalue()
        print(prof)

    if not args.no_write:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        doc = [
            "# analyze: a 65,530-VMA map under all three designs",
            "",
            f"- Date: {now}",
            f"- Command: `cd /work/main && PYTHONPATH=src python3 bench/bench_analyze.py --repeat {args.repeat}`",
            f"- Python {platform.python_version()}, {platform.machine()}, kernel {platform.release()}; "
            f"best of {args.repeat} runs per row (the analyze() row also gives the median and worst), wall clock; shared 2-vCPU machine (treat as ±30 %).",
            "- Inputs: synthetic maps of exactly 65,530 VMAs: 400 file VMAs plus a repeated shape, "
            "**superpages** (PartitionAlloc-like 2 MiB super pages; the 1836K trailing `---p` is a guard "
            "by the default policy's cost test) or **ladder** (`rw-p 60K | ---p 4K`: page-sized guards). "
            "maps, not smaps, so touch=first.",
            "",
            *table,
            "",
            f"Total analyze() time, all three designs, median of {args.repeat}: **{summary}** "
            f"(worst {verdict} the 2 s target).",
            "",
            "Where the time goes (see the profile below):",
            "",
            "- Before the model: `find_guards` ~0.1 s, `build_layout` ~0.1 s, `parse_script` ~0.2 s "
            "(one `Op` per op; the cyclic GC is paused through these stages, `sparsemm._gc`).",
            "- The model: every op before the first guard op (401 mmaps, 32,565 touches) behaves the "
            "same under every design, so `run_designs_shared` runs it once (~0.2 s), then forks one "
            "child per design to replay only the 32,565 guard installs (CPU: `vma` ~0.45-0.7 s, "
            "`pte` ~0.25-0.4 s). `analyze` starts the slowest design, `tree`, from scratch in a child "
            "as soon as the layout is built (parse + whole replay, ~1.1 s of CPU), so it runs on "
            "the core that parsing and the shared prefix leave idle.",
            "- The rows \"design X alone\" replay the whole script in this process with the GC on: "
            "what `sparsemm designs` pays per design.",
            "- Gains since the first version of this benchmark (3.3-3.5 s): marker runs instead of one "
            "dict entry per marker page (`pte` tail 1.1 s -> 0.3 s on super pages), the shared "
            "prefix, `VmaTree.split`/`replace` (one lookup per split, a guard entry takes its VMA's "
            "slot), a 3x faster `find_guards`/`build_layout`, a non-frozen `Op`, the GC paused.",
        ]
        if prof:
            doc += ["", f"Profile of the stages of one analysis of the {worst} map (cProfile, cumulative; "
                    "each design replays the whole script in the profiled process, as `run_design` does):",
                    "", "```",
                    prof.strip(), "```"]
        RESULTS.write_text("\n".join(doc) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
