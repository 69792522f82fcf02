"""Benchmark of sparsemm.model.vma_tree.VmaTree at 1,000,000 VMAs: median µs per operation, index bytes per VMA.

Run: PYTHONPATH=src python3 bench/bench_vma_tree.py [n_vmas] [samples]
Layout: VMAs of 1-16 pages; 70% adjacent to their predecessor, 30% after a 1-64 page gap.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
import tracemalloc

from sparsemm.abi import PAGE_SIZE
from sparsemm.model.vma_tree import VmaTree

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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    nsamples = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
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

    print(f"VmaTree, {n:,} VMAs, LOAD={VmaTree.LOAD}, {len(tree._starts)} blocks, "
          f"Python {sys.version.split()[0]}")
    print(f"build by {n:,} ordered inserts: {build_s:.2f} s ({build_s / n * 1e6:.2f} µs each); "
          f"check(): {check_s:.2f} s")
    print(f"index memory (tracemalloc, VMA objects excluded): {index_bytes / n:.1f} bytes/VMA")
    print(f"slots {tree.slot_count:,}, gaps {tree.gap_count:,}, modelled maple nodes {tree.node_count():,}")
    print()
    print(f"{'operation':28} {'samples':>8} {'median µs':>10} {'p90 µs':>8} {'p99 µs':>8}")
    for name, xs in res.items():
        xs.sort()
        print(f"{name:28} {len(xs):8} {statistics.median(xs):10.2f} "
              f"{xs[int(len(xs) * 0.9)]:8.2f} {xs[int(len(xs) * 0.99)]:8.2f}")


if __name__ == "__main__":
    main()
