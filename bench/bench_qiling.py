"""The model's region bookkeeping against Qiling's, and against Qiling's full emulator.

The same layout on each side: N two-page regions (alternating r/rw, each followed by a
two-page gap), at N = 1,000, 10,000 and 100,000; then the same ops at distinct random regions,
each timed alone: protect (the first page of a region to r-x: a split), map (one PROT_NONE
page into a gap: a new region) and unmap (that page again). Three sides, each scale of each
side in a fresh process (one side's heap never slows another's):

- **model**: ``AddressSpace.mprotect``/``mmap`` (MAP_FIXED_NOREPLACE)/``munmap``, which also
  keep VMA flags, merges, anon_vma and page-table state.
- **Qiling's bookkeeping**: the region tracking of Qiling's ``QlMemoryManager`` alone, without
  unicorn: ``change_mapinfo`` (what ``protect`` does after ``uc.mem_protect``),
  ``is_available`` + ``add_mapinfo`` (``map`` without ``uc.mem_map``), ``del_mapinfo``
  (``unmap`` without ``uc.mem_unmap``). Its list of ``(start, end, perms, label, mmio)``
  tuples is kept sorted; each of these calls scans it.
- **Qiling's emulator**: ``ql.mem.protect``/``map``/``unmap``, unicorn's RAM included.

Build: the regions are added one by one (bookkeeping: ``add_mapinfo`` alone, as the layout is
known free; emulator: ``ql.mem.map``). Qiling is optional: it runs in this interpreter if it
imports (``pip install -e '.[qiling]'``), else in ``--qiling-python`` (or ``QILING_PYTHON``);
without either the Qiling rows are skipped with a message. Each side times at most
``--budget`` seconds of ops per kind (at least 20 ops); the results give how many were timed.
Run: ``PYTHONPATH=src python3 bench/bench_qiling.py [--qiling-python PATH]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FULL, QUICK = "about 7 minutes", "about 15 s"
PAGE = 4096
BASE = 0x1000_0000_0000
STRIDE = 4 * PAGE
PROT_R, PROT_RW, PROT_RX, PROT_NONE = 1, 3, 5, 0
SIDES = ("model", "book", "emu")
SIDE_NAMES = {"model": "model", "book": "Qiling bookkeeping", "emu": "Qiling emulator"}
MIN_OPS = 20


def targets(n: int, k: int) -> tuple[list[int], list[int]]:
    """(protect addresses, gap addresses): ``k`` each, at distinct random regions of ``n``."""
    idx = random.Random(2).sample(range(n), 2 * min(k, n // 2))
    half = len(idx) // 2
    return ([BASE + i * STRIDE for i in idx[:half]],
            [BASE + i * STRIDE + 2 * PAGE for i in idx[half:]])


def time_ops(fn, addrs: list[int], budget: float) -> dict:
    """Each call of ``fn(addr)`` timed alone, until ``budget`` seconds (at least MIN_OPS)."""
    pc = time.perf_counter
    times, errors = [], []
    start = pc()
    for a in addrs:
        t0 = pc()
        try:
            fn(a)
        except Exception as exc:  # noqa: BLE001 - unicorn's limits: reported, not fatal
            errors.append(f"{type(exc).__name__}: {exc}")
        times.append((pc() - t0) * 1e6)
        if len(times) >= MIN_OPS and pc() - start > budget:
            break
    times.sort()
    return {"n": len(times), "median": statistics.median(times),
            "p90": times[min(len(times) - 1, len(times) * 9 // 10)],
            "errors": f"{len(errors)}/{len(times)} failed: {errors[0]}" if errors else ""}


def side_main(side: str, n: int, k: int, budget: float) -> dict:
    """One side at one scale, in this (fresh) process."""
    prot, gaps = targets(n, k)
    out: dict = {"side": side, "regions": n}
    if side == "model":
        sys.path.insert(0, str(HERE.parent / "src"))
        from sparsemm.abi import MapFlag
        from sparsemm.model.mm import AddressSpace

        fixed = int(MapFlag.PRIVATE | MapFlag.ANONYMOUS | MapFlag.FIXED)
        noreplace = int(MapFlag.PRIVATE | MapFlag.ANONYMOUS | MapFlag.FIXED_NOREPLACE)
        mm = AddressSpace(max_map_count=10**7)
        t0 = time.perf_counter()
        for i in range(n):
            mm.mmap(BASE + i * STRIDE, 2 * PAGE, PROT_RW if i & 1 else PROT_R, fixed)
        out["build_s"] = time.perf_counter() - t0
        kinds = {"protect": (lambda a: mm.mprotect(a, PAGE, PROT_RX), prot),
                 "map": (lambda a: mm.mmap(a, PAGE, PROT_NONE, noreplace), gaps),
                 "unmap": (lambda a: mm.munmap(a, PAGE), gaps)}
        out["version"] = "sparsemm model"
    else:
        import qiling
        from qiling import Qiling
        from qiling.const import QL_ARCH, QL_OS, QL_VERBOSE

        ql = Qiling(code=b"\x90", archtype=QL_ARCH.X8664, ostype=QL_OS.LINUX, verbose=QL_VERBOSE.DISABLED)
        mem = ql.mem
        out["version"] = f"Qiling {qiling.__version__}"
        t0 = time.perf_counter()
        if side == "book":
            for i in range(n):
                mem.add_mapinfo(BASE + i * STRIDE, BASE + i * STRIDE + 2 * PAGE, PROT_RW if i & 1 else PROT_R, "bench")
        else:
            deadline = t0 + budget * 4
            for i in range(n):
                mem.map(BASE + i * STRIDE, 2 * PAGE, PROT_RW if i & 1 else PROT_R, info="bench")
                if time.perf_counter() > deadline:  # quadratic: give up, say how far it got
                    out["build_stopped_at"] = i + 1
                    n = i + 1
                    break
        out["build_s"] = time.perf_counter() - t0
        if "build_stopped_at" in out:
            return out

        def book_map(a):
            if not mem.is_available(a, PAGE):
                raise RuntimeError("not available")
            mem.add_mapinfo(a, a + PAGE, PROT_NONE, "new")

        if side == "book":
            kinds = {"protect": (lambda a: mem.change_mapinfo(a, a + PAGE, mem_p=PROT_RX), prot),
                     "map": (book_map, gaps),
                     "unmap": (lambda a: mem.del_mapinfo(a, a + PAGE), gaps)}
        else:
            kinds = {"protect": (lambda a: mem.protect(a, PAGE, PROT_RX), prot),
                     "map": (lambda a: mem.map(a, PAGE, PROT_NONE, info="new"), gaps),
                     "unmap": (lambda a: mem.unmap(a, PAGE), gaps)}
    out["build_us"] = out["build_s"] / n * 1e6
    ops = {}
    for name, (fn, addrs) in kinds.items():
        if name == "unmap":  # only the pages map put there
            addrs = addrs[:ops["map"]["n"]]
        ops[name] = time_ops(fn, addrs, budget)
    out["ops"] = ops
    return out


def qiling_python(arg: str | None) -> tuple[str | None, str]:
    """(an interpreter with qiling, how it was found) or (None, why not)."""
    if importlib.util.find_spec("qiling") is not None:
        return sys.executable, "this interpreter"
    if arg:
        probe = subprocess.run([arg, "-c", "import qiling"], capture_output=True, text=True)
        if probe.returncode == 0:
            return arg, (f"a separate interpreter with qiling installed (`--qiling-python` or "
                         f"`QILING_PYTHON`; here `{Path(arg).name}` of a virtual environment)")
        return None, f"`{arg}` cannot import qiling ({probe.stderr.strip().splitlines()[-1:]})"
    return None, ("qiling is not installed here (it is optional: `pip install -e '.[qiling]'`, "
                  "or give `--qiling-python` an interpreter that has it)")


def spawn(python: str, side: str, n: int, k: int, budget: float) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--side", side, "--regions", str(n),
           "--ops", str(k), "--budget", str(budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"side": side, "regions": n, "failed": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout)


def cell(r: dict | None, key: str) -> str:
    if r is None:
        return "skipped"
    if "failed" in r:
        return "failed"
    if "build_stopped_at" in r:
        return "not run" if key != "build" else f"stopped at {r['build_stopped_at']:,}"
    if key == "build":
        return f"{r['build_us']:,.1f}"
    o = r["ops"][key]
    return f"{o['median']:,.1f} (p90 {o['p90']:,.1f}; {o['n']})"


def ratio(q: dict | None, m: dict, key: str) -> str:
    if q is None or "ops" not in q or "ops" not in m:
        return "-"
    return f"{q['ops'][key]['median'] / m['ops'][key]['median']:,.1f}x"


def main(argv: list[str]) -> int:
    from _common import Run, parser

    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--qiling-python", default=os.environ.get("QILING_PYTHON"),
                    help="an interpreter with qiling installed, if this one lacks it")
    ap.add_argument("--regions", help="comma-separated scales (default 1000,10000,100000; --quick 1000)")
    ap.add_argument("--ops", type=int, help="ops of each kind to time (default 1,000; --quick 50)")
    ap.add_argument("--budget", type=float, help="seconds of timed ops per kind and side (default 20; --quick 2)")
    ap.add_argument("--side", choices=SIDES, help=argparse_hidden())
    args = ap.parse_args(argv)
    k = args.ops or (50 if args.quick else 1000)
    budget = args.budget or (2.0 if args.quick else 20.0)
    if args.side:
        json.dump(side_main(args.side, int(args.regions), k, budget), sys.stdout)
        return 0
    run = Run("qiling", args, argv, full=FULL, quick=QUICK)
    scales = [int(s) for s in (args.regions or ("1000" if args.quick else "1000,10000,100000")).split(",")]
    qpy, how = qiling_python(args.qiling_python)
    if qpy is None:
        if args.record:
            raise SystemExit(f"bench_qiling: --record needs Qiling: {how}")
        print(f"bench_qiling: Qiling rows skipped: {how}", flush=True)
    results = []
    for n in scales:
        row = {"regions": n, "model": spawn(sys.executable, "model", n, k, budget)}
        for side in ("book", "emu"):
            row[side] = spawn(qpy, side, n, k, budget) if qpy else None
        results.append(row)
        print(f"  {n:,} regions: " + "; ".join(
            f"{SIDE_NAMES[s]}: {cell(row[s], 'protect')}" for s in SIDES), flush=True)
    version = next((r[s]["version"] for r in results for s in ("book", "emu")
                    if r[s] and "version" in r[s]), "Qiling (not run)")
    lines = run.header(
        "Region bookkeeping: the model against Qiling's memory manager (`bench/bench_qiling.py`)",
        [f"{version}, run by {how}." if qpy else f"Qiling rows skipped: {how}.",
         "Layout: N two-page regions, alternating r/rw, each followed by a two-page gap. Ops at "
         "distinct random regions, each timed alone: protect = the first page of a region to r-x "
         "(a split), map = one PROT_NONE page into a gap, unmap = that page again.",
         "Each scale of each side runs in a fresh process. Cells: median µs per op (p90; ops "
         f"timed: at most {k:,} per kind, fewer where {budget:g} s of ops ran out, never fewer "
         f"than {MIN_OPS}). Build: mean µs per region added (bookkeeping: `add_mapinfo` alone; "
         "emulator: `ql.mem.map`, stopped after "
         f"{budget * 4:g} s as it is quadratic).",
         "**Qiling bookkeeping** = `change_mapinfo` / `is_available` + `add_mapinfo` / "
         "`del_mapinfo`: Qiling's own region list without unicorn's RAM. **Qiling emulator** = "
         "`ql.mem.protect` / `map` / `unmap` with unicorn. **model** = `AddressSpace` "
         "`mprotect` / `mmap(MAP_FIXED_NOREPLACE)` / `munmap`, which keeps far more per region "
         "(flags, merges, anon_vma, page tables)."])
    for key, title in (("protect", "protect (split)"), ("map", "map (new region)"), ("unmap", "unmap")):
        lines += [f"**{title}**, µs per op:", "",
                  "| regions | model | Qiling bookkeeping | bookkeeping / model | Qiling emulator | emulator / model |",
                  "|---|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['regions']:,} | {cell(r['model'], key)} | {cell(r['book'], key)} | "
                         f"{ratio(r['book'], r['model'], key)} | {cell(r['emu'], key)} | "
                         f"{ratio(r['emu'], r['model'], key)} |")
        lines.append("")
    lines += ["**Build**, µs per region added:", "",
              "| regions | model | Qiling bookkeeping | Qiling emulator |", "|---|---|---|---|"]
    lines += [f"| {r['regions']:,} | {cell(r['model'], 'build')} | {cell(r['book'], 'build')} | "
              f"{cell(r['emu'], 'build')} |" for r in results]
    notes = []
    for r in results:
        for s in SIDES:
            d = r[s]
            if d and "failed" in d:
                notes.append(f"{r['regions']:,} regions, {SIDE_NAMES[s]}: the process failed: {d['failed']}")
            if d and "build_stopped_at" in d:
                notes.append(f"{r['regions']:,} regions, {SIDE_NAMES[s]}: building the layout was stopped "
                             f"after {d['build_s']:.0f} s, at {d['build_stopped_at']:,} regions (each "
                             "`ql.mem.map` scans every region, and unicorn maps its RAM): its ops were not run")
            for key, o in ((d or {}).get("ops") or {}).items():
                if o["errors"]:
                    notes.append(f"{r['regions']:,} regions, {SIDE_NAMES[s]} {key}: {o['errors']}")
    lines += [""] + [f"- {n}" for n in notes]
    run.write("\n".join(lines))
    return 0


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
