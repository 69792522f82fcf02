"""The model at scale: one AddressSpace with 1,000,000 VMAs, op by op.

Builds 1,000,000 two-page anonymous VMAs (alternating r/rw, each followed by a two-page gap)
and times, each op alone at distinct random VMAs: mmap (MAP_FIXED_NOREPLACE into a gap, a new
VMA), munmap of that VMA, an mprotect that splits a VMA, an munmap that splits one. Gives the
median and p90 microseconds of each, and traced bytes per VMA (tracemalloc over the build).
Targets: issue 15's 8 us median per op; < 400 bytes per VMA.

The replay against the kernel is ``bench_replay.py``; the comparison with Qiling's memory
manager is ``bench_qiling.py``. Run: ``PYTHONPATH=src python3 bench/bench_model.py``.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _common import Run, parser  # noqa: E402
from sparsemm.abi import MapFlag  # noqa: E402
from sparsemm.model.mm import AddressSpace  # noqa: E402

FULL, QUICK = "10 to 15 minutes (most of it the build under tracemalloc)", "about 10 s"
PAGE = 4096
BASE = 0x1000_0000_0000          # far from the arena
STRIDE = 4 * PAGE                # each region: 2 pages mapped, then a 2-page gap
MAP_FIXED = int(MapFlag.PRIVATE | MapFlag.ANONYMOUS | MapFlag.FIXED)
MAP_NOREPLACE = int(MapFlag.PRIVATE | MapFlag.ANONYMOUS | MapFlag.FIXED_NOREPLACE)
PROT_R, PROT_RW, PROT_RX, PROT_NONE = 1, 3, 5, 0

OP_TARGET_US = 8.0   # issue 15
BYTES_TARGET = 400


def median(xs):
    return statistics.median(xs)


def p90(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, (len(xs) * 9) // 10)]


# ---------------------------------------------------------------------------------------
# 2. One million VMAs.


def build_model(n: int) -> AddressSpace:
    """n two-page VMAs, alternating r/rw, each followed by a two-page gap."""
    mm = AddressSpace(max_map_count=10**7)
    mmap = mm.mmap
    for i in range(n):
        mmap(BASE + i * STRIDE, 2 * PAGE, PROT_RW if i & 1 else PROT_R, MAP_FIXED)
    return mm


def time_each(fn, args) -> list[float]:
    pc = time.perf_counter
    out = []
    for a in args:
        t0 = pc()
        fn(a)
        out.append((pc() - t0) * 1e6)
    return out


def model_ops(mm: AddressSpace, n: int, k: int, seed: int = 1) -> dict[str, list[float]]:
    """k of each op at distinct random regions of a build_model(n) space; microseconds each.

    mmap: one PROT_NONE page with MAP_FIXED_NOREPLACE into a gap (a new VMA, no merge);
    munmap: those new VMAs again; mprotect split: the first page of a VMA to r-x (2 VMAs);
    munmap split: the last page of another VMA (split, then unmap the tail).
    """
    rng = random.Random(seed)
    idx = rng.sample(range(n), 3 * k)
    gaps = [BASE + i * STRIDE + 2 * PAGE for i in idx[:k]]
    prot = [BASE + i * STRIDE for i in idx[k:2 * k]]
    tails = [BASE + i * STRIDE + PAGE for i in idx[2 * k:]]
    res = {}
    res["mmap (FIXED_NOREPLACE, new VMA in a gap)"] = time_each(
        lambda a: mm.mmap(a, PAGE, PROT_NONE, MAP_NOREPLACE), gaps)
    res["munmap (a whole VMA)"] = time_each(lambda a: mm.munmap(a, PAGE), gaps)
    res["mprotect (splits a VMA)"] = time_each(lambda a: mm.mprotect(a, PAGE, PROT_RX), prot)
    res["munmap (splits a VMA)"] = time_each(lambda a: mm.munmap(a, PAGE), tails)
    return res


def bench_million(n: int, k: int, check: bool) -> dict:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    mm = build_model(n)
    build_s = time.perf_counter() - t0
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert mm.map_count == n, mm.map_count
    out = {"vmas": n, "build_s_traced": build_s, "bytes_per_vma": (after - before) / n,
           "pt_entries": len(mm.pt)}
    print(f"  built {n} VMAs in {build_s:.1f}s (under tracemalloc): "
          f"{out['bytes_per_vma']:.0f} traced bytes per VMA", flush=True)
    ops = model_ops(mm, n, k)
    out["ops"] = {name: (median(ts), p90(ts)) for name, ts in ops.items()}
    for name, (m, p) in out["ops"].items():
        print(f"  {name}: median {m:.1f} us, p90 {p:.1f} us", flush=True)
    out["map_count_after"] = mm.map_count
    if check:
        t0 = time.perf_counter()
        mm.check()
        print(f"  AddressSpace.check() passed ({time.perf_counter() - t0:.1f}s)", flush=True)
    return out


# ---------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--vmas", type=int, help="VMAs (default 1,000,000; --quick 10,000)")
    ap.add_argument("--samples", type=int, help="timed ops of each kind (default 2,000; --quick 200)")
    ap.add_argument("--check", action="store_true", help="AddressSpace.check() after the ops")
    args = ap.parse_args(argv)
    run = Run("model", args, argv, full=FULL, quick=QUICK)
    n = args.vmas or (10_000 if args.quick else 1_000_000)
    k = args.samples or (200 if args.quick else 2000)
    print(f"{n:,} VMAs in one AddressSpace", flush=True)
    million = bench_million(n, k, args.check)
    lines = run.header(
        f"The model at {n:,} VMAs, op by op (`bench/bench_model.py`)",
        [f"Layout: {n:,} two-page anonymous VMAs, alternating r/rw, each followed by a two-page "
         "gap, in one `AddressSpace(max_map_count=10**7)`. Each op is timed alone with "
         f"`perf_counter` ({k:,} of each kind, at distinct random VMAs), in this process, the "
         "garbage collector on. Targets: median at most "
         f"{OP_TARGET_US:.0f} us per op (issue 15), fewer than {BYTES_TARGET} bytes per VMA."])
    lines += ["| op | median us | p90 us | target |", "|---|---|---|---|"]
    for name, (m, p) in million["ops"].items():
        lines.append(f"| {name} | {m:.1f} | {p:.1f} | {verdict(m <= OP_TARGET_US)} |")
    bpv = million["bytes_per_vma"]
    lines += ["", f"Memory: {bpv:.0f} traced bytes per VMA (tracemalloc over the whole build: "
              f"Vma objects, the VmaTree, the AddressSpace; no page-table entries, "
              f"{million['pt_entries']} present): {verdict(bpv < BYTES_TARGET)}. "
              f"Build: {million['build_s_traced']:.0f} s under tracemalloc.", ""]
    run.write("\n".join(lines))
    return 0


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
