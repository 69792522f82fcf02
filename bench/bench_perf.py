"""Issue 15's speed goals, the compiled model core against the pure-Python one, side by side.

Every measurement runs in a fresh child process, once with the compiled core (if the install
built it) and once with ``SPARSEMM_PURE_PYTHON=1``, the two alternating within each repeat so
both see the same machine load:

- ``replay``: ``run_model`` of ``bench_model.guard_mix(N)`` (N = 20,000 and 100,000 ops),
  parse apart; wall and CPU time. Beside it, when the kernel backend has its op-time hook
  (``SPARSEMM_KERNEL_OP_TIMES``), the kernel's own op time measured inside its child in the
  same repeat; otherwise no kernel figure is printed (see bench/results_replay.md).
- ``ops``: N VMAs (1,000,000; ``--quick`` 100,000) built as ``bench_model.build_model`` does,
  under each guard design, then K of each single op at distinct random VMAs: mmap into a gap,
  munmap of a whole VMA, mprotect and munmap splitting a VMA, guard install and remove of one
  page inside a VMA; median and p90 in microseconds (goal: every median <= 8 us at 1M).
- ``parse``: ``parse_script`` of the 20,000-op mix, microseconds per op.
- ``analyze``: ``taskset -c 0 sparsemm analyze FILE`` end to end (the synthetic 65,530-VMA
  maps of ``bench_analyze.py``), wall and CPU time of the whole CLI process (goal <= 1 s);
  the two builds' outputs are compared (the seconds figure excepted).

Run: ``.venv/bin/python bench/bench_perf.py [--quick] [--record] [--sections replay,ops,parse,analyze]``.
A full run takes 15 to 25 minutes on a busy 2-vCPU machine (925 s at load 13-18). Prints
markdown and writes it to out/bench/results_perf.md (``--record``: bench/results_perf.md).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "src"), str(HERE)]

from _common import Run, parser  # noqa: E402

BUILDS = ("compiled", "pure")


# ---------------------------------------------------------------------------------------
# child side: one measurement, printed as one JSON line


def _cpu() -> float:
    return time.process_time()


def child_replay(nops: int) -> dict:
    from bench_replay import guard_mix

    from sparsemm import _compiled
    from sparsemm.opscript.model_backend import run_model
    from sparsemm.opscript.script import parse_script

    doc = guard_mix(nops)
    t0, c0 = time.perf_counter(), _cpu()
    script = parse_script(doc)
    t1, c1 = time.perf_counter(), _cpu()
    records = run_model(script)
    t2, c2 = time.perf_counter(), _cpu()
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
    return {"core": _compiled.status()["core"], "parse_s": t1 - t0, "parse_cpu": c1 - c0,
            "model_s": t2 - t1, "model_cpu": c2 - c1, "digest": digest}


def child_kernel(nops: int) -> dict:
    """The kernel backend on the same script, its op time read through the child's hook."""
    from bench_replay import guard_mix

    from sparsemm.opscript import kernel
    from sparsemm.opscript.script import parse_script

    env_name = getattr(kernel, "OP_TIMES_ENV", None)
    if env_name is None:
        return {"skipped": "the kernel backend has no op-time hook on this branch"}
    script = parse_script(guard_mix(nops))
    with tempfile.TemporaryDirectory(prefix="sparsemm-perf-") as tmp:
        path = os.path.join(tmp, "times.json")
        os.environ[env_name] = path
        try:
            kernel.run_kernel(script, attempts=1)
        finally:
            del os.environ[env_name]
        times = json.loads(Path(path).read_text())
    return {"kernel_op_s": times["seconds"], "kernel_op_cpu": times["cpu"]}


def _time_each(fn, args) -> list[float]:
    """Microseconds of CPU time (this thread's) of each ``fn(a)``: on a machine shared with
    other jobs, wall time per op mostly measures the wait for a CPU."""
    clock = time.thread_time
    out = []
    for a in args:
        t0 = clock()
        fn(a)
        out.append((clock() - t0) * 1e6)
    return out


def child_ops(design: str, nvmas: int, k: int, nodes: str = "nodes") -> dict:
    import gc

    from bench_model import BASE, MAP_FIXED, MAP_NOREPLACE, PAGE, PROT_NONE, PROT_R, PROT_RW, PROT_RX, STRIDE

    from sparsemm import _compiled
    from sparsemm.abi import MADV_GUARD_INSTALL, MADV_GUARD_REMOVE
    from sparsemm.model.mm import AddressSpace
    from sparsemm.model.vma_tree import VmaTree

    VmaTree.NODE_MODEL = nodes == "nodes"  # "nonodes": what the maple node model costs
    gc.disable()  # a bulk build of objects none of which is freed; collections are noise here
    mm = AddressSpace(guard_design=design, max_map_count=10**7)
    t0 = time.process_time()
    mmap = mm.mmap
    for i in range(nvmas):
        mmap(BASE + i * STRIDE, 2 * PAGE, PROT_RW if i & 1 else PROT_R, MAP_FIXED)
    build_s = time.process_time() - t0
    gc.enable()
    gc.collect()
    gc.freeze()  # the layout is permanent: keep later collections from scanning it
    rng = random.Random(1)
    idx = rng.sample(range(nvmas), 4 * k)
    gaps = [BASE + i * STRIDE + 2 * PAGE for i in idx[:k]]
    prot = [BASE + i * STRIDE for i in idx[k:2 * k]]
    tails = [BASE + i * STRIDE + PAGE for i in idx[2 * k:3 * k]]
    guards = [BASE + i * STRIDE for i in idx[3 * k:]]
    madvise = mm.madvise
    res = {
        "mmap (new VMA in a gap)": _time_each(lambda a: mm.mmap(a, PAGE, PROT_NONE, MAP_NOREPLACE), gaps),
        "munmap (a whole VMA)": _time_each(lambda a: mm.munmap(a, PAGE), gaps),
        "mprotect (splits a VMA)": _time_each(lambda a: mm.mprotect(a, PAGE, PROT_RX), prot),
        "munmap (splits a VMA)": _time_each(lambda a: mm.munmap(a, PAGE), tails),
        "guard install (1st page of a VMA)": _time_each(lambda a: madvise(a, PAGE, MADV_GUARD_INSTALL), guards),
        "guard remove (that page)": _time_each(lambda a: madvise(a, PAGE, MADV_GUARD_REMOVE), guards),
    }
    out = {name: [statistics.median(ts), sorted(ts)[len(ts) * 9 // 10]] for name, ts in res.items()}
    return {"core": _compiled.status()["core"], "build_us_per_vma": build_s / nvmas * 1e6, "ops": out}


def child_parse(nops: int, repeat: int) -> dict:
    from bench_replay import guard_mix

    from sparsemm.opscript.script import parse_script

    doc = guard_mix(nops)
    ts = []
    for _ in range(repeat):
        t0 = time.process_time()
        parse_script(doc)
        ts.append(time.process_time() - t0)
    return {"us_per_op": [t / nops * 1e6 for t in ts]}


CHILDREN = {"replay": child_replay, "kernel": child_kernel, "ops": child_ops, "parse": child_parse}


# ---------------------------------------------------------------------------------------
# parent side


def compiled_available() -> bool:
    out = subprocess.run([sys.executable, "-c", "from sparsemm import _compiled; print(_compiled.status()['core'])"],
                         capture_output=True, text=True, env=_env("compiled"), check=True)
    return out.stdout.strip() == "compiled"


def _env(build: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("SPARSEMM_PURE_PYTHON", None)
    if build == "pure":
        env["SPARSEMM_PURE_PYTHON"] = "1"
    return env


def run_child(build: str, task: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--child", task, *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(build))
    if proc.returncode:
        raise RuntimeError(f"{task} {args} ({build}) failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def cell(xs, fmt="{:.3f}") -> str:
    """median (lowest–highest) of a list."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def section_replay(builds, sizes, repeat, lines: list[str]) -> None:
    lines += ["### Replay: `run_model` of `guard_mix(N)` (seconds; median, lowest–highest of the repeats)", ""]
    head = "| ops | build | parse wall | model wall | model CPU | kernel op time, wall | kernel op time, CPU | model CPU / kernel op CPU | same records |"
    lines += [head, "|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        got = {b: [] for b in builds}
        kern = []
        for r in range(repeat):
            order = list(builds) if r % 2 == 0 else list(reversed(builds))
            for b in order:
                got[b].append(run_child(b, "replay", n))
                print(f"  replay {n} {b}: {got[b][-1]['model_cpu']:.3f} s CPU", file=sys.stderr, flush=True)
            k = run_child(builds[0], "kernel", n)
            if "skipped" not in k:
                kern.append(k)
        digests = {g["digest"] for b in builds for g in got[b]}
        for b in builds:
            rows = got[b]
            mc = [g["model_cpu"] for g in rows]
            kc = [k["kernel_op_cpu"] for k in kern]
            ratio = [m / k for m, k in zip(mc, kc)] if kc else []
            lines.append(f"| {n:,} | {b} ({rows[0]['core']}) | {cell([g['parse_s'] for g in rows])} "
                         f"| {cell([g['model_s'] for g in rows])} | {cell(mc)} "
                         f"| {cell([k['kernel_op_s'] for k in kern])} | {cell(kc)} "
                         f"| {cell(ratio, '{:.2f}x')} | {'yes' if len(digests) == 1 else 'NO'} |")
    lines.append("")


def section_ops(builds, nvmas, k, designs, lines: list[str]) -> None:
    lines += [f"### Single ops at {nvmas:,} VMAs (microseconds of CPU time: median / p90 of {k:,} each; "
              "goal: median <= 8)", "",
              "Each op timed alone with `time.thread_time` (the wall clock on this busy machine mostly "
              "measures waiting for a CPU). The last columns: the `vma` design with the maple node "
              "model off (`VmaTree.NODE_MODEL = False`), to show its share.", ""]
    results = {}
    cols = [(d, b) for d in designs for b in builds] + [(designs[0] + " no node model", b) for b in builds]
    for d, b in cols:
        design, _, rest = d.partition(" ")
        results[(d, b)] = run_child(b, "ops", design, nvmas, k, "nonodes" if rest else "nodes")
        print(f"  ops {d} {b}: built at {results[(d, b)]['build_us_per_vma']:.1f} us/VMA",
              file=sys.stderr, flush=True)
    names = list(next(iter(results.values()))["ops"])
    lines.append("| op | " + " | ".join(f"{d} {b}" for d, b in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for name in names:
        cells = []
        for c in cols:
            m, p = results[c]["ops"][name]
            cells.append(f"{'**' if m > 8 else ''}{m:.1f}{'**' if m > 8 else ''} / {p:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| build (us of CPU per mmap) | " + " | ".join(f"{results[c]['build_us_per_vma']:.1f}" for c in cols) + " |")
    worst = max((results[c]["ops"][n][0], n, c) for c in cols for n in names if "no node" not in c[0])
    lines += ["", f"Worst median: {worst[0]:.1f} us ({worst[1]}, {worst[2][0]} design, {worst[2][1]} build); "
              f"goal {'met' if worst[0] <= 8 else 'missed'} (values over 8 us in bold).", ""]


def section_parse(builds, repeat, lines: list[str]) -> None:
    lines += ["### `parse_script` of the 20,000-op mix (microseconds of CPU per op; median, lowest–highest)", ""]
    lines += ["| build | us per op |", "|---|---|"]
    for b in builds:
        r = run_child(b, "parse", 20000, repeat)
        lines.append(f"| {b} | {cell(r['us_per_op'], '{:.2f}')} |")
    lines.append("")


_SECONDS = re.compile(r"\d+\.\d+ s\b")


def section_analyze(builds, repeat, lines: list[str]) -> None:
    from bench_analyze import SHAPES, synthetic_map

    sparsemm = shutil.which("sparsemm", path=str(Path(sys.executable).parent)) or "sparsemm"
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    lines += [f"### `{' '.join(taskset)} sparsemm analyze FILE` end to end (seconds; median, lowest–highest; goal <= 1 s)",
              "", "| map | build | wall | CPU (user+sys) | same output as the other build |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="sparsemm-perf-") as tmp:
        for shape in SHAPES:
            path = Path(tmp) / f"{shape}.maps"
            path.write_text(synthetic_map(shape=SHAPES[shape]))
            walls = {b: [] for b in builds}
            cpus = {b: [] for b in builds}
            outs = {b: set() for b in builds}
            for r in range(repeat):
                for b in (builds if r % 2 == 0 else tuple(reversed(builds))):
                    before = os.times()
                    t0 = time.perf_counter()
                    proc = subprocess.run([*taskset, sparsemm, "analyze", str(path)], capture_output=True,
                                          text=True, env={**_env(b), "COLUMNS": "200"})
                    walls[b].append(time.perf_counter() - t0)
                    after = os.times()
                    cpus[b].append(after.children_user - before.children_user
                                   + after.children_system - before.children_system)
                    if proc.returncode:
                        raise RuntimeError(f"analyze {shape} ({b}): {proc.stderr.strip()}")
                    outs[b].add(_SECONDS.sub("<s>", proc.stdout))
                    print(f"  analyze {shape} {b}: {walls[b][-1]:.2f} s", file=sys.stderr, flush=True)
            same = len(set().union(*outs.values())) == 1
            for b in builds:
                lines.append(f"| {shape} | {b} | {cell(walls[b], '{:.2f}')} | {cell(cpus[b], '{:.2f}')} "
                             f"| {'yes' if same else 'NO'} |")
    lines.append("")


FULL, QUICK = "15 to 25 minutes", "about 1 minute (20,000 VMAs, one repeat)"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--sections", default="replay,ops,parse,analyze",
                    help="which measurements, comma-separated (default: all four)")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        task, *rest = args.child
        conv = [int(x) if x.isdigit() else x for x in rest]
        print(json.dumps(CHILDREN[task](*conv)))
        return 0
    run = Run("perf", args, [a for a in argv], full=FULL, quick=QUICK)

    from sparsemm.model.designs import registry

    started = time.time()
    load0 = os.getloadavg()[0]
    builds = BUILDS if compiled_available() else ("pure",)
    sections = args.sections.split(",")
    repeat = 1 if args.quick else 5
    lines = [f"## Issue 15 goals: compiled core against pure Python (`bench/bench_perf.py{' --quick' if args.quick else ''}`)", ""]
    body: list[str] = []
    if "replay" in sections:
        section_replay(builds, (20000,) if args.quick else (20000, 100000), repeat, body)
    if "ops" in sections:
        section_ops(builds, 20_000 if args.quick else 1_000_000, 200 if args.quick else 2000,
                    registry.names(), body)
    if "parse" in sections:
        section_parse(builds, repeat, body)
    if "analyze" in sections:
        section_analyze(builds, repeat, body)
    took = time.time() - started
    lines += [
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; took {took:.0f} s "
        f"({'a --quick run (a smoke test, not figures for the record)' if args.quick else 'a full run'}; "
        f"a full run takes {FULL}, --quick {QUICK}).",
        f"- Command: `.venv/bin/python bench/bench_perf.py{' --quick' if args.quick else ''}"
        f" --sections {args.sections}`",
        f"- Machine: Linux {platform.release()}, Python {platform.python_version()}, {os.cpu_count()} vCPUs, "
        f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: a busy shared machine, "
        "so compare the builds within a table (measured alternately), not absolute times.",
        f"- Builds: {', '.join(builds)} (`pure` = `SPARSEMM_PURE_PYTHON=1`); each figure from a fresh process.",
        "",
    ] + body
    run.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
