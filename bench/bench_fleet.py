"""Benchmark of fleet mode: 10,000 real maps files on 1, 2 and 4 local Dask worker processes.

The files are cut from real maps (the three bundled samples and live processes of this
run: this process and a Python process with 64 threads; tests/fleet_maps.py): runs of 1
to 400 consecutive VMAs, half of them thinned, all distinct. They are written to a
temporary directory and analyzed with ``analyze.fleet.run_fleet`` on a ``LocalCluster``
of 1, 2 and 4 single-threaded worker processes, the same path as
``sparsemm analyze DIR --workers N``, in rounds (each round runs 1, 2, 4 side by side).

It measures:
- one process, no engine: the per-file function over every file, by stage (parse,
  guards + rebuild, model runs): the CPU work to spread;
- engine start-up: ``LocalCluster`` start + close for 1, 2, 4 workers, and a
  ``ProcessPoolExecutor``'s start-up and first task for comparison;
- each fleet run: wall time, files/s, speed-up over 1 worker, worker busy time by stage,
  the rest (scheduling, serialisation, idle workers) and the client's reading time;
- serialisation: pickled size and time of a task's arguments and result;
- batch size: 1 file per task versus the default (16), on 2 workers.

Run: ``.venv/bin/python bench/bench_fleet.py [--quick] [--files N] [--rounds R] [--record]``
(full: 10,000 files, 3 rounds: about 20-25 minutes on this 2-vCPU machine; ``--quick``:
1,000 files, 1 round, about 2 minutes). Results go to stdout; ``--record`` also writes
``bench/results_fleet.md``.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the derived-maps helper the tests use

from fleet_maps import ThreadedChild, derive, sources_texts, write_files  # noqa: E402

sys.path.insert(0, str(HERE))
from _common import Run, parser  # noqa: E402

from sparsemm.analyze.fleet import (DEFAULT_BATCH_FILES, STAGES, FleetOptions, analyze_batch,  # noqa: E402
                                    analyze_file, local_client, run_fleet)
from sparsemm.analyze.fleet_inputs import plan_inputs  # noqa: E402

FULL, QUICK = "over an hour at load 15 (2,000 files, 1 round: 35 min); 20-25 min idle", "about 2 minutes (100 files)"
WORKERS = (1, 2, 4)


def make_files(directory: Path, n: int) -> list[Path]:
    with ThreadedChild(64) as child:
        texts = sources_texts([child.pid])
    return write_files(directory, derive(texts, n))


def in_process(directory: Path, every: int = 1) -> dict:
    """The per-file function in this process, by stage, over every ``every``-th file;
    times are scaled by ``every`` to the whole set (``every`` > 1 saves a full pass on a
    busy machine; rows and bytes are counted over every file)."""
    clock: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    nbytes = rows = 0
    for i, it in enumerate(plan_inputs([str(directory)])):
        nbytes += len(it.data)
        if i % every == 0:
            rows += len(analyze_file(it.source, it.data, it.error, FleetOptions(), clock))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall * every, "cpu": cpu * every, "stages": {k: v * every for k, v in clock.items()},
            "bytes": nbytes, "rows": rows, "every": every}


def engine_startup(rounds: int) -> dict:
    """Seconds to start and close a LocalCluster of n workers (and a ProcessPoolExecutor)."""
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        for n in WORKERS:
            t0 = time.perf_counter()
            with local_client(n) as client:
                client.submit(sum, [1, 2]).result()
            out.setdefault(f"LocalCluster, {n} worker(s)", []).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with ProcessPoolExecutor(n) as pool:
                pool.submit(sum, [1, 2]).result()
            out.setdefault(f"ProcessPoolExecutor, {n} worker(s)", []).append(time.perf_counter() - t0)
    return out


def fleet_run(directory: Path, workers: int, batch: int) -> dict:
    """One ``run_fleet`` over the directory on a fresh LocalCluster (start-up excluded)."""
    read = 0.0

    def items():
        nonlocal read
        it = iter(plan_inputs([str(directory)]))
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                read += time.perf_counter() - t0
            yield item

    rows = 0

    def on_rows(rs):
        nonlocal rows
        rows += len(rs)

    with local_client(workers) as client:
        stats = run_fleet(client, items(), FleetOptions(), on_rows, batch_files=batch)
    return {"wall": stats.wall, "busy": stats.busy, "cpu": stats.cpu, "stages": dict(stats.seconds), "read": read, "rows": rows,
            "files": stats.files, "batches": stats.batches, "threads": stats.max_threads}


def serialisation(directory: Path) -> dict:
    """Pickled size and time of one default task's arguments and of its result."""
    items = [(it.source, it.data, it.error) for it, _ in zip(plan_inputs([str(directory)]), range(DEFAULT_BATCH_FILES))]
    t0 = time.perf_counter()
    args = pickle.dumps((items, FleetOptions()), protocol=5)
    t_args = time.perf_counter() - t0
    res = analyze_batch(items, FleetOptions())
    t0 = time.perf_counter()
    out = pickle.dumps(res, protocol=5)
    t_res = time.perf_counter() - t0
    return {"files": len(items), "args_bytes": len(args), "args_s": t_args, "result_bytes": len(out),
            "result_s": t_res, "task_busy": res.busy}


def med(xs):
    return statistics.median(xs)


def report(args, nfiles, base, startup, runs, batch_runs, ser, elapsed, rounds_done=1, rounds=1) -> str:
    L = []
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L.append("# fleet: 10,000 maps files on 1, 2 and 4 worker processes\n" if nfiles == 10_000 else
             f"# fleet: {nfiles:,} maps files on 1, 2 and 4 worker processes\n")
    L.append(f"- Date: {date}")
    cmd = "nice .venv/bin/python bench/bench_fleet.py" + (" --quick" if args.quick else "") + \
          (f" --files {args.files}" if args.files and not args.quick else "") + \
          (f" --rounds {args.rounds}" if args.rounds and not args.quick else "") + \
          (f" --baseline-every {args.baseline_every}" if args.baseline_every > 1 else "") + (" --record" if args.record else "")
    L.append(f"- Command: `{cmd}` (the whole bench took {elapsed / 60:.1f} min)")
    L.append(f"- Python {platform.python_version()}, {platform.machine()}, kernel {platform.release()}, "
             f"{os.cpu_count()} vCPUs. **2 cores: 4 workers on 2 cores measures overhead, not scaling.** "
             "A busy shared machine (other jobs running): compare the ratios of one round, not absolute times.")
    L.append(f"- Inputs: {nfiles:,} distinct maps/smaps files, {base['bytes'] / 2**20:,.1f} MiB, cut from real "
             "maps (the three bundled samples, this process and a 64-thread Python process; runs of 1-400 "
             f"VMAs, tests/fleet_maps.py); {base.get('fleet_rows', base['rows']):,} rows (one per file and design), the same in every run.")
    L.append(f"- Load average (1 min) at the start and the end: {args.load_start:.1f} and {os.getloadavg()[0]:.1f} "
             f"on {os.cpu_count()} vCPUs.")
    L.append(f"- Engine: `dask.distributed` LocalCluster, single-threaded worker processes, "
             f"{DEFAULT_BATCH_FILES} files per task unless said; {rounds_done} of {rounds} round(s) done, each round "
             "runs 1, 2, 4 workers one after another; median and worst (max) of the rounds.\n")
    st = base["stages"]
    tot = sum(st.values())
    L.append("## The work: the per-file function in one process, no engine\n")
    if base["every"] > 1:
        L.append(f"Measured on every {base['every']}th file ({nfiles // base['every']:,} files) and scaled "
                 f"x{base['every']} to the {nfiles:,}.\n")
    L.append("| stage | seconds | share |")
    L.append("|---|---:|---:|")
    for k in STAGES:
        if st.get(k):
            L.append(f"| {k} | {st[k]:.1f} | {100 * st[k] / tot:.0f}% |")
    L.append(f"| **total** ({base['wall'] / nfiles * 1000:.1f} ms per file; CPU {base['cpu']:.1f} s) | "
             f"{base['wall']:.1f} | |\n")
    L.append("parse = reading the maps text (`maps.parse_auto`); rebuild = `find_guards` + `build_layout`; "
             "model = parsing the layout script and running the three designs on the model.\n")
    L.append("## Fleet runs\n")
    L.append("| workers | wall s (median / worst) | files/s | speed-up vs 1 | worker busy s (CPU s) | busy: parse / rebuild "
             "/ model / other | not busy (scheduling, serialisation, idle) | client reading s |")
    L.append("|---:|---:|---:|---:|---:|---|---:|---:|")
    one = med([r["wall"] for r in runs[1]])
    for w in WORKERS:
        rs = runs[w]
        wall = med([r["wall"] for r in rs])
        busy = med([r["busy"] for r in rs])
        stg = {k: med([r["stages"].get(k, 0.0) for r in rs]) for k in STAGES}
        idle = w * wall - busy
        L.append(f"| {w} | {wall:.1f} / {max(r['wall'] for r in rs):.1f} | {nfiles / wall:,.0f} | {one / wall:.2f}x | "
                 f"{busy:.1f} ({med([r['cpu'] for r in rs]):.1f}) | {' / '.join(f'{stg[k]:.1f}' for k in STAGES)} | {idle:.1f} "
                 f"({100 * idle / (w * wall):.0f}% of {w} x wall) | {med([r['read'] for r in rs]):.1f} |")
    L.append("")
    L.append(f"One process without an engine took {base['wall']:.1f} s for the same files, so 1 worker costs "
             f"{one / base['wall']:.2f}x that (the engine's overhead on one core).\n")
    L.append("## Tasks: batch size, serialisation\n")
    L.append("| 2 workers | wall s (median / worst) | tasks |")
    L.append("|---|---:|---:|")
    for b, rs in batch_runs.items():
        L.append(f"| {b} file(s) per task ({rs[0]['files']:,} files) | {med([r['wall'] for r in rs]):.1f} / "
                 f"{max(r['wall'] for r in rs):.1f} | {rs[0]['batches']:,} |")
    L.append("")
    L.append(f"A task of {ser['files']} files: arguments {ser['args_bytes'] / 1024:,.0f} KiB pickled in "
             f"{ser['args_s'] * 1000:.2f} ms, result {ser['result_bytes'] / 1024:,.1f} KiB in "
             f"{ser['result_s'] * 1000:.2f} ms; the task itself ran {ser['task_busy'] * 1000:.0f} ms.\n")
    L.append("## Engine start-up (start, one task, close)\n")
    L.append("| engine | seconds (median / worst) |")
    L.append("|---|---:|")
    for k, v in startup.items():
        L.append(f"| {k} | {med(v):.2f} / {max(v):.2f} |")
    L.append("")
    return "\n".join(L)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--files", type=int, help="number of files (default 10,000)")
    ap.add_argument("--rounds", type=int, help="rounds of 1, 2, 4 workers (default 3)")
    ap.add_argument("--baseline-every", type=int, default=1, metavar="K",
                    help="the no-engine baseline on every K-th file, scaled (default 1: every file)")
    args = ap.parse_args(argv)
    run = Run("fleet", args, argv, full=FULL, quick=QUICK)
    nfiles = args.files or (100 if args.quick else 10_000)
    if args.quick:
        args.baseline_every = max(args.baseline_every, 10)
    rounds = args.rounds or (1 if args.quick else 3)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    t_start = time.perf_counter()
    args.load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="sparsemm-bench-fleet-") as tmp:
        d = Path(tmp) / "maps"
        print(f"writing {nfiles:,} maps files to {d}", file=sys.stderr, flush=True)
        make_files(d, nfiles)
        print("one process, no engine", file=sys.stderr, flush=True)
        base = in_process(d, args.baseline_every)
        expected_rows = base["rows"] if base["every"] == 1 else None  # else: the first fleet run's
        print("engine start-up", file=sys.stderr, flush=True)
        startup = engine_startup(rounds)
        ser = serialisation(d)
        sub = Path(tmp) / "subset"
        sub.mkdir()
        for p in sorted(d.iterdir())[: max(nfiles // 5, 100)]:
            os.link(p, sub / p.name)
        runs: dict[int, list] = {w: [] for w in WORKERS}
        batch_runs: dict[int, list] = {1: [], DEFAULT_BATCH_FILES: []}
        for r in range(rounds):
            for w in WORKERS:
                print(f"round {r + 1}/{rounds}: {w} worker(s)", file=sys.stderr, flush=True)
                runs[w].append(fleet_run(d, w, DEFAULT_BATCH_FILES))
                expected_rows = expected_rows or runs[w][-1]["rows"]
                if runs[w][-1]["rows"] != expected_rows:
                    raise SystemExit("bench_fleet: a fleet run lost rows")
                base["fleet_rows"] = expected_rows
            for b in batch_runs:
                print(f"round {r + 1}/{rounds}: batch {b}", file=sys.stderr, flush=True)
                batch_runs[b].append(fleet_run(sub, 2, b))
            # Each finished round is written: a long run cut short keeps what it measured.
            text = report(args, nfiles, base, startup, runs, batch_runs, ser, time.perf_counter() - t_start,
                          rounds_done=r + 1, rounds=rounds)
            run.write(text, echo=r + 1 == rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
