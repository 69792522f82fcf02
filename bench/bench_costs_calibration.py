"""Calibration run: measure simple layouts on the kernel and set them beside costs.py.

Layouts, each at ~1k, ~10k and ~60k VMAs (sizes in pages):
  ladder      one RW mapping of 2g+1 pages, every odd page mprotect(PROT_NONE): 2g+1 VMAs
  ladder-pop  the same, every page written first (anon_vma, AVCs, PTE tables exist)
  markers     the ladder's guards as MADV_GUARD_INSTALL (pte design): 1 VMA ("VMAs" column
              is then 1; the size names the ladder it mirrors)
  stacks-236  glibc 2.36 thread stacks, 128 pages each, top page written: 2 VMAs per thread
  isolated    V one-page RW mappings with one-page holes between: V VMAs, 2V slots
  shared-anon the same, shared anonymous: each mapping also makes a shmem file

For each: the expected MmCounts delta (by hand, below), the measured median
(``sparsemm.opscript.measure.measure_script``: object counts from /proc/slabinfo, whole machine;
kernel bytes from the measuring child's memory cgroup), and costs.py's prediction. Then the
bytes one object of each kind charges the cgroup, solved from the largest size of five layouts
(ladder: VMAs only; ladder-pop: + chains; stacks-236: + anon_vmas; markers: page tables;
shared-anon: + a shmem file each).
Run as root: ``.venv/bin/python bench/bench_costs_calibration.py [--repeat N] [--sizes
1000,10000,60000]``. Prints Markdown tables and, with ``--json FILE``, the raw measurements;
``--record`` writes the tables to ``bench/results_costs_calibration.md`` (the reading of pooled
runs is ``bench/results_costs.md``). Without a memory cgroup the run is skipped (exit 0; with
``--record``, exit 2).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Run, Tee, parser, skip  # noqa: E402

from sparsemm import workloads  # noqa: E402
from sparsemm.model.costs import MmCounts, constants, kernel_cost, maple_nodes_for_slots  # noqa: E402
from sparsemm.native import memcg  # noqa: E402
from sparsemm.native.memcg import charge_slack_bytes  # noqa: E402
from sparsemm.opscript.measure import measure_script  # noqa: E402
from sparsemm.opscript.script import parse_script  # noqa: E402

FULL, QUICK = "5 to 15 minutes", "about 30 s (1k VMAs, 1 run each)"
TITLE = "Cost calibration: kernel objects measured beside `sparsemm.model.costs` (`bench/bench_costs_calibration.py`)"

STACK_PAGES = 128
PTES_PER_TABLE = 512
PAGES_PER_PMD_TABLE = 512 * 512


def ladder(vmas: int, populate: bool) -> tuple[dict, MmCounts]:
    g = (vmas - 1) // 2
    n = 2 * g + 1
    ops = [{"op": "mmap", "at": 0, "len": n, "prot": "rw"}]
    if populate:
        ops.append({"op": "touch", "at": 0, "len": n, "access": "write"})
    ops += [{"op": "mprotect", "at": 2 * i + 1, "prot": "none"} for i in range(g)]
    doc = {"note": f"mprotect ladder, {g} guards{' (populated)' if populate else ''}",
           "arena_pages": n, "ops": ops}
    # One new range in a big unmapped gap: +n VMAs and +1 NULL slot (the gap splits in two).
    counts = MmCounts(vmas=n, gap_slots=1)
    if populate:  # one anon_vma; every VMA split off keeps an AVC to it
        counts.anon_vmas, counts.anon_vma_chains = 1, n
        counts.pte_tables = math.ceil(n / PTES_PER_TABLE)
        counts.pmd_tables, counts.pud_tables = 1, 1  # arena base: fresh 1 GiB and 512 GiB ranges
    return doc, counts


def markers(vmas: int) -> tuple[dict, MmCounts]:
    """The ladder's guards as MADV_GUARD_INSTALL markers: the pte design of the same layout."""
    g = (vmas - 1) // 2
    n = 2 * g + 1
    ops = [{"op": "mmap", "at": 0, "len": n, "prot": "rw"}]
    ops += [{"op": "madvise", "at": 2 * i + 1, "advice": "guard_install"} for i in range(g)]
    doc = {"note": f"marker ladder, {g} guards", "arena_pages": n, "ops": ops}
    # madvise_guard_install() -> anon_vma_prepare(): one anon_vma + AVC; markers need PTE tables
    counts = MmCounts(vmas=1, gap_slots=1, anon_vmas=1, anon_vma_chains=1,
                      pte_tables=math.ceil(n / PTES_PER_TABLE), pmd_tables=1, pud_tables=1)
    return doc, counts


def stacks(vmas: int) -> tuple[dict, MmCounts]:
    threads = vmas // 2
    doc = workloads.thread_stacks(threads, "2.36", STACK_PAGES)
    pages = threads * STACK_PAGES
    # Each RW stack is written once: its own anon_vma (no mergeable neighbour) and one AVC.
    counts = MmCounts(vmas=2 * threads, gap_slots=1, anon_vmas=threads, anon_vma_chains=threads,
                      pte_tables=math.ceil(pages / PTES_PER_TABLE),
                      pmd_tables=math.ceil(pages / PAGES_PER_PMD_TABLE), pud_tables=1)
    return doc, counts


def shared_anon(vmas: int) -> tuple[dict, MmCounts]:
    """V one-page shared anonymous mappings with holes: V VMAs, each with its own shmem file."""
    ops = [{"op": "mmap", "at": 2 * i, "prot": "rw", "flags": ["shared", "anonymous"]} for i in range(vmas)]
    doc = {"note": f"{vmas} isolated shared anonymous pages", "arena_pages": 2 * vmas, "ops": ops}
    return doc, MmCounts(vmas=vmas, gap_slots=vmas, shmem_files=vmas)


def isolated(vmas: int) -> tuple[dict, MmCounts]:
    ops = [{"op": "mmap", "at": 2 * i, "prot": "rw"} for i in range(vmas)]
    doc = {"note": f"{vmas} isolated one-page mappings", "arena_pages": 2 * vmas, "ops": ops}
    return doc, MmCounts(vmas=vmas, gap_slots=vmas)  # V VMAs + V-1 holes + the split outer gap


LAYOUTS = {
    "ladder": lambda v: ladder(v, False),
    "ladder-pop": lambda v: ladder(v, True),
    "markers": markers,
    "stacks-236": stacks,
    "isolated": isolated,
    "shared-anon": shared_anon,
}


def model_nodes(slots: int) -> int | str:
    """The model's VMA-index estimate, if that module is importable (it is being written)."""
    try:
        from sparsemm.model.vma_tree import maple_node_count
    except Exception:  # noqa: BLE001 - optional column
        return "-"
    return maple_node_count(slots)


HEAD = ("| layout | VMAs | slots | vm_area_struct meas/pred | anon_vma meas/pred | "
        "AVC meas/pred | maple_node meas | nodes/slot | costs.py nodes | vma_tree nodes | "
        "VmPTE KiB meas/pred | slab B meas | slab B costs.py | memcg B meas (min..max) | "
        "memcg B costs.py | runs: quiet/used (attempts) |")
SLAB_STRIDES = (("vm_area_struct", 192), ("anon_vma", 104), ("anon_vma_chain", 64), ("maple_node", 256))


def row(name: str, counts: MmCounts, v: dict, runs: str, spread: dict | None = None) -> str:
    """One Markdown row: measured medians ``v`` beside costs.py's prediction for ``counts``."""
    cost = kernel_cost(counts)
    slots = counts.maple_slots
    slab = sum(v[k] * b for k, b in SLAB_STRIDES) if all(k in v for k, _ in SLAB_STRIDES) else "-"
    per_slot = f"{v['maple_node'] / slots:.4f}" if "maple_node" in v else "-"
    return (f"| {name} | {v['arena_vmas']} | {slots} | {v.get('vm_area_struct', '-')}/{counts.vmas} | "
            f"{v.get('anon_vma', '-')}/{counts.anon_vmas} | "
            f"{v.get('anon_vma_chain', '-')}/{counts.anon_vma_chains} | {v.get('maple_node', '-')} | "
            f"{per_slot} | {maple_nodes_for_slots(slots)} | "
            f"{model_nodes(slots)} | {v['vmpte_bytes'] // 1024}/{cost.vmpte // 1024} | {slab} | "
            f"{cost.total - cost.page_tables} | {memcg_cell(v, spread)} | {cost.memcg} | {runs} |")


def memcg_cell(v: dict, spread: dict | None) -> str:
    if "memcg_bytes" not in v:
        return "-"
    lo, hi = (spread or {}).get("memcg_bytes", (v["memcg_bytes"],) * 2)
    return f"{v['memcg_bytes']} ({lo}..{hi})"


def fit(measured: dict[str, tuple[MmCounts, int]]) -> list[str]:
    """Bytes each object charges the cgroup, solved layout by layout from ``measured``
    (layout -> (hand counts, memcg median) at one size), each with its uncertainty: the
    charge slack spread over the objects solved for."""
    slack = charge_slack_bytes()
    page = constants().page_table
    out = []

    def tables(c: MmCounts) -> int:
        return c.pte_tables + c.pmd_tables + c.pud_tables

    if "ladder" not in measured:
        return out
    c, b = measured["ladder"]
    vma = b / c.vmas
    out.append(f"| vm_area_struct | ladder: memcg / VMAs | {vma:.2f} ± {slack / c.vmas:.2f} | "
               f"{constants().charged('vm_area_struct')} |")
    if "shared-anon" in measured:
        c, b = measured["shared-anon"]
        out.append(f"| shmem file of a shared anonymous mmap (inode, file, dentry) | shared-anon: "
                   f"(memcg - VMAs) / files | {(b - c.vmas * vma) / c.shmem_files:.2f} ± "
                   f"{slack / c.shmem_files:.2f} | {constants().memcg_shmem_file} |")
    if "ladder-pop" not in measured:
        return out
    c, b = measured["ladder-pop"]
    anon_vma_model = constants().charged("anon_vma")  # one object: negligible
    avc = (b - tables(c) * page - c.vmas * vma - c.anon_vmas * anon_vma_model) / c.anon_vma_chains
    out.append(f"| anon_vma_chain | ladder-pop: (memcg - tables - VMAs - 1 anon_vma) / chains | "
               f"{avc:.2f} ± {slack / c.anon_vma_chains:.2f} | {constants().charged('anon_vma_chain')} |")
    if "stacks-236" not in measured:
        return out
    c, b = measured["stacks-236"]
    av = (b - tables(c) * page - c.vmas * vma - c.anon_vma_chains * avc) / c.anon_vmas
    out.append(f"| anon_vma | stacks-236: (memcg - tables - VMAs - chains) / anon_vmas | "
               f"{av:.2f} ± {slack / c.anon_vmas:.2f} | {constants().charged('anon_vma')} |")
    if "markers" not in measured:
        return out
    c, b = measured["markers"]
    per_table = (b - vma - av - avc) / tables(c)
    out.append(f"| page-table page | markers: (memcg - 1 VMA - 1 anon_vma - 1 chain) / tables | "
               f"{per_table:.1f} ± {slack / tables(c):.1f} | {page} |")
    return out


def pool(paths: list[str]) -> None:
    """Print one table from several ``--json`` files: per row, the median of all their runs,
    or of their quiet runs alone when there are at least 3 of those."""
    import statistics

    rows: dict[tuple[str, int], dict] = {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for r in json.load(fh):
                m = r["measurement"]
                slot = rows.setdefault((r["layout"], r["size"]), {"counts": r["counts"], "quiet": [],
                                                                   "all": [], "attempts": 0})
                slot["quiet"] += m["runs"][:m["quiet_runs"]]
                slot["all"] += m["runs"]
                slot["attempts"] += m["attempts"]
    print(HEAD)
    print("|" + "---|" * (HEAD.count("|") - 1))
    for (name, _size), slot in rows.items():
        use = slot["quiet"] if len(slot["quiet"]) >= 3 else slot["all"]
        v = {k: statistics.median_low(run[k] for run in use) for k in use[0]}
        counts = MmCounts(**slot["counts"])
        print(row(f"{name} {_size // 1000}k", counts, v, f"{len(slot['quiet'])}/{len(use)} ({slot['attempts']})"))


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--repeat", type=int, help="runs per layout (default 3; --quick 1)")
    ap.add_argument("--sizes", help="VMAs per layout (default 1000,10000,60000; --quick 1000)")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--json", help="write the raw measurements here")
    ap.add_argument("--pool", nargs="+", metavar="JSON", help="measure nothing; print the table "
                    "pooled from earlier --json files")
    args = ap.parse_args(argv)
    if args.pool:
        pool(args.pool)
        return 0
    run = Run("costs_calibration", args, argv, full=FULL, quick=QUICK)
    repeat = args.repeat or (1 if args.quick else 3)
    sizes = [int(s) for s in (args.sizes or ("1000" if args.quick else "1000,10000,60000")).split(",")]
    try:
        memcg.find_hierarchy()
    except memcg.MemcgUnavailable as exc:
        return skip(run, TITLE, f"no memory cgroup: {exc}")
    if os.geteuid() != 0:
        return skip(run, TITLE, "needs root (it makes memory cgroups and reads /proc/slabinfo)")
    raw = []
    largest: dict[str, tuple[MmCounts, int]] = {}
    with Tee() as tee:
        print(HEAD)
        print("|" + "---|" * (HEAD.count("|") - 1))
        for name in args.layouts.split(","):
            for size in sizes:
                doc, counts = LAYOUTS[name](size)
                t0 = run.elapsed()
                m = measure_script(parse_script(doc), repeat=repeat)
                secs = run.elapsed() - t0
                print(row(f"{name} {size // 1000}k", counts, m.values,
                          f"{m.quiet_runs}/{len(m.runs)} ({m.attempts})", m.spread), flush=True)
                if "memcg_bytes" in m.values and size == max(sizes):
                    largest[name] = (counts, m.values["memcg_bytes"])
                raw.append({"layout": name, "size": size,
                            "counts": {k: getattr(counts, k) for k in counts.__slots__},
                            "measurement": m.as_dict(), "prediction": kernel_cost(counts).as_dict(),
                            "seconds": round(secs, 1)})
                if m.failed_ops:
                    print(f"\n({name} {size}: {m.failed_ops} ops failed)\n")
        if "ladder" in largest:
            print(f"\nBytes charged to the memory cgroup per object, from the {max(sizes):,} rows:\n")
            print("| object | solved from | measured (B) | costs.py charged (B) |")
            print("|---|---|---|---|")
            print("\n".join(fit(largest)))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(raw, fh, indent=1)
    head = run.header(TITLE, [
        f"`measure_script(repeat={repeat})` per layout and size (object counts: /proc/slabinfo, "
        "the whole machine; kernel bytes: the measuring child's memory cgroup); medians. The "
        "reading of pooled runs: results_costs.md."])
    run.write("\n".join(head) + tee.text, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
