"""The three guard designs on each workload generator at 1k, 10k and 100k guards.

For every (generator, scale, design): VMAs, whether the ``vma`` design ran into
``vm.max_map_count``, kernel bytes by object from the cost model, and the model's
run time (in this process, one run each). Run: ``PYTHONPATH=src python3 bench/bench_designs.py``
(``--quick``: 1k only).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Run, parser  # noqa: E402

from sparsemm import workloads  # noqa: E402
from sparsemm.model import designs  # noqa: E402
from sparsemm.opscript.designs import run_design  # noqa: E402
from sparsemm.opscript.script import parse_script  # noqa: E402

FULL, QUICK = "about 6 minutes", "about 15 s"

#: (label, generator, kwargs, largest scale). The sparse Wasm shape touches nothing: every
#: marker needs a page table of its own, the case where ``pte`` loses to ``vma``. (Until the
#: model kept markers as page runs, that shape stopped at 10k: 5M one-per-page markers.)
WORKLOADS = [
    ("partition_alloc", workloads.partition_alloc, {}, 100_000),
    ("thread_stacks", workloads.thread_stacks, {"glibc": "2.42", "stack_pages": 160}, 100_000),
    ("wasm (touched)", workloads.wasm_memories, {}, 100_000),
    ("wasm (sparse, untouched)", workloads.wasm_memories,
     {"memory_pages": 16, "guard_pages": 496, "touch_pages": 0}, 100_000),
    ("random", workloads.random_guards, {}, 100_000),
]


def kib(n: int) -> str:
    return f"{n / 1024:,.0f}"


def main(argv: list[str]) -> int:
    args = parser(__doc__, FULL, QUICK).parse_args(argv)
    run = Run("designs", args, argv, full=FULL, quick=QUICK)
    scales = (1_000,) if args.quick else (1_000, 10_000, 100_000)
    rows = []
    findings = []
    for label, gen, kw, top in WORKLOADS:
        for n in scales:
            if n > top:
                continue
            script = parse_script(gen(n, **kw))
            res = {}
            for d in designs.names():  # the registry, in report order
                t0 = time.perf_counter()
                r = run_design(script, d)
                res[d] = (r, time.perf_counter() - t0)
                c, k = r.counts, r.cost
                slab = k.vm_area_struct + k.anon_vma + k.anon_vma_chain + k.maple_node
                rows.append((label, n, d, c.vmas, c.guard_entries, "yes" if r.hit_max_map_count else "no",
                             r.enomem_ops, kib(slab), kib(k.page_tables), kib(k.total),
                             f"{res[d][1]:.2f}"))
                print(" | ".join(map(str, rows[-1])), flush=True)
            v, p = res["vma"][0], res["pte"][0]
            vslab = v.cost.vm_area_struct + v.cost.anon_vma + v.cost.anon_vma_chain + v.cost.maple_node
            pslab = p.cost.vm_area_struct + p.cost.anon_vma + p.cost.anon_vma_chain + p.cost.maple_node
            extra_pt = p.cost.page_tables - v.cost.page_tables
            if v.hit_max_map_count:
                findings.append(f"- **{label}, {n:,} guards**: the `vma` design hits `max_map_count` "
                                f"({v.counts.vmas:,} VMAs, {v.enomem_ops:,} ops (mmap or guard install) refused with "
                                f"ENOMEM); `pte` needs {p.counts.vmas:,} VMA(s), `tree` "
                                f"{res['tree'][0].counts.vmas:,}.")
            if extra_pt > vslab - pslab and not v.hit_max_map_count:  # a wall cuts vma short
                findings.append(f"- **{label}, {n:,} guards**: `pte` pays {kib(extra_pt)} KiB more page "
                                f"tables than `vma`, more than the {kib(vslab - pslab)} KiB of slab "
                                f"`vma` spends on its guard VMAs: sparse guards in never-touched "
                                f"memory favour VMAs (or tree entries).")
    head = ("| workload | guards | design | VMAs | guard entries | hit max_map_count | ENOMEM ops "
            "| slab KiB | page tables KiB | total KiB | model s |")
    lines = run.header("Guard designs on the workload generators (`bench/bench_designs.py`)", [
        "Kernel bytes are the cost model's predictions (`sparsemm.model.costs`, constants measured "
        "on 6.18.44), not measurements: slab = vm_area_struct + anon_vma + anon_vma_chain + "
        "maple_node. \"model s\": one run of `run_design` in this process (wall clock)."])
    lines += [head, "|---" * 11 + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", "What the table shows:", ""] + (findings or ["- (no wall, no page-table crossover)"])
    run.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
