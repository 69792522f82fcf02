"""Two source trees side by side: is a change behaviour-preserving and no slower?

Times the same work on the code of two checkouts (``--base`` and ``--new``, each a
directory holding ``src/sparsemm`` and ``bench/``), alternating fresh child processes
round by round so that both see the same machine load:

- ``analyze``: ``analyze()`` of the synthetic 65,530-VMA PartitionAlloc-shaped map of
  ``bench_analyze.py`` (all designs, the shared prefix, the parallel children);
- ``design <d>``: ``run_design`` of that map's layout script under one design (parse excluded);
- ``replay <d>``: ``run_model`` of ``bench_model.py``'s 20,000-op guard-heavy mix under one design;
- ``100k VMAs``: 100,000 MAP_FIXED mmaps into one AddressSpace, then an mprotect splitting
  each VMA, then munmap of each (``bench_model.py`` section 2's operations, whole loops timed).

Run: ``python3 bench/bench_trees.py --base /tmp/old [--new .] [--rounds 5]`` (make the base
with ``git archive <commit> | tar -x -C /tmp/old``). Prints medians, worst runs and new/base
ratios of wall-clock time, and of CPU time (user + system, the child and the processes it
forked and waited for: steadier than wall clock on a busy machine), and writes them to
``out/bench/results_trees.md``. Without ``--base`` (as in ``make bench``) there is nothing to
compare: the results say so, and ``--record`` leaves ``bench/results_trees.md``, the recorded
comparisons, as they are (a comparison is recorded by hand, with its two trees named).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Run, parser  # noqa: E402

FULL = "about 45 minutes at 5 rounds with --base (none without)"
QUICK = "about 2 minutes with --base (1 round, the replays and the 100k VMAs), none without"
TITLE = "Two source trees side by side (`bench/bench_trees.py`)"

CHILD = r"""
import gc, json, resource, sys, time
def cpu():  # this process and the children it waited for (analyze forks the designs)
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
tree, job = sys.argv[1], sys.argv[2]
sys.path[:0] = [tree + "/src", tree + "/bench"]
import sparsemm
assert sparsemm.__file__.startswith(tree), sparsemm.__file__
from bench_analyze import synthetic_map
from sparsemm.analyze.maps import parse_maps
from sparsemm.opscript.script import parse_script
kind, _, arg = job.partition(" ")
if kind == "analyze":
    from sparsemm.analyze.report import analyze
    entries = parse_maps(synthetic_map(), "synthetic")
    t0, c0 = time.perf_counter(), cpu()
    analyze(entries, source="synthetic")
elif kind == "design":
    from sparsemm.analyze.guards import find_guards
    from sparsemm.analyze.rebuild import build_layout
    from sparsemm.opscript.designs import run_design
    entries = parse_maps(synthetic_map(), "synthetic")
    script = parse_script(build_layout(entries, find_guards(entries)).script)
    t0, c0 = time.perf_counter(), cpu()
    r = run_design(script, arg)
    assert not r.error, r.error
elif kind == "replay":
    try:
        from bench_replay import guard_mix
    except ImportError:  # a tree from before bench_replay.py
        from bench_model import guard_mix
    from sparsemm.opscript.model_backend import run_model
    script = parse_script(guard_mix(20_000))
    t0, c0 = time.perf_counter(), cpu()
    run_model(script, arg)
elif kind == "vmas":
    from sparsemm.abi import MapFlag
    from sparsemm.model.mm import AddressSpace
    n, page = 100_000, 4096
    base = 0x1000_0000_0000
    fixed = int(MapFlag.PRIVATE | MapFlag.ANONYMOUS | MapFlag.FIXED)
    mm = AddressSpace(max_map_count=1 << 30)  # past vm.max_map_count, as bench_model does
    gc.disable()
    t0, c0 = time.perf_counter(), cpu()
    for i in range(n):
        mm.mmap(base + i * 4 * page, 2 * page, 3, fixed)
    for i in range(n):
        mm.mprotect(base + i * 4 * page, page, 1)
    for i in range(n):
        mm.munmap(base + i * 4 * page, 2 * page)
print(json.dumps([time.perf_counter() - t0, cpu() - c0]))
"""

JOBS = ["analyze", "design vma", "design pte", "design tree", "replay pte", "replay vma",
        "replay tree", "vmas"]
LABELS = {"vmas": "100k VMAs: mmap + split + munmap each"}


def run(tree: str, job: str) -> list[float]:
    """``[wall seconds, CPU seconds]`` of ``job`` on ``tree``, in a fresh child."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("PYTHONPATH", None)
    out = subprocess.run([sys.executable, "-c", CHILD, tree, job], capture_output=True, text=True,
                         env=env, timeout=1800)
    if out.returncode:
        raise RuntimeError(f"{job} on {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--base", help="the reference tree (has src/sparsemm)")
    ap.add_argument("--new", default=str(HERE.parent), help="the tree under test (default: this one)")
    ap.add_argument("--rounds", type=int, help="rounds (default 5; --quick 1)")
    ap.add_argument("--jobs", nargs="*", help=f"subset of {JOBS}")
    args = ap.parse_args(argv)
    run_ = Run("trees", args, argv, full=FULL, quick=QUICK)
    if not args.base:
        why = "no --base: a comparison of two checkouts, run by hand"
        if args.record:
            print(f"bench_trees: not run ({why}); bench/results_trees.md keeps its recorded comparisons")
            return 0
        run_.write("\n".join(run_.header(TITLE) + [f"Not run: {why}."]))
        return 0
    rounds = args.rounds or (1 if args.quick else 5)
    jobs = args.jobs or ([j for j in JOBS if not j.startswith(("analyze", "design"))] if args.quick else JOBS)
    base, new = str(Path(args.base).resolve()), str(Path(args.new).resolve())
    times: dict[tuple[str, str], list[list[float]]] = {}
    for r in range(rounds):
        for job in jobs:
            order = (base, new) if r % 2 == 0 else (new, base)  # alternate who goes first
            for tree in order:
                times.setdefault((job, tree), []).append(run(tree, job))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    rows = ["| work | wall: base median s | new median s | new/base | base worst | new worst "
            "| CPU: base median s | new median s | new/base |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for job in jobs:
        cells = []
        for k in (0, 1):
            b = [t[k] for t in times[job, base]]
            n = [t[k] for t in times[job, new]]
            mb, mn = statistics.median(b), statistics.median(n)
            cells += [f"{mb:.3f}", f"{mn:.3f}", f"{mn / mb:.2f}"]
            if k == 0:
                cells += [f"{max(b):.3f}", f"{max(n):.3f}"]
        rows.append(f"| {LABELS.get(job, job)} | " + " | ".join(cells) + " |")
    run_.write("\n".join(run_.header(TITLE, [
        f"base `{args.base}`, new `{args.new}`; {rounds} rounds, base and new alternating in fresh "
        "child processes (who goes first alternates by round); medians."]) + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
