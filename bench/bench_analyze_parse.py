"""Benchmark of ``sparsemm.analyze``: parse time of 100k-line maps and smaps files and guard
finding at 65,530 VMAs (the default vm.max_map_count), on synthetic inputs made here.

In-process timings of the parsers and of ``find_guards`` alone (best of N, wall clock): no
start-up, imports or file reading (``bench_analyze.py`` times the whole CLI).
Run: ``PYTHONPATH=src python3 bench/bench_analyze_parse.py [--repeat N]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _common import Run, parser  # noqa: E402
from sparsemm import abi  # noqa: E402
from sparsemm.analyze.guards import GuardPolicy, find_guards  # noqa: E402
from sparsemm.analyze.maps import parse_maps, parse_smaps  # noqa: E402

FULL, QUICK = "about 1 minute", "about 5 s"
SMAPS_COUNTERS = ("Size", "KernelPageSize", "MMUPageSize", "Rss", "Pss", "Pss_Dirty", "Shared_Clean",
                  "Shared_Dirty", "Private_Clean", "Private_Dirty", "Referenced", "Anonymous", "KSM",
                  "LazyFree", "AnonHugePages", "ShmemPmdMapped", "FilePmdMapped", "Shared_Hugetlb",
                  "Private_Hugetlb", "Swap", "SwapPss", "Locked")


def _vma_line(i: int, addr: int, end: int) -> str:
    # A realistic mix: guard / anonymous rw / file-backed with a padded path column.
    if i % 3 == 0:
        return f"{addr:x}-{end:x} ---p 00000000 00:00 0 "
    if i % 3 == 1:
        return f"{addr:x}-{end:x} rw-p 00000000 00:00 0 "
    return f"{addr:x}-{end:x} r-xp {i:08x} fe:00 338944".ljust(73) + "/usr/lib/x86_64-linux-gnu/libfoo.so"


def synthetic_maps(nlines: int) -> str:
    out, addr = [], 0x100000000000
    for i in range(nlines):
        out.append(_vma_line(i, addr, addr + abi.PAGE_SIZE))
        addr += abi.PAGE_SIZE
    return "\n".join(out) + "\n"


def synthetic_smaps(nvmas: int) -> str:
    """smaps as Linux 6.18 prints it: 22 counters, THPeligible, VmFlags (25 lines per VMA)."""
    out, addr = [], 0x100000000000
    for i in range(nvmas):
        out.append(_vma_line(i, addr, addr + abi.PAGE_SIZE))
        for key in SMAPS_COUNTERS:
            out.append(f"{key + ':':<16}{4 if key in ('Size', 'KernelPageSize', 'MMUPageSize') else 0:>8} kB")
        out.append(f"{'THPeligible:':<16}{0:>8}")
        out.append("VmFlags: " + ("mr mw me sd " if i % 3 == 0 else "rd wr mr mw me ac sd "))
        addr += abi.PAGE_SIZE
    return "\n".join(out) + "\n"


def ladder(nvmas: int) -> str:
    """A guard ladder: G R G R ..., the worst case for the VMA design."""
    out, addr = [], 0x100000000000
    for i in range(nvmas):
        size = abi.PAGE_SIZE if i % 2 == 0 else 15 * abi.PAGE_SIZE
        out.append(f"{addr:x}-{addr + size:x} {'---p' if i % 2 == 0 else 'rw-p'} 00000000 00:00 0 ")
        addr += size
    return "\n".join(out) + "\n"


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--repeat", type=int, help="runs per row, best kept (default 5; --quick 1)")
    args = ap.parse_args(argv)
    run = Run("analyze", args, argv, full=FULL, quick=QUICK)
    repeat = args.repeat or (1 if args.quick else 5)
    scale = 10 if args.quick else 1
    nmax = abi.DEFAULT_MAX_MAP_COUNT // scale

    maps_text = synthetic_maps(100_000 // scale)
    smaps_text = synthetic_smaps(4_000 // scale)  # 100,000 lines
    smaps_big = synthetic_smaps(nmax)  # 1,638,250 lines: a process at the map-count wall
    ladder_entries = parse_maps(ladder(nmax))

    rows = []  # (what, lines, vmas, seconds)
    t, es = best_of(repeat, lambda: parse_maps(maps_text, "synthetic.maps"))
    rows.append(("parse_maps", maps_text.count("\n"), len(es), t))
    t, es = best_of(repeat, lambda: parse_smaps(smaps_text, "synthetic.smaps"))
    rows.append(("parse_smaps", smaps_text.count("\n"), len(es), t))
    t, es = best_of(max(1, repeat // 2), lambda: parse_smaps(smaps_big, "big.smaps"))
    rows.append(("parse_smaps", smaps_big.count("\n"), len(es), t))
    t, c = best_of(repeat, lambda: find_guards(ladder_entries))
    if c.summary.vmas != nmax or c.summary.vmas_if_markers != 1:
        raise SystemExit(f"bench_analyze_parse: the ladder gave {c.summary.vmas} VMAs, "
                         f"{c.summary.vmas_if_markers} with markers")
    rows.append(("find_guards (ladder, default policy)", 0, c.summary.vmas, t))
    t, c = best_of(repeat, lambda: find_guards(ladder_entries, GuardPolicy.strict()))
    rows.append(("find_guards (ladder, strict policy)", 0, c.summary.vmas, t))

    header = f"| {'what':<40} | {'lines':>9} | {'VMAs':>7} | {'time ms':>8} | {'µs/line':>7} | {'µs/VMA':>7} |"
    sep = "|" + "|".join("-" * (len(cell) + 0) for cell in header.split("|")[1:-1]) + "|"
    table = [header, sep]
    for what, lines, vmas, secs in rows:
        per_line = f"{secs * 1e6 / lines:.2f}" if lines else "-"
        table.append(f"| {what:<40} | {lines or '-':>9} | {vmas:>7} | {secs * 1e3:>8.1f} | {per_line:>7} | "
                     f"{secs * 1e6 / vmas:>7.2f} |")
    doc = run.header("analyze: parsing and guard finding, in one process (`bench/bench_analyze_parse.py`)", [
        f"Best of {repeat} runs (the big smaps: best of {max(1, repeat // 2)}), wall clock, in the "
        "bench's process on text already in memory: no start-up, imports or file reading "
        "(bench_analyze.py times the whole CLI).",
        "Inputs are synthetic (generated by the script): maps lines cycle guard / anon rw / "
        "file-backed; smaps blocks have the 25 lines Linux 6.18 prints; the ladder is "
        f"`---p 4K | rw-p 60K` repeated to {nmax:,} VMAs."])
    run.write("\n".join(doc + table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
