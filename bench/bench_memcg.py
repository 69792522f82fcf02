"""Kernel bytes in a memory cgroup: the model's ``memcg_bytes`` against the kernel, busy or quiet.

Runs about 6 minutes on the shared 2-vCPU machine (as root; needs a memory cgroup, see docs/opscript.md).
Three parts, each printed as a Markdown table:

1. independent: 20,000 one-page guards in a written 40,001-page mapping, as ``mprotect``
   (vma design) and as ``MADV_GUARD_INSTALL`` (pte design), in sequential and random order,
   each built by a forked child of this script in a cgroup this script makes itself (plain
   ``os.mkdir``, ctypes syscalls, ``memory.kmem.usage_in_bytes`` read before and after: none of
   sparsemm's measuring code). The vma-minus-pte difference beside the model's prediction.
2. busy vs quiet: ``sparsemm.opscript.measure.measure_script`` (``sparsemm measure``) on the
   vma-design script and ``reproduce`` on the bundled Chromium renderer, first alone, then
   with two load generators (tests/disturber.py) churning VMAs, slab objects and tasks.
3. VmPTE at 30,000 populated guards: every run of ``measure`` beside the prediction.

Usage: ``.venv/bin/python bench/bench_memcg.py [--repeat N] [--json FILE]``. The analysis of
these figures is ``bench/results_costs_memcg.md``; ``--record`` writes the raw tables of a run
to ``bench/results_memcg.md``. Without a memory cgroup the run is skipped (exit 0; with
``--record``, exit 2).
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Run, Tee, parser, skip  # noqa: E402
from sparsemm.model import designs
from sparsemm.model.costs import constants
from sparsemm.native import memcg
from sparsemm.opscript.designs import run_design
from sparsemm.opscript.measure import measure_script, prediction_from_counts
from sparsemm.opscript.script import parse_script

ROOT = Path(__file__).resolve().parent.parent
PAGE = mmap.PAGESIZE
MADV_GUARD_INSTALL = 102
GUARDS = 20_000  # part 1 (2,000 with --quick)
VMPTE_GUARDS = 30_000  # part 3 (3,000 with --quick)
FULL, QUICK = "about 6 minutes", "about 40 s"
TITLE = "Kernel bytes in a memory cgroup, busy or quiet (`bench/bench_memcg.py`)"


# --- 1. an independent measurement ------------------------------------------------------------

def _v1_memory_dir() -> str:
    """Our own memory cgroup directory, found without sparsemm: /proc/self/cgroup on a v1 mount."""
    with open("/proc/self/cgroup", encoding="ascii") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                return "/sys/fs/cgroup/memory" + path
    raise SystemExit("needs a cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")


def independent(kind: str, order: str, seed: int) -> int:
    """Bytes the kmem counter rose by while a child built ``GUARDS`` guards of ``kind``
    (``mprotect`` or ``markers``) in ``order``, its mapping written before the baseline.
    The child is forked, joins a cgroup made here, and reports through a pipe."""
    cg = os.path.join(_v1_memory_dir(), f"bench-memcg-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(cg)
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                with open(os.path.join(cg, "cgroup.procs"), "w") as fh:
                    fh.write(str(os.getpid()))
                libc = ctypes.CDLL(None, use_errno=True)
                libc.mmap.restype = ctypes.c_void_p
                libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_long)
                libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                pages = 2 * GUARDS + 1
                base = libc.mmap(None, pages * PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
                ctypes.memset(base, 1, pages * PAGE)  # every page written: tables, anon_vma
                at = [base + (2 * i + 1) * PAGE for i in range(GUARDS)]
                if order == "random":
                    random.Random(seed).shuffle(at)
                counter = os.open(os.path.join(cg, "memory.kmem.usage_in_bytes"), os.O_RDONLY)
                time.sleep(0.1)
                before = int(os.pread(counter, 64, 0))
                for addr in at:
                    if kind == "mprotect":
                        rc = libc.mprotect(addr, PAGE, 0)
                    else:
                        rc = libc.madvise(addr, PAGE, MADV_GUARD_INSTALL)
                    if rc != 0:
                        raise OSError(ctypes.get_errno(), "guard failed")
                time.sleep(0.1)  # deferred frees (none expected here)
                after = int(os.pread(counter, 64, 0))
                os.write(w, str(after - before).encode())
                status = 0
            finally:
                os._exit(status)
        os.close(w)
        data = os.read(r, 64)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if status or not data:
            raise SystemExit(f"independent child failed (status {status})")
        return int(data)
    finally:
        for _ in range(100):
            try:
                os.rmdir(cg)
                break
            except OSError:
                time.sleep(0.02)


def guard_script(advice: str | None, order: str, seed: int, n: int | None = None) -> dict:
    """``n`` (default GUARDS) one-page guards in a written mapping of 2n+1 pages, as an op script."""
    n = GUARDS if n is None else n
    pages = 2 * n + 1
    at = [2 * i + 1 for i in range(n)]
    if order == "random":
        random.Random(seed).shuffle(at)
    ops = [{"op": "mmap", "at": 0, "len": pages, "prot": "rw"},
           {"op": "touch", "at": 0, "len": pages, "access": "write"}]
    ops += [{"op": "madvise", "at": p, "advice": advice} if advice else
            {"op": "mprotect", "at": p, "prot": "none"} for p in at]
    return {"note": f"{n} guards, {order}", "arena_pages": pages, "ops": ops}


def part_independent(repeat: int, out: dict) -> None:
    print(f"\n### 1. vma minus pte, {GUARDS:,} written guards: an independent cgroup measurement\n")
    print("| order | model: vma - pte (B) | measured vma (B), runs | measured pte (B), runs | "
          "measured vma - pte, median (B) | median / model | worst / model |")
    print("|---|---|---|---|---|---|---|")
    for order in ("sequential", "random"):
        script = parse_script(guard_script("guard_install", order, 1))
        predicted = run_design(script, "vma").cost.memcg - run_design(script, "pte").cost.memcg
        vma = [independent("mprotect", order, 1) for _ in range(repeat)]
        pte = [independent("markers", order, 1) for _ in range(repeat)]
        diffs = [v - p for v, p in zip(vma, pte)]  # side by side: run i of each
        med = statistics.median(diffs)
        worst = max(diffs, key=lambda d: abs(d - predicted))
        print(f"| {order} | {predicted:,} | {', '.join(f'{v:,}' for v in vma)} | "
              f"{', '.join(f'{p:,}' for p in pte)} | {med:,.0f} | {med / predicted:.5f} | "
              f"{worst / predicted:.5f} |", flush=True)
        out.setdefault("independent", []).append(
            {"order": order, "predicted": predicted, "vma": vma, "pte": pte})


# --- 2. busy vs quiet --------------------------------------------------------------------------

class Disturbers:
    """``n`` load generators (tests/disturber.py) running while the block runs."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "disturber.py")])
                      for _ in range(self.n)]
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def _slab_jitter(seconds: float = 1.0) -> int:
    """How far the whole machine's vm_area_struct count moves in ``seconds`` (max - min)."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with open("/proc/slabinfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("vm_area_struct "):
                    seen.append(int(line.split()[1]))
        time.sleep(0.05)
    return max(seen) - min(seen)


def part_busy(repeat: int, out: dict, quick: bool = False) -> None:
    """``quick``: no disturbers, and the renderer reproduced under ``pte`` alone."""
    from importlib import resources

    from sparsemm.analyze.guards import GuardPolicy
    from sparsemm.analyze.maps import parse_maps
    from sparsemm.analyze.report import analyze
    from sparsemm.analyze.reproduce import reproduce

    print("\n### 2. the same kernel bytes on a busy machine as on a quiet one\n")
    print("| what | load | vm_area_struct jitter, whole machine, 1 s | memcg runs (B) | median (B) | "
          "predicted (B) | median - predicted | slab rows dropped |")
    print("|---|---|---|---|---|---|---|---|")
    text = resources.files("sparsemm.data").joinpath(
        "maps", "chromium150_renderer_heavy_default.maps").read_text(encoding="utf-8")
    report = analyze(parse_maps(text, "renderer"), GuardPolicy(), source="renderer")
    vma_script = parse_script(guard_script(None, "random", 1))
    vma_pred = prediction_from_counts(run_design(vma_script, "pte").counts)["memcg_bytes"]
    for load in ((0,) if quick else (0, 2)):
        with Disturbers(load):
            jitter = _slab_jitter()
            cases = [(f"measure, {GUARDS:,} guards (vma, random)",
                      lambda: (measure_script(vma_script, repeat=repeat), vma_pred))]
            for d in ((designs.kernel_design(),) if quick else designs.reproducible()):
                def rep(d=d):
                    r = reproduce(report.layout_obj, d, repeat=repeat, source="renderer")
                    return r.measured, r.predicted["memcg_bytes"]
                cases.append((f"reproduce renderer, design {d}", rep))
            for name, fn in cases:
                m, pred = fn()
                runs = [r["memcg_bytes"] for r in m.runs]
                med = m.values["memcg_bytes"]
                print(f"| {name} | {'no disturber' if not load else f'{load} disturbers'} | {jitter:,} | "
                      f"{', '.join(f'{x:,}' for x in runs)} | {med:,} | {pred:,} | {med - pred:+,} | "
                      f"{', '.join(sorted(m.dropped)) or '-'} |", flush=True)
                out.setdefault("busy", []).append({"what": name, "load": load, "jitter": jitter,
                                                   "runs": runs, "median": med, "predicted": pred,
                                                   "dropped": sorted(m.dropped)})


# --- 3. VmPTE exact ----------------------------------------------------------------------------

def part_vmpte(rounds: int, out: dict) -> None:
    script = parse_script(guard_script(None, "sequential", 1, n=VMPTE_GUARDS))
    pred = prediction_from_counts(run_design(script, "pte").counts)
    vmpte, attempts, disturbed = [], 0, 0
    for _ in range(rounds):
        m = measure_script(script, repeat=3)
        vmpte += [r["vmpte_bytes"] for r in m.runs]
        attempts += m.attempts
        disturbed += m.self_disturbed
    print(f"\n### 3. VmPTE at {VMPTE_GUARDS:,} written mprotect guards ({2 * VMPTE_GUARDS + 1:,} VMAs)\n")
    print("| runs | predicted VmPTE (B) | measured, distinct values (count) | runs made | "
          "runs where the measuring process changed its own mappings |")
    print("|---|---|---|---|---|")
    counts = {v: vmpte.count(v) for v in sorted(set(vmpte))}
    print(f"| {len(vmpte)} | {pred['vmpte_bytes']:,} | "
          f"{', '.join(f'{v:,} ({n})' for v, n in counts.items())} | {attempts} | {disturbed} |")
    out["vmpte"] = {"predicted": pred["vmpte_bytes"], "runs": vmpte, "attempts": attempts}


def main(argv: list[str]) -> int:
    global GUARDS, VMPTE_GUARDS
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--repeat", type=int, help="runs per figure (default 5; --quick 1)")
    ap.add_argument("--vmpte-rounds", type=int, help="measure calls of 3 runs (default 4; --quick 1)")
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--json", help="write the raw figures here")
    args = ap.parse_args(argv)
    run = Run("memcg", args, argv, full=FULL, quick=QUICK)
    repeat = args.repeat or (1 if args.quick else 5)
    rounds = args.vmpte_rounds or (1 if args.quick else 4)
    if args.quick:
        GUARDS, VMPTE_GUARDS = 2_000, 3_000
    try:
        h = memcg.find_hierarchy()
    except memcg.MemcgUnavailable as exc:
        return skip(run, TITLE, f"no memory cgroup: {exc}")
    if os.geteuid() != 0:
        return skip(run, TITLE, "needs root (it makes memory cgroups)")
    c = constants()
    out: dict = {}
    parts = set(args.parts.split(","))
    with Tee() as tee:
        if "1" in parts:
            part_independent(repeat, out)
        if "2" in parts:
            part_busy(repeat, out, args.quick)
        if "3" in parts:
            part_vmpte(rounds, out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    head = run.header(TITLE, [
        f"{h.method}; charge slack {memcg.charge_slack_bytes():,} B; cost constants {c.kernel}; "
        f"repeat={repeat}. The reading of these figures: results_costs_memcg.md."])
    run.write("\n".join(head) + tee.text, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
