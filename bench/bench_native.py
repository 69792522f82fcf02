"""Guard markers vs the PROT_NONE fallback on this kernel, side by side in one run.

Run from the repository root:

    python3 bench/bench_native.py [--quick] [--record] [n_guards]

Measures (per mode): guard install/remove rates through ``Mapping``, the same
pattern through raw ctypes libc calls and (when gcc is there) in C, GuardedHeap
alloc/free rates, VMAs per 1,000 guards, the most guards before the VMA limit
and whether every refused guard past it is a ``VmaLimitError`` (each in a
child interpreter), and fork time with 10,000 guards. Prints a Markdown table and
writes it to ``out/bench/results_native.md``; ``--record`` to ``bench/results_native.md``.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

sys.path.insert(0, str(HERE))

from _common import Run, parser as bench_parser  # noqa: E402
from sparsemm import abi  # noqa: E402
from sparsemm.native import libc  # noqa: E402
from sparsemm.native.heap import GuardedHeap  # noqa: E402
from sparsemm.native.mapping import Mapping, map_count, max_map_count  # noqa: E402

P = abi.PAGE_SIZE
RW = abi.PROT_READ | abi.PROT_WRITE
FULL, QUICK = "about 1 minute", "about 10 s (1,000 guards, 3 repeats, smaller walls)"
REPEATS = 5  # best of, for the rate measurements (3 with --quick)

C_BENCH = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#define MADV_GUARD_REMOVE 103
#endif
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    long n = atol(argv[1]), page = 4096, best[4] = {0};
    double b[4] = {1e9, 1e9, 1e9, 1e9};
    for (int rep = 0; rep < 5; rep++) {
        char *m = mmap(0, (2 * n + 1) * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        double t0 = now();
        for (long i = 0; i < n; i++) if (madvise(m + (2 * i + 1) * page, page, MADV_GUARD_INSTALL)) return 1;
        double t1 = now();
        for (long i = 0; i < n; i++) if (madvise(m + (2 * i + 1) * page, page, MADV_GUARD_REMOVE)) return 2;
        double t2 = now();
        for (long i = 0; i < n; i++) if (mprotect(m + (2 * i + 1) * page, page, PROT_NONE)) return 3;
        double t3 = now();
        for (long i = 0; i < n; i++) if (mprotect(m + (2 * i + 1) * page, page, PROT_READ | PROT_WRITE)) return 4;
        double t4 = now();
        double d[4] = {t1 - t0, t2 - t1, t3 - t2, t4 - t3};
        for (int k = 0; k < 4; k++) if (d[k] < b[k]) b[k] = d[k];
        munmap(m, (2 * n + 1) * page);
    }
    printf("%.9f %.9f %.9f %.9f\n", b[0], b[1], b[2], b[3]);
    (void)best;
    return 0;
}
"""


def best_of(fn, repeats: int = REPEATS) -> float:
    best = float("inf")
    for _ in range(repeats):
        best = min(best, fn())
    return best


# -- guard install / remove through Mapping ------------------------------------------


def mapping_rates(mode: str, n: int) -> dict:
    """Seconds for n installs / n removes on alternating pages, and VMAs added per 1,000."""
    out = {}

    def run() -> float:
        with Mapping.reserve((2 * n + 1) * P, guard_mode=mode) as m:
            m.protect(0, (2 * n + 1) * P, "rw")
            before = map_count()
            guard, unguard = m.guard, m.unguard
            t0 = time.perf_counter()
            for i in range(n):
                guard((2 * i + 1) * P, P)
            t1 = time.perf_counter()
            out["vmas_per_1000"] = (map_count() - before) * 1000 / n
            for i in range(n):
                unguard((2 * i + 1) * P, P)
            t2 = time.perf_counter()
            out.setdefault("install", []).append(t1 - t0)
            out.setdefault("remove", []).append(t2 - t1)
        return 0.0

    for _ in range(REPEATS):
        run()
    out["install"] = min(out["install"])
    out["remove"] = min(out["remove"])
    return out


def raw_ctypes_rates(n: int) -> dict:
    """The same pattern as raw ctypes calls: madvise(GUARD_*), mprotect, mprotect+DONTNEED."""
    res: dict[str, list[float]] = {}
    madvise, mprotect = libc._madvise, libc._mprotect
    for _ in range(REPEATS):
        addr = libc.mmap(0, (2 * n + 1) * P, RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MapFlag.NORESERVE)
        pages = [addr + (2 * i + 1) * P for i in range(n)]
        if libc.guard_regions_supported():
            t0 = time.perf_counter()
            for a in pages:
                madvise(a, P, 102)
            t1 = time.perf_counter()
            for a in pages:
                madvise(a, P, 103)
            t2 = time.perf_counter()
            res.setdefault("madv_install", []).append(t1 - t0)
            res.setdefault("madv_remove", []).append(t2 - t1)
        t0 = time.perf_counter()
        for a in pages:
            mprotect(a, P, 0)
        t1 = time.perf_counter()
        for a in pages:
            mprotect(a, P, RW)
        t2 = time.perf_counter()
        for a in pages:
            mprotect(a, P, 0)
            madvise(a, P, 4)
        t3 = time.perf_counter()
        res.setdefault("mprot_install", []).append(t1 - t0)
        res.setdefault("mprot_remove", []).append(t2 - t1)
        res.setdefault("mprot_dontneed_install", []).append(t3 - t2)
        libc.munmap(addr, (2 * n + 1) * P)
    return {k: min(v) for k, v in res.items()}


def raw_c_rates(n: int) -> dict | None:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc or not libc.guard_regions_supported():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "b.c", Path(tmp) / "b"
        src.write_text(C_BENCH)
        if subprocess.run([gcc, "-O2", "-o", str(exe), str(src)], capture_output=True).returncode:
            return None
        out = subprocess.run([str(exe), str(n)], capture_output=True, text=True)
        if out.returncode:
            return None
    a, b, c, d = map(float, out.stdout.split())
    return {"madv_install": a, "madv_remove": b, "mprot_install": c, "mprot_remove": d}


# -- GuardedHeap ----------------------------------------------------------------------


def heap_rates(mode: str, n: int) -> dict:
    allocs, frees = [], []
    for _ in range(REPEATS):
        with GuardedHeap(guard_mode=mode, quarantine=64) as h:
            alloc, free = h.alloc, h.free
            t0 = time.perf_counter()
            views = [alloc(64) for _ in range(n)]
            t1 = time.perf_counter()
            for v in views:
                free(v)
            t2 = time.perf_counter()
            del views, v
            allocs.append(t1 - t0)
            frees.append(t2 - t1)
    return {"alloc": min(allocs), "free": min(frees), "tracking": tracking_cost(n)}


def tracking_cost(n: int) -> float:
    """Seconds for n of what alloc() adds to carving a slot so that a slot is never
    reused while a view of it lives: an exporter array, its byte view, a weak
    reference (all kept alive, as the caller keeps its allocations)."""
    import weakref

    best = float("inf")
    with Mapping.reserve((n + 1) * P) as m:
        m.protect(0, (n + 1) * P, "rw")
        for _ in range(REPEATS):
            kept = []
            t0 = time.perf_counter()
            for i in range(n):
                exporter = m._export(i * P, 64)
                kept.append((memoryview(exporter).cast("B"), weakref.ref(exporter)))
            best = min(best, time.perf_counter() - t0)
            del kept, exporter
    return best


# -- fork -------------------------------------------------------------------------------


def fork_time(mode: str | None, n: int, samples: int) -> float:
    """Median seconds for fork + child _exit + waitpid, with n guards (None: no mapping)."""
    m = None
    if mode is not None:
        m = Mapping.reserve((2 * n + 1) * P, guard_mode=mode)
        m.protect(0, (2 * n + 1) * P, "rw")
        for i in range(n):
            m.guard((2 * i + 1) * P, P)
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - t0)
    if m is not None:
        m.close()
    return statistics.median(times)


# -- walls (child interpreters) ----------------------------------------------------------

WALL_MAPPING = """
import sys, time
from sparsemm.native.mapping import Mapping, VmaLimitError, map_count
mode, limit = sys.argv[1], int(sys.argv[2])
m = Mapping.reserve((2 * limit + 41) * 4096, guard_mode=mode)
m.protect(0, (2 * limit + 41) * 4096, "rw")
before = map_count(); n = 0; err = ""
t0 = time.perf_counter()
try:
    while n < limit:
        m.guard((2 * n + 1) * 4096, 4096); n += 1
except VmaLimitError as exc:
    err = "VmaLimitError (ENOMEM)"
secs = time.perf_counter() - t0
again = [None] * 20  # past the wall, each further guard must be a VmaLimitError too
if err:
    for i in range(20):
        try:
            m.guard((2 * (n + i) + 1) * 4096, 4096)
            again[i] = "ok"
        except VmaLimitError:
            again[i] = "VmaLimitError"
        except BaseException as exc:
            again[i] = type(exc).__name__
total = map_count()
print(n, total - before, total, round(secs, 2), err or "-",
      sum(a == "VmaLimitError" for a in again) if err else "-", sep="|")
"""

WALL_HEAP = """
import sys
from sparsemm import GuardedHeap, VmaLimitError
mode, limit = sys.argv[1], int(sys.argv[2])
h = GuardedHeap(guard_mode=mode); views = []; err = "-"
try:
    while len(views) < limit:
        views.append(h.alloc(64))
except VmaLimitError as exc:
    err = "VmaLimitError (budget)"
s = h.stats()
print(len(views), s.vmas_added, s.heap_vmas, err, sep="|")
"""


def run_child(code: str, *args: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=env, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return out.stdout.strip().split("|")


# -- report ----------------------------------------------------------------------------------


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} /s ({seconds / n * 1e6:.2f} µs)"


def main(argv: list[str]) -> int:
    parser = bench_parser(__doc__, FULL, QUICK)
    parser.add_argument("n_guards", nargs="?", type=int, default=None,
                        help="guards per rate measurement (default 10,000; 1,000 with --quick)")
    args = parser.parse_args(argv)
    run = Run("native", args, argv, full=FULL, quick=QUICK)
    global REPEATS
    if args.quick:
        REPEATS = 3
    n = args.n_guards or (1_000 if args.quick else 10_000)
    markers = libc.guard_regions_supported()
    modes = (["markers"] if markers else []) + ["prot_none"]
    print(f"kernel {platform.release()}, markers {'yes' if markers else 'no'}, n={n}", flush=True)

    rows: dict[str, dict[str, str]] = {m: {} for m in modes}
    for mode in modes:
        r = mapping_rates(mode, n)
        rows[mode]["Mapping.guard install"] = rate(n, r["install"])
        rows[mode]["Mapping.unguard remove"] = rate(n, r["remove"])
        rows[mode]["VMAs added per 1,000 guards"] = f"{r['vmas_per_1000']:.0f}"
        rows[mode]["_install_s"] = r["install"]  # type: ignore[assignment]
        rows[mode]["_remove_s"] = r["remove"]  # type: ignore[assignment]
        h = heap_rates(mode, n)
        rows[mode]["GuardedHeap.alloc(64)"] = rate(n, h["alloc"])
        rows[mode]["GuardedHeap.free"] = rate(n, h["free"])
        rows[mode]["of alloc: view tracking (exporter, view, weakref)"] = rate(n, h["tracking"])
        print(mode, "rates done", flush=True)

    raw = raw_ctypes_rates(n)
    craw = raw_c_rates(n)
    if markers:
        rows["markers"]["raw ctypes install (madvise GUARD_INSTALL)"] = rate(n, raw["madv_install"])
        rows["markers"]["raw ctypes remove (madvise GUARD_REMOVE)"] = rate(n, raw["madv_remove"])
    rows["prot_none"]["raw ctypes install (mprotect NONE)"] = rate(n, raw["mprot_install"])
    rows["prot_none"]["raw ctypes install (mprotect NONE + DONTNEED)"] = rate(n, raw["mprot_dontneed_install"])
    rows["prot_none"]["raw ctypes remove (mprotect RW)"] = rate(n, raw["mprot_remove"])
    if craw:
        rows["markers"]["raw C install (madvise)"] = rate(n, craw["madv_install"])
        rows["markers"]["raw C remove (madvise)"] = rate(n, craw["madv_remove"])
        rows["prot_none"]["raw C install (mprotect NONE)"] = rate(n, craw["mprot_install"])
        rows["prot_none"]["raw C remove (mprotect RW)"] = rate(n, craw["mprot_remove"])
    print("raw done", flush=True)

    samples = 7 if args.quick else 21
    base_fork = fork_time(None, 0, samples)
    for mode in modes:
        rows[mode]["fork+exit+wait, 10,000 guards"] = f"{fork_time(mode, 10_000, samples) * 1e3:.2f} ms"
    print("fork done", flush=True)

    # prot_none always runs into the real wall (~32,700 guards); markers have none.
    wall_limit = {"markers": 20_000 if args.quick else 200_000, "prot_none": 100_000}
    heap_limit = 40_000 if args.quick else 100_000
    for mode in modes:
        got, added, total, secs, err, again = run_child(WALL_MAPPING, mode, str(wall_limit[mode]))
        verdict = err if err != "-" else f"all {int(got):,} fine"
        rows[mode]["Mapping: most guards before ENOMEM"] = (
            f"{int(got):,} ({verdict}; +{int(added):,} VMAs, {int(total):,} total)")
        rows[mode]["past the wall: guards refused as VmaLimitError"] = (
            f"{again}/20" if again != "-" else "no wall")
        hgot, hadded, hvmas, herr = run_child(WALL_HEAP, mode, str(heap_limit))
        hverdict = herr if herr != "-" else "all fine"
        rows[mode][f"GuardedHeap: live allocations (limit {heap_limit:,})"] = (
            f"{int(hgot):,} ({hverdict}; +{int(hadded):,} VMAs, {hvmas} in the heap)")
    print("walls done", flush=True)

    keys = [k for k in rows[modes[-1]] if not k.startswith("_")]
    for k in rows.get("markers", {}):
        if k not in keys and not k.startswith("_"):
            keys.append(k)
    order = ["Mapping.guard install", "Mapping.unguard remove", "raw ctypes install (madvise GUARD_INSTALL)",
             "raw ctypes remove (madvise GUARD_REMOVE)", "raw ctypes install (mprotect NONE)",
             "raw ctypes install (mprotect NONE + DONTNEED)", "raw ctypes remove (mprotect RW)",
             "raw C install (madvise)", "raw C remove (madvise)", "raw C install (mprotect NONE)",
             "raw C remove (mprotect RW)", "GuardedHeap.alloc(64)",
             "of alloc: view tracking (exporter, view, weakref)", "GuardedHeap.free",
             "VMAs added per 1,000 guards", "Mapping: most guards before ENOMEM",
             "past the wall: guards refused as VmaLimitError",
             f"GuardedHeap: live allocations (limit {heap_limit:,})", "fork+exit+wait, 10,000 guards"]
    keys = [k for k in order if k in keys]
    lines = ["| measure | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(rows[m].get(k, "n/a (other mode)") for m in modes) + " |")
    table = "\n".join(lines)

    notes = [f"- fork+exit+wait with no extra mapping: {base_fork * 1e3:.2f} ms (baseline)."]
    if markers:
        wr_in = rows["prot_none"]["_install_s"] / rows["markers"]["_install_s"]  # type: ignore[operator]
        wr_rm = rows["prot_none"]["_remove_s"] / rows["markers"]["_remove_s"]  # type: ignore[operator]
        py_in = raw["mprot_install"] / raw["madv_install"]
        py_rm = raw["mprot_remove"] / raw["madv_remove"]
        py_fb = raw["mprot_dontneed_install"] / raw["madv_install"]
        line = (f"- prot_none/markers time ratio, install: wrappers {wr_in:.2f}x, raw ctypes "
                f"mprotect {py_in:.2f}x (mprotect+DONTNEED {py_fb:.2f}x)")
        if craw:
            c_in = craw["mprot_install"] / craw["madv_install"]
            c_rm = craw["mprot_remove"] / craw["madv_remove"]
            line += f", raw C {c_in:.2f}x"
        notes.append(line + ".")
        line = f"- same ratio, remove: wrappers {wr_rm:.2f}x, raw ctypes {py_rm:.2f}x"
        if craw:
            line += f", raw C {c_rm:.2f}x"
        notes.append(line + ".")
        if craw:
            notes.append(f"- the wrappers keep {(wr_in - 1) / (c_in - 1) * 100:.0f} % of the kernel's "
                         f"install advantage ((ratio-1) relative to C) and "
                         f"{(wr_rm - 1) / (c_rm - 1) * 100:.0f} % of its remove advantage.")

    doc = run.header("native: guard markers vs the PROT_NONE fallback (`bench/bench_native.py`)", [
        f"vm.max_map_count {max_map_count()}; {n:,} guards on alternating pages of one read-write "
        f"MAP_NORESERVE mapping; rates: best of {REPEATS}; fork: median of {samples}.",
        "The wall rows run in a child interpreter each; the heap leaves 64 VMAs of headroom "
        "below vm.max_map_count for the interpreter."])
    run.write("\n".join([*doc, table, "", *notes]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
