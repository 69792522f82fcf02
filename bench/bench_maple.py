"""Maple nodes in ``mm->mm_mt``: the model's node count (``sparsemm.model.maple``) against the kernel.

For each layout a child process maps one large read-write region and turns every other page of
it into a guard VMA, in sequential, reverse or random order, either by ``mprotect(PROT_NONE)``
(two VMA splits per guard) or by a separate ``mmap(MAP_FIXED, PROT_NONE)`` of the guard page
(two splits, then a store over the middle piece). Sizes: 10k, 30k and 60k VMAs (V = 2g + 1
VMAs for g guards). Two kernel measurements:

- ``trace`` (exact, per process): the child runs under ``perf record`` on the
  ``kmem:kmem_cache_alloc`` tracepoint (``name == "maple_node"``), tracefs mounted in a private
  mount namespace; the maple nodes the child allocated inside its loop, by call site, give the
  levels ``mas_split`` split or pushed and the pushes, hence the nodes added (see
  ``results_maple.md``). Needs ``perf``, ``unshare`` and root.
- ``slab`` (whole machine): ``/proc/slabinfo`` ``active_objs`` of ``maple_node`` after a slab
  shrink and an RCU grace period (``membarrier(MEMBARRIER_CMD_GLOBAL)``), before and after the
  loop of a forked child, then once more after unmapping the region; runs in which a task
  started or ended, or whose teardown reading does not return to the baseline within
  ``--tolerance`` nodes, are set aside; layouts alternate round by round.

The prediction replays each run's layout on the model: the child's ``/proc/self/maps`` (read
after the region was mapped) loaded into a ``VmaTree`` in address order, then the guards made
with ``AddressSpace.mprotect``/``mmap``. ``--overhead`` also times the model with and without
its node model.

Run time on the 2-vCPU shared machine, as root: ``trace`` about 4 minutes, ``slab`` about 15
minutes at the default 12 rounds, the overhead about 7 minutes (``--no-overhead`` leaves it
out); ``--quick`` (10k VMAs, 2 slab rounds, the overhead on 5,000 VMAs) about 1 minute.
Prints Markdown tables and writes them to ``out/bench/results_maple.md``; ``--record`` writes
``bench/results_maple.md`` (the notes below its marker line are kept). ``--raw FILE`` keeps
every slab run as JSON lines and ``--from-raw FILE`` reports them again without measuring.
Without root, ``perf`` or ``unshare`` the run is skipped (and says why).

Usage: ``.venv/bin/python bench/bench_maple.py [--quick | --record] [--method trace|slab|both|none]
[--no-overhead] [--rounds N] [--raw FILE | --from-raw FILE]``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import Run, parser as bench_parser, skip  # noqa: E402

TITLE = "Maple nodes in `mm->mm_mt`: the model's node count against the kernel (`bench/bench_maple.py`)"
FULL = "about 26 minutes as root (trace 4, slab 15 at 12 rounds, overhead 7)"
QUICK = "about 1 minute (10k VMAs, 2 slab rounds, overhead on 5,000 VMAs)"
MARKER = "<!-- notes below are kept when the bench rewrites the tables -->"
PAGE = mmap.PAGESIZE
SLAB = "/sys/kernel/slab/maple_node/shrink"
SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL = 324, 1
SIZES = (10_000, 30_000, 60_000)
ORDERS = ("sequential", "reverse", "random")
KINDS = ("mprotect", "mmap")
SEED = 1


# --- the kernel side (a forked child; plain ctypes, none of sparsemm's measuring code) -----------

def _maple_active() -> int:
    with open("/proc/slabinfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("maple_node "):
                return int(line.split()[1])
    raise SystemExit("no maple_node row in /proc/slabinfo")


def _settled(libc) -> int:
    """maple_node active objects once RCU-deferred frees have landed and per-CPU caches are
    flushed: shrink, a grace period, a short wait for the callbacks, shrink; repeated until two
    readings agree (at most 5)."""
    prev = None
    for _ in range(5):
        with open(SLAB, "w") as fh:
            fh.write("1")
        libc.syscall(SYS_MEMBARRIER, MEMBARRIER_CMD_GLOBAL, 0, 0)
        time.sleep(0.03)
        with open(SLAB, "w") as fh:
            fh.write("1")
        now = _maple_active()
        if now == prev:
            return now
        prev = now
    return prev


def _tasks() -> tuple[int, int]:
    with open("/proc/loadavg", encoding="ascii") as fh:
        f = fh.read().split()
    return int(f[4]), int(f[3].split("/")[1])


def guard_pages(vmas: int, order: str, seed: int = SEED) -> list[int]:
    """Page offsets (in the region) of the guards that make ``vmas`` VMAs, in ``order``."""
    at = [2 * i + 1 for i in range((vmas - 1) // 2)]
    if order == "reverse":
        at.reverse()
    elif order == "random":
        random.Random(seed).shuffle(at)
    return at


def kernel_run(kind: str, vmas: int, order: str) -> dict:
    """Build one layout in a forked child and return its readings."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_long)
            libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
            libc.syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_int)
            pages = vmas if vmas % 2 else vmas + 1
            rw = mmap.PROT_READ | mmap.PROT_WRITE
            private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            base = libc.mmap(None, pages * PAGE, rw, private, -1, 0)
            at = [base + p * PAGE for p in guard_pages(vmas, order)]
            fixed = private | 0x10  # MAP_FIXED
            with open("/proc/self/maps", encoding="ascii") as fh:
                maps = fh.read()
            out = bytearray(1 << 16)  # the report's buffer, allocated before the baseline
            tasks0 = _tasks()
            before = _settled(libc)
            if kind == "mprotect":
                for addr in at:
                    if libc.mprotect(addr, PAGE, 0):
                        raise OSError(ctypes.get_errno(), "mprotect")
            else:
                for addr in at:
                    if libc.mmap(addr, PAGE, 0, fixed, -1, 0) != addr:
                        raise OSError(ctypes.get_errno(), "mmap")
            after = _settled(libc)
            tasks1 = _tasks()
            libc.munmap(base, pages * PAGE)
            teardown = _settled(libc)
            tasks2 = _tasks()
            doc = json.dumps({"kind": kind, "vmas": vmas, "order": order, "base": base,
                              "pages": pages, "maps": maps, "before": before, "after": after,
                              "teardown": teardown, "quiet": tasks0 == tasks1 == tasks2}).encode()
            out[:len(doc)] = doc
            os.write(w, bytes(out[:len(doc)]))
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 1 << 16)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status:
        raise SystemExit(f"kernel child failed ({kind} {vmas} {order}, status {status})")
    return json.loads(b"".join(chunks))


def child_main(kind: str, vmas: int, order: str) -> int:
    """``--child``: build one layout in this process and print its maps and the loop's
    CLOCK_MONOTONIC window as JSON (run under perf by :func:`trace_run`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    pages = vmas if vmas % 2 else vmas + 1
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    base = libc.mmap(None, pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, private, -1, 0)
    at = [base + p * PAGE for p in guard_pages(vmas, order)]
    with open("/proc/self/maps", encoding="ascii") as fh:
        maps = fh.read()
    time.sleep(0.05)
    t0 = time.clock_gettime(time.CLOCK_MONOTONIC)
    if kind == "mprotect":
        for addr in at:
            if libc.mprotect(addr, PAGE, 0):
                raise OSError(ctypes.get_errno(), "mprotect")
    else:
        for addr in at:
            if libc.mmap(addr, PAGE, 0, private | 0x10, -1, 0) != addr:
                raise OSError(ctypes.get_errno(), "mmap")
    t1 = time.clock_gettime(time.CLOCK_MONOTONIC)
    print(json.dumps({"kind": kind, "vmas": vmas, "order": order, "base": base, "pages": pages,
                      "maps": maps, "pid": os.getpid(), "t0": t0, "t1": t1}))
    return 0


#: Functions (as perf names the allocation's call site on this 6.18.44 build) that allocate
#: maple nodes in mas_split: two per level it splits or pushes (mas_wr_bnode, where mas_split is
#: inlined), one parent per push (mas_push_data); any allocation in the rebuild paths makes a
#: run uncountable by this method.
_SPLIT_FN, _PUSH_FN = "mas_wr_bnode", "mas_push_data"
_REBUILD_FNS = ("mas_spanning_rebalance", "mas_rebalance", "mas_wr_spanning_store",
                "mas_destroy_rebalance")


def trace_run(kind: str, vmas: int, order: str, tmp: str) -> dict:
    """One layout built by a fresh ``--child`` process under ``perf record`` (tracefs mounted in
    a private mount namespace: nothing changes outside it); the maple_node allocations the
    child made inside its loop, by call site."""
    import subprocess
    data, out, txt = f"{tmp}.data", f"{tmp}.json", f"{tmp}.txt"
    inner = (f"mount -t tracefs nodev /sys/kernel/tracing && "
             f"perf record -q -k mono -e kmem:kmem_cache_alloc --filter 'name == \"maple_node\"' "
             f"-a -o {data} -- {sys.executable} {os.path.abspath(__file__)} --child {kind} {vmas} {order} "
             f"> {out} && perf script -i {data} -F pid,time,trace > {txt} 2>/dev/null")
    subprocess.run(["unshare", "-m", "sh", "-c", inner], check=True, timeout=600)
    with open(out, encoding="utf-8") as fh:
        run = json.loads(fh.read().strip().splitlines()[-1])
    sites: dict[str, int] = {}
    pid = str(run["pid"])
    with open(txt, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3 or parts[0] != pid:
                continue
            t = float(parts[1].rstrip(":"))
            if not run["t0"] <= t <= run["t1"]:
                continue
            site = next((f[10:] for f in parts if f.startswith("call_site=")), "?")
            fn = site.split("+")[0].split(".")[0]
            sites[fn] = sites.get(fn, 0) + 1
    for path in (data, out, txt):
        os.unlink(path)
    run["sites"] = sites
    run["levels"] = sites.get(_SPLIT_FN, 0) // 2
    run["pushes"] = sites.get(_PUSH_FN, 0)
    run["countable"] = not any(sites.get(f) for f in _REBUILD_FNS) and sites.get(_SPLIT_FN, 0) % 2 == 0
    return run


def measure(combos, rounds: int, raw: str | None, log) -> list[dict]:
    """``rounds`` slab runs of every layout, alternated, each under the measure lock that
    ``sparsemm measure`` holds too (so two measurements never count each other's objects)."""
    from sparsemm.opscript.lock import measure_lock

    runs: list[dict] = []
    rng = random.Random(7)
    for rnd in range(rounds):
        todo = list(combos)
        rng.shuffle(todo)
        for kind, vmas, order in todo:
            with measure_lock():
                run = kernel_run(kind, vmas, order)
            run["round"] = rnd
            runs.append(run)
            if raw:
                with open(raw, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(run) + "\n")
            log(f"round {rnd} {kind:8} {vmas:6} {order:10} delta {run['after'] - run['before']:6} "
                f"teardown {run['teardown'] - run['before']:+5} quiet {run['quiet']}")
    return runs


# --- the model side ------------------------------------------------------------------------------

def predict(run: dict) -> dict:
    """The model on ``run``'s layout: maple nodes its guards add, and the split levels and
    pushes the node model took (comparable with the traced kernel's)."""
    from sparsemm import abi
    from sparsemm.abi import VmFlag
    from sparsemm.model.mm import AddressSpace
    from sparsemm.model.vma import Vma

    mm = AddressSpace("vma", max_map_count=10 ** 7)
    base, pages = run["base"], run["pages"]
    end = base + pages * PAGE
    for line in run["maps"].splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if (lo >= end or hi <= base) and hi <= abi.TASK_SIZE:   # not [vsyscall]
            # the child's own mappings, stored as they are (a file of their own: never merged)
            mm.tree.insert(Vma(lo, hi, VmFlag.READ, 0, object()))
    mm.mmap(base, pages * PAGE, abi.PROT_READ | abi.PROT_WRITE,
            abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED)
    before = mm.tree.node_count()
    stats0 = dict(mm.tree.maple.stats)
    for p in guard_pages(run["vmas"], run["order"]):
        addr = base + p * PAGE
        if run["kind"] == "mprotect":
            mm.mprotect(addr, PAGE, abi.PROT_NONE)
        else:
            mm.mmap(addr, PAGE, abi.PROT_NONE, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED)
    stats = mm.tree.maple.stats
    return {"added": mm.tree.node_count() - before, "levels": stats["level"] - stats0["level"],
            "pushes": stats["push"] - stats0["push"],
            "rebuilds": stats["spanning"] + stats["rebalance"] - stats0["spanning"] - stats0["rebalance"]}


# --- report --------------------------------------------------------------------------------------

def _key(k):
    return (KINDS.index(k[0]), k[1], ORDERS.index(k[2]))


def summarize_slab(runs: list[dict], tolerance: int) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["kind"], run["vmas"], run["order"]), []).append(run)
    rows = []
    for key in sorted(groups, key=_key):
        group = groups[key]
        good = [g for g in group if g["quiet"] and abs(g["teardown"] - g["before"]) <= tolerance]
        filtered = bool(good)
        if not good:  # no run passed: show every run, marked as such, rather than nothing
            good = group
        deltas = sorted(g["after"] - g["before"] for g in good)
        # each run's layout is the child's (ASLR moves what lies around the mapping): the
        # model replays the first three runs' layouts
        preds = sorted(predict(g)["added"] for g in group[:3])
        row = {"kind": key[0], "vmas": key[1], "order": key[2], "runs": len(group),
               "used": len(good) if filtered else 0, "predicted": statistics.median(preds),
               "preds": preds, "deltas": deltas}
        if deltas:
            med = statistics.median(deltas)
            q = len(deltas) // 4
            row.update(median=med, lo=deltas[0], hi=deltas[-1], error=(row["predicted"] - med) / med,
                       iqr=(deltas[q], deltas[-1 - q]))
        rows.append(row)
    return rows


def table_slab(rows: list[dict]) -> str:
    out = ["| guards by | VMAs | order | model: nodes added (3 layouts) | slab median | model error | "
           "slab IQR | slab min..max | quiet runs used/made |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "median" in r:
            model = f"{r['predicted']:,.0f} ({', '.join(f'{p:,}' for p in r['preds'])})"
            out.append(f"| {r['kind']} | {r['vmas']:,} | {r['order']} | {model} | "
                       f"{r['median']:,.0f} | {100 * r['error']:+.1f}% | {r['iqr'][0]:,}..{r['iqr'][1]:,} | "
                       f"{r['lo']:,}..{r['hi']:,} | {r['used'] or 'none (all runs shown)'}/{r['runs']} |")
        else:
            out.append(f"| {r['kind']} | {r['vmas']:,} | {r['order']} | {r['predicted']:,} | - | - | - | - | "
                       f"0/{r['runs']} |")
    return "\n".join(out)


def table_trace(traced: list[dict]) -> str:
    out = ["| guards by | VMAs | order | kernel: levels split or pushed | kernel: pushes | "
           "kernel: nodes added | model: levels | model: pushes | model: nodes added (= levels - pushes + new roots) | "
           "error (nodes) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(traced, key=lambda r: _key((r["kind"], r["vmas"], r["order"]))):
        m = r["model"]
        k_added = r["levels"] - r["pushes"]
        note = "" if r["countable"] else " (rebuild paths seen: not countable)"
        out.append(f"| {r['kind']} | {r['vmas']:,} | {r['order']} | {r['levels']:,} | {r['pushes']:,} | "
                   f"{k_added:,}{note} | {m['levels']:,} | {m['pushes']:,} | {m['added']:,} | "
                   f"{100 * (m['added'] - k_added) / k_added:+.2f}% |")
    return "\n".join(out)


def overhead(repeat: int, vmas: int, map_vmas: int, log) -> list[tuple[str, float, float]]:
    """What the node model costs: the same work with ``VmaTree.NODE_MODEL`` on and off,
    alternated, best of ``repeat``: (what, seconds off, seconds on). ``map_vmas``: the size
    of bench_analyze's synthetic map whose designs are replayed; ``vmas``: the model's size
    for the single ops."""
    import bench_analyze
    import bench_model
    from sparsemm.analyze.guards import find_guards
    from sparsemm.analyze.maps import parse_maps
    from sparsemm.analyze.rebuild import build_layout
    from sparsemm.model import designs
    from sparsemm.model.vma_tree import VmaTree
    from sparsemm.opscript.designs import run_design
    from sparsemm.opscript.script import parse_script

    entries = parse_maps(bench_analyze.synthetic_map(map_vmas), "synthetic")
    script = parse_script(build_layout(entries, find_guards(entries)).script)
    rows: dict[str, list[list[float]]] = {}

    def timed(name: str, on: bool, fn) -> None:
        VmaTree.NODE_MODEL = on
        try:
            t = time.perf_counter()
            fn()
            rows.setdefault(name, [[], []])[on].append(time.perf_counter() - t)
        finally:
            VmaTree.NODE_MODEL = True

    for _ in range(repeat):
        for on in (False, True):
            for d in designs.names():
                timed(f"analyze's model runs, {map_vmas:,}-VMA map, design {d}", on,
                      lambda d=d: run_design(script, d))
            mm = None

            def build():
                nonlocal mm
                mm = bench_model.build_model(vmas)
            timed(f"build {vmas:,} VMAs (mmap each)", on, build)
            VmaTree.NODE_MODEL = on
            ops = bench_model.model_ops(mm, vmas, 500)
            VmaTree.NODE_MODEL = True
            for op, times in ops.items():
                rows.setdefault(f"{op} at {vmas:,} VMAs, median of 500 (us)", [[], []])[on].append(
                    statistics.median(times))       # time_each gives microseconds
        log("overhead round done")
    return [(name, min(v[0]), min(v[1])) for name, v in rows.items()]


def table_overhead(rows) -> str:
    out = ["| work | without node model | with node model | ratio |", "|---|---|---|---|"]
    for name, off, on in rows:
        unit = "" if "(us)" in name else " s"
        out.append(f"| {name} | {off:.2f}{unit} | {on:.2f}{unit} | {on / off:.2f}x |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    ap = bench_parser(__doc__, FULL, QUICK)
    ap.add_argument("--method", choices=("trace", "slab", "both", "none"), default="both",
                    help="kernel measurements to make (none: only the overhead); default both")
    ap.add_argument("--rounds", type=int, default=None, help="slab runs per layout (default 12; quick 2)")
    ap.add_argument("--sizes", default=None, help="comma-separated VMA counts (default 10000,30000,60000)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="how guards are made (default: %(default)s)")
    ap.add_argument("--tolerance", type=int, default=8,
                    help="nodes the teardown reading may differ from the baseline (default 8)")
    ap.add_argument("--raw", help="append every slab run to this JSON-lines file")
    ap.add_argument("--from-raw", help="report the slab runs in this JSON-lines file; measure no slab")
    ap.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True,
                    help="time the model with and without the node model (default on)")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "VMAS", "ORDER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child[0], int(args.child[1]), args.child[2])
    run = Run("maple", args, argv, full=FULL, quick=QUICK)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.method != "none":
        if os.geteuid() != 0 or not os.access(SLAB, os.W_OK):
            return skip(run, TITLE, "the kernel side needs root (slab shrink, perf tracepoints)")
        if args.method in ("trace", "both") and not (shutil.which("perf") and shutil.which("unshare")):
            return skip(run, TITLE, "the traced kernel side needs perf and unshare")
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else \
        (SIZES[:1] if args.quick else SIZES)
    combos = [(k, v, o) for k in args.kinds.split(",") for v in sizes for o in ORDERS]
    traced: list[dict] = []
    if args.method in ("trace", "both"):
        tmp = f"/tmp/bench-maple-{os.getpid()}"
        for kind, vmas, order in combos:
            one = trace_run(kind, vmas, order, tmp)
            one["model"] = predict(one)
            traced.append(one)
            log(f"trace {kind:8} {vmas:6} {order:10} kernel {one['levels'] - one['pushes']:6} "
                f"model {one['model']['added']:6}")
    slab_rows: list[dict] = []
    if args.method in ("slab", "both"):
        if args.from_raw:
            with open(args.from_raw, encoding="utf-8") as fh:
                runs = [json.loads(line) for line in fh if line.strip()]
        else:
            rounds = args.rounds or (2 if args.quick else 12)
            log(f"slab: {len(combos)} layouts x {rounds} rounds")
            runs = measure(combos, rounds, args.raw, log)
        slab_rows = summarize_slab(runs, args.tolerance)
    over = []
    if args.overhead:
        over = overhead(1, 5_000, 5_000, log) if args.quick else overhead(3, 100_000, 65_530, log)
    run.write(report(run, traced, slab_rows, over, bool(args.from_raw)))
    return 0


def report(run: Run, traced, slab_rows, over, from_raw: bool) -> str:
    """The tables under the run's header; the notes kept below the marker line of the tracked
    ``bench/results_maple.md`` follow them (in either destination)."""
    method = ["Run as root; the methods (trace, slab) and how to read them: the notes below."]
    if from_raw:
        method.append("Slab runs read back from a raw file (`--from-raw`), measured earlier.")
    parts = run.header(TITLE, method)
    if traced:
        parts += ["### Exact: the kernel's own split decisions, traced", "", table_trace(traced), ""]
    if over:
        parts += ["### Overhead: the model with and without the node model, best of runs alternated",
                  "", table_overhead(over), ""]
    if slab_rows:
        parts += ["### Whole machine: /proc/slabinfo maple_node deltas", "", table_slab(slab_rows), ""]
    tracked = HERE / "results_maple.md"
    notes = ""
    if tracked.exists() and MARKER in (text := tracked.read_text(encoding="utf-8")):
        notes = text.split(MARKER, 1)[1]
    return "\n".join(parts) + "\n" + MARKER + notes


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
