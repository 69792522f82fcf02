"""Benchmark of sparsemm.model.vma_tree.VmaTree at 1,000,000 VMAs: median µs per operation, index bytes per VMA.

Layout: VMAs of 1-16 pages; 70% adjacent to their predecessor, 30% after a 1-64 page gap. The
index alone (VMA objects excluded); each operation timed alone, in this process.
Run: ``PYTHONPATH=src python3 bench/bench_vma_tree.py [--vmas N] [--samples N]``.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Run, parser  # noqa: E402
from sparsemm.abi import PAGE_SIZE  # noqa: E402
from sparsemm.model.vma_tree import VmaTree  # noqa: E402

FULL, QUICK = "3 to 5 minutes", "about 5 s"

P = PAGE_SIZE


class Vma:
    """Stand-in for model.vma.Vma (bounds only)."""

    __slots__ = ("vm_start", "vm_end")

    def __init__(self, vm_start: int, vm_end: int) -> None:
        self.vm_start = vm_start
        self.vm_end = vm_end


def make_layout(n: int, rng: random.Random) -> list[Vma]:
    out = []
    addr = 0x10000
    for _ in range(n):
        if rng.random() < 0.3:
            addr += rng.randint(1, 64) * P
        size = rng.randint(1, 16) * P
        out.append(Vma(addr, addr + size))
        addr += size
    return out


def timed(samples: list[float], fn, *args):
    t0 = time.perf_counter_ns()
    r = fn(*args)
    samples.append((time.perf_counter_ns() - t0) / 1000)
    return r


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--vmas", type=int, help="VMAs (default 1,000,000; --quick 50,000)")
    ap.add_argument("--samples", type=int, help="samples per operation (default 20,000; --quick 2,000)")
    args = ap.parse_args(argv)
    run = Run("vma_tree", args, argv, full=FULL, quick=QUICK)
    n = args.vmas or (50_000 if args.quick else 1_000_000)
    nsamples = args.samples or (2_000 if args.quick else 20_000)
    rng = random.Random(1)
    vmas = make_layout(n, rng)
    gc.collect()

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tree = VmaTree()
    for v in vmas:
        tree.insert(v)
    gc.collect()
    index_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    del tree
    gc.collect()

    t0 = time.perf_counter()
    tree = VmaTree()
    insert = tree.insert
    for v in vmas:
        insert(v)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tree.check()
    check_s = time.perf_counter() - t0

    res: dict[str, list[float]] = {k: [] for k in (
        "find", "find_vma", "insert", "remove", "set_bounds (split)", "set_bounds (merge back)",
        "unmapped_area_topdown", "unmapped_area (bottom-up)")}
    top = vmas[-1].vm_end
    gc.disable()
    for _ in range(nsamples):
        v = vmas[rng.randrange(n)]
        timed(res["find"], tree.find, rng.randrange(v.vm_start, v.vm_end))
        timed(res["find_vma"], tree.find_vma, rng.randrange(0x10000, top))
        timed(res["remove"], tree.remove, v)
        timed(res["insert"], tree.insert, v)
        s, e = v.vm_start, v.vm_end
        if e - s >= 2 * P:
            mid = s + rng.randrange(1, (e - s) // P) * P
            timed(res["set_bounds (split)"], tree.set_bounds, v, s, mid)
            tail = Vma(mid, e)
            tree.insert(tail)
            tree.remove(tail)
            timed(res["set_bounds (merge back)"], tree.set_bounds, v, s, e)
        length = rng.randint(1, 64) * P
        high = rng.randrange(0x10000, top) & ~(P - 1)
        timed(res["unmapped_area_topdown"], tree.unmapped_area_topdown, length, 0, high)
        low = rng.randrange(0x10000, top) & ~(P - 1)
        timed(res["unmapped_area (bottom-up)"], tree.unmapped_area, length, low, top + (1 << 30))
    gc.enable()
    tree.check()

    lines = run.header(f"VmaTree at {n:,} VMAs (`bench/bench_vma_tree.py`)", [
        f"{n:,} VMAs of 1–16 pages, 30% after a gap of 1–64 pages; {nsamples:,} samples per "
        f"operation, each timed alone (`perf_counter_ns`, the garbage collector off); "
        f"LOAD={VmaTree.LOAD} ({len(tree._starts):,} blocks). The index alone (VMA objects excluded); "
        "the whole model's per-operation figures are in the model benchmark.",
        f"Index memory: {index_bytes / n:.1f} bytes per VMA (tracemalloc). Building by {n:,} ordered "
        f"inserts: {build_s:.1f} s ({build_s / n * 1e6:.2f} µs each); `check()`: {check_s:.2f} s. "
        f"Slots {tree.slot_count:,}, gaps {tree.gap_count:,}, modelled maple nodes {tree.node_count():,}."])
    lines += ["| operation | median µs | p90 | p99 |", "|---|---|---|---|"]
    for name, xs in res.items():
        xs.sort()
        lines.append(f"| {name} | {statistics.median(xs):.2f} | {xs[int(len(xs) * 0.9)]:.2f} | "
                     f"{xs[int(len(xs) * 0.99)]:.2f} |")
    run.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
