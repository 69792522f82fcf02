"""Replaying a random op script: the model against the kernel, three ways.

The script: ``guard_mix(N)``, a random mix over 4,096 pages (guard install and remove, writes,
mprotect, munmap, re-mmap; some ops fail on holes, identically on both backends), at N =
20,000 and 100,000 ops. Each repeat times, side by side and in alternating order:

1. the kernel child as a whole: ``run_kernel(script, attempts=1)`` (a fresh interpreter,
   imports, parsing, the ops, JSON both ways) against ``run_model(script)`` in this process
   (the script already parsed; parsing is timed apart);
2. the kernel's op time measured inside that same child: each op's ``run_op`` timed alone
   (its system calls through ctypes and its record; ``opscript.kernel.OP_TIMES_ENV``),
   summed, against the same ``run_model`` time;
3. CLI against CLI: ``sparsemm run --backend model FILE`` against ``sparsemm run --backend
   kernel FILE``, each a fresh process end to end (start-up, imports, reading, parsing, the
   run, JSON records to /dev/null).

Ratios are model over kernel (below 1: the model is faster), one per repeat; the results
give their median and their range. Run: ``PYTHONPATH=src python3 bench/bench_replay.py``.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _common import Run, parser  # noqa: E402
from sparsemm.opscript.kernel import OP_TIMES_ENV, run_kernel  # noqa: E402
from sparsemm.opscript.model_backend import run_model  # noqa: E402
from sparsemm.opscript.script import parse_script  # noqa: E402

FULL, QUICK = "7 to 8 minutes", "about 30 s"
TARGET = 1.0  # issue 15: the model at or below the kernel's own op time


def guard_mix(nops: int, arena_pages: int = 4096, seed: int = 1) -> dict:
    """A guard-heavy random mix over ``arena_pages`` pages: guard install/remove, writes,
    mprotect, munmap and re-mmap. Some ops fail (holes): both backends must agree."""
    rng = random.Random(seed)
    ops: list[dict] = []
    for at in range(0, arena_pages, 256):
        ops.append({"op": "mmap", "at": at, "len": 256, "prot": "rw", "flags": ["private", "anonymous"]})
    while len(ops) < nops:
        r = rng.random()
        at = rng.randrange(arena_pages - 16)
        n = rng.randint(1, 4)
        if r < 0.30:
            ops.append({"op": "madvise", "at": at, "len": n, "advice": "guard_install"})
        elif r < 0.45:
            ops.append({"op": "madvise", "at": at, "len": rng.randint(1, 16), "advice": "guard_remove"})
        elif r < 0.65:
            ops.append({"op": "touch", "at": at, "len": n, "access": "write"})
        elif r < 0.80:
            ops.append({"op": "mprotect", "at": at, "len": rng.randint(1, 16),
                        "prot": rng.choice(["r", "rw", "none"])})
        elif r < 0.90:
            ops.append({"op": "munmap", "at": at, "len": rng.randint(1, 16)})
        else:
            ops.append({"op": "mmap", "at": at, "len": rng.randint(1, 16), "prot": "rw",
                        "flags": ["private", "anonymous"]})
    return {"note": f"guard mix: {nops} ops over {arena_pages} pages (seed {seed})",
            "arena_pages": arena_pages, "ops": ops}


def cli() -> list[str]:
    """The ``sparsemm`` command of this interpreter's environment (its console script when
    installed, else ``python -m sparsemm``)."""
    exe = Path(sys.executable).parent / "sparsemm"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sparsemm"]


def wall(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def wall_cpu(fn) -> tuple[float, float, object]:
    """(wall s, this process's CPU s, result) of ``fn()``."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_cli(args: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the process and its children) of one ``sparsemm ARGS`` run."""
    c0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cli() + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt, cpu = time.perf_counter() - t0, children_cpu() - c0
    if proc.returncode:
        raise SystemExit(f"bench_replay: sparsemm {' '.join(args)} failed: {proc.stderr.strip()[-300:]}")
    return dt, cpu


def kernel_timed(script, times_path: str) -> tuple[float, dict, list[dict]]:
    """(child wall s, the child's op times (OP_TIMES_ENV), records) of one kernel run."""
    os.environ[OP_TIMES_ENV] = times_path
    try:
        t, records = wall(lambda: run_kernel(script, attempts=1))
    finally:
        del os.environ[OP_TIMES_ENV]
    with open(times_path, encoding="utf-8") as fh:
        times = json.load(fh)
    if times["ops"] != len(script.ops):
        raise SystemExit(f"bench_replay: the child timed {times['ops']} ops of {len(script.ops)}")
    return t, times, records


def bench(nops: int, repeats: int, tmp: Path) -> dict:
    doc = guard_mix(nops)
    path = tmp / f"guard_mix_{nops}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    parse_t, script = [], None
    for _ in range(repeats):
        t, script = wall(lambda: parse_script(doc))
        parse_t.append(t)
    times_path = str(tmp / "op_times.json")
    rows = []
    same = None
    by_op: dict = {}
    clock = [0.0, 0.0]
    for i in range(repeats):
        kernel_first = i % 2 == 0
        r: dict = {}
        seen = []  # each side's records as one JSON string: no live records while the other runs
        for side in (("kernel", "model") if kernel_first else ("model", "kernel")):
            if side == "kernel":
                r["child"], times, records = kernel_timed(script, times_path)
                n = times["ops"]  # the clock reads' own cost taken off
                r["ops"] = times["seconds"] - n * times["clock"][0]
                r["ops_cpu"] = times["cpu"] - n * times["clock"][1]
                clock = times["clock"]
                by_op = times["by_op"]
            else:
                r["model"], r["model_cpu"], records = wall_cpu(lambda: run_model(script))
            seen.append(json.dumps(records))
            del records
        same = (same is not False) and seen[0] == seen[1]
        for side in (("kernel", "model") if kernel_first else ("model", "kernel")):
            r[f"cli_{side}"], r[f"cli_{side}_cpu"] = run_cli(["run", "--backend", side, str(path)])
        rows.append(r)
        print(f"  {nops:,} ops, repeat {i + 1}/{repeats} ({'kernel' if kernel_first else 'model'} first): "
              f"child {r['child']:.3f} s (ops {r['ops']:.3f} s, CPU {r['ops_cpu']:.3f} s), model "
              f"{r['model']:.3f} s (CPU {r['model_cpu']:.3f} s), CLI kernel {r['cli_kernel']:.3f} s, "
              f"CLI model {r['cli_model']:.3f} s", flush=True)
    return {"ops": nops, "rows": rows, "parse": parse_t, "same": same, "by_op": by_op, "clock": clock}


def spread(xs: list[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def report(run: Run, results: list[dict], repeats: int) -> str:
    lines = run.header(
        "Replaying a random op script: the model against the kernel, three ways (`bench/bench_replay.py`)",
        ["Script: `guard_mix(N)` (in the bench): a random mix over 4,096 pages of guard install "
         "(30 %) and remove (15 %), writes (20 %), mprotect (15 %), munmap (10 %) and re-mmap; "
         "some ops fail on holes, identically on both backends (records compared).",
         f"{repeats} repeats; within each, the two sides run one after the other, kernel first in "
         "odd repeats and model first in even ones; each ratio is model / kernel of one repeat; "
         "cells give the median and, in brackets, the lowest and highest of the repeats.",
         "**child**: `run_kernel(script, attempts=1)`, a fresh interpreter that imports sparsemm, "
         "parses the script, runs it and sends JSON records back, timed whole by the caller. "
         "**ops in the child**: the same children, each op's `run_op` timed alone inside the child "
         f"(`{OP_TIMES_ENV}`: its system calls through ctypes and building its record) and summed: "
         "no start-up, imports, parsing or JSON. **model**: `run_model(script)` in the bench's "
         "process on the parsed script (parsing is listed apart). **CLI**: `sparsemm run --backend "
         "kernel|model FILE > /dev/null`, a fresh process each, end to end (the kernel CLI reruns "
         "a run during which the THP counters moved, up to 4 times, as it does for users).",
         "**wall** is `perf_counter`; on this busy machine it includes the time a process waits "
         "for a CPU, so **CPU** time is given beside it: `process_time` for the model, "
         "`thread_time` around each op in the child (user and system: the kernel's work for the "
         "op and the Python around it), `RUSAGE_CHILDREN` for a CLI process (with its own "
         "children). The child's clock reads cost something themselves: the child measures that "
         "(median of 1,000 empty readings; "
         + ", ".join(f"{r['ops']:,} ops: {r['clock'][0] * 1e9:.0f} ns wall, {r['clock'][1] * 1e9:.0f} ns CPU"
                     for r in results)
         + " per op) and it is taken off the op times here (not in the per-op table below)."])
    lines += ["| ops | kernel child, wall s | ops in the child, wall s | ops in the child, CPU s | "
              "model, wall s | model, CPU s | parse, wall s | CLI kernel, wall s (CPU) | CLI model, "
              "wall s (CPU) | same records |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        rows = res["rows"]
        col = lambda k: spread([r[k] for r in rows])  # noqa: E731
        med = lambda k: f"{statistics.median([r[k] for r in rows]):.3f}"  # noqa: E731
        lines.append(f"| {res['ops']:,} | {col('child')} | {col('ops')} | {col('ops_cpu')} | "
                     f"{col('model')} | {col('model_cpu')} | {spread(res['parse'])} | {col('cli_kernel')} "
                     f"({med('cli_kernel_cpu')}) | {col('cli_model')} ({med('cli_model_cpu')}) | "
                     f"{'yes' if res['same'] else 'NO'} |")
    lines += ["", f"Model / kernel (below 1: the model is faster; issue 15's target: at most {TARGET:.1f} "
              "against the kernel's op time inside the child):", "",
              "| ops | 1. against the kernel child as a whole (wall) | 2. against the op time in the "
              "child (wall) | 2. the same, CPU time | 2. (model + parse) / op time (wall) | 3. CLI "
              "against CLI (wall) | 3. the same, CPU time | target met (2, wall; CPU) |",
              "|---|---|---|---|---|---|---|---|"]
    f = "{:.2f}x"
    for res in results:
        rows, p = res["rows"], statistics.median(res["parse"])
        ratios = {k: [r[a] / r[b] for r in rows] for k, (a, b) in {
            "whole": ("model", "child"), "ops": ("model", "ops"), "cpu": ("model_cpu", "ops_cpu"),
            "cli": ("cli_model", "cli_kernel"), "cli_cpu": ("cli_model_cpu", "cli_kernel_cpu")}.items()}
        withp = [(r["model"] + p) / r["ops"] for r in rows]
        met = "; ".join("yes" if statistics.median(ratios[k]) <= TARGET else "**no**" for k in ("ops", "cpu"))
        lines.append(f"| {res['ops']:,} | {spread(ratios['whole'], f)} | {spread(ratios['ops'], f)} | "
                     f"{spread(ratios['cpu'], f)} | {spread(withp, f)} | {spread(ratios['cli'], f)} | "
                     f"{spread(ratios['cli_cpu'], f)} | {met} |")
    big = results[-1]
    lines += ["", f"Where the kernel's op time goes at {big['ops']:,} ops (the last repeat's child; "
              "µs per op, including the ctypes call and the record):", "",
              "| op | count | wall µs per op | CPU µs per op |", "|---|---|---|---|"]
    for name, (n, secs, cpu) in sorted(big["by_op"].items(), key=lambda kv: -kv[1][2]):
        lines.append(f"| {name} | {n:,} | {secs / n * 1e6:.1f} | {cpu / n * 1e6:.1f} |")
    lines += ["", "Reading: (1) flatters the model, as the child pays an interpreter start-up, imports, "
              "parsing and JSON; (2) is the comparison issue 15 sets its target on, and the child's "
              "op time there still holds Python dispatch, ctypes and record building besides the "
              "kernel's own work; (3) is what a user running `sparsemm run` sees. On this busy "
              "machine the CPU-time ratios are the steadier ones: wall time is mostly waiting. The wall "
              "ratio of (2) also leans against the model here: the model computes for a second or "
              "more without a pause and waits for the CPU throughout, while the child's timed "
              "windows are a few microseconds each between pipe writes, where a waiting process "
              "is less often preempted (a likely reason, not measured)."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--repeats", type=int, help="repeats per size (default 5; --quick 2)")
    ap.add_argument("--ops", help="comma-separated script sizes (default 20000,100000; --quick 2000)")
    args = ap.parse_args(argv)
    run = Run("replay", args, argv, full=FULL, quick=QUICK)
    repeats = args.repeats or (2 if args.quick else 5)
    sizes = [int(s) for s in (args.ops or ("2000" if args.quick else "20000,100000")).split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        for n in sizes:
            results.append(bench(n, repeats, Path(tmp)))
    run.write(report(run, results, repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
