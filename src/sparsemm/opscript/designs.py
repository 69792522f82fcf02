"""Run one script under each guard design and say what each costs (``sparsemm designs``).

Owns ``DesignResult`` and the report. Each design runs the same script on a
fresh model address space; costs come from ``sparsemm.model.costs`` with the
counts ``AddressSpace.counts()`` takes from the final state. The designs, their
order and their names come from the registry (``sparsemm.model.designs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sparsemm._gc import gc_paused
from sparsemm.model import designs as registry
from sparsemm.model.costs import KernelCost, MmCounts, kernel_cost
from sparsemm.model.designs import GUARD_ADVICE
from sparsemm.opscript.dispatch import BackendUnavailable
from sparsemm.opscript.script import Script


@dataclass(slots=True)
class DesignResult:
    design: str
    records: list[dict] = field(default_factory=list)
    counts: MmCounts | None = None
    cost: KernelCost | None = None
    failed_ops: int = 0  # ops whose record is an errno
    enomem_ops: int = 0  # of which ENOMEM (the max_map_count wall, among others)
    hit_max_map_count: bool = False
    error: str = ""  # the design could not run

    def as_dict(self) -> dict:
        if self.error:
            return {"design": self.design, "error": self.error}
        c = self.counts
        return {
            "design": self.design,
            "vmas": c.vmas,
            "map_count": self.cost.map_count,
            "guard_entries": c.guard_entries,
            "anon_vmas": c.anon_vmas,
            "anon_vma_chains": c.anon_vma_chains,
            "maple_nodes": self.cost.maple_nodes,
            "page_table_pages": c.pte_tables + c.pmd_tables + c.pud_tables,
            "bytes": {"vm_area_struct": self.cost.vm_area_struct, "anon_vma": self.cost.anon_vma,
                      "anon_vma_chain": self.cost.anon_vma_chain, "maple_node": self.cost.maple_node,
                      "page_tables": self.cost.page_tables, "total": self.cost.total},
            "memcg_bytes": self.cost.memcg,
            "failed_ops": self.failed_ops,
            "enomem_ops": self.enomem_ops,
            "hit_max_map_count": self.hit_max_map_count,
        }


def _count_failures(records: list[dict]) -> tuple[int, int]:
    failed = enomem = 0
    for r in records:
        if r["ret"] not in ("ok", "MOVED"):
            failed += 1
            enomem += r["ret"] == "ENOMEM"
        if r["op"] == "fork" and isinstance(r.get("value"), list):
            f, e = _count_failures(r["value"])
            failed, enomem = failed + f, enomem + e
    return failed, enomem


def run_design(script: Script, design: str, *, max_map_count: int | None = None) -> DesignResult:
    """Run ``script`` on the model under ``design``; the final state's counts and cost."""
    from sparsemm.opscript.model_backend import run_model_state

    result = DesignResult(design)
    try:
        records, mm = run_model_state(script, design, max_map_count=max_map_count)
    except BackendUnavailable as exc:
        result.error = str(exc)
        return result
    _fill(result, records, mm)
    result.records = records
    return result


def _fill(result: DesignResult, records: list[dict], mm) -> None:
    """Counts, cost, failures and the wall of ``mm`` after ``records``."""
    result.counts = mm.counts()
    result.cost = kernel_cost(result.counts, max_map_count=mm.max_map_count)
    result.failed_ops, result.enomem_ops = _count_failures(records)
    # The wall: the count reached the limit, or splits were refused with ENOMEM right
    # below it (a split needs map_count < max_map_count; an interior guard needs two).
    result.hit_max_map_count = mm.map_count >= mm.max_map_count or (
        result.enomem_ops > 0 and mm.map_count >= mm.max_map_count - 2)


def design_free_prefix(script: Script) -> int:
    """How many leading ops of ``script`` behave the same under every design. O(ops).

    Only the guard advice (``madvise``/``process_madvise``, in a fork child too)
    reaches a design's hooks with an effect; before the first such op the
    designs hold no state, so one model run serves them all.
    """
    def dependent(op) -> bool:
        return op.advice in GUARD_ADVICE or any(dependent(c) for c in op.child)

    for i, op in enumerate(script.ops):
        if dependent(op):
            return i
    return len(script.ops)


def run_designs_shared(script: Script, designs=None, *, max_map_count: int | None = None,
                       parallel: bool = True) -> dict[str, DesignResult]:
    """``run_design`` for each design, running the design-free prefix only once.

    The prefix (``design_free_prefix``) runs on one address space; then each
    design continues in a forked copy of it (``os.fork``: the copy is the
    kernel's copy-on-write, not Python's; the child exits without tearing its
    model down). ``parallel`` runs the designs at the same time, else one after
    the other. The cyclic GC is off in the prefix and in the children (the model
    makes many objects and frees few). Results carry no ``records`` (their counts, cost and
    failures are complete). Same results as ``run_design`` per design (tested);
    CPU O(prefix + sum of the tails) instead of O(designs x ops).
    """
    from sparsemm.opscript.model_backend import start_model

    designs = registry.names() if designs is None else designs
    results = {d: DesignResult(d) for d in designs}
    known = []
    for d in designs:
        try:
            registry.design_class(d)
        except ValueError as exc:  # the model's own message
            results[d].error = str(exc)
        else:
            known.append(d)
    if not known:
        return results
    k = design_free_prefix(script)
    runner = start_model(script, max_map_count=max_map_count)  # the prefix is design-free
    with gc_paused():
        prefix_records = runner.run_ops(script.ops[:k])

    def finish(design: str) -> DesignResult:
        runner.mm.set_guard_design(design)
        result = DesignResult(design)
        _fill(result, prefix_records + runner.run_ops(script.ops[k:]), runner.mm)
        return result

    waiting = []
    for d in known:
        wait = _fork_call(lambda d=d: finish(d))
        if parallel:
            waiting.append((d, wait))
        else:
            results[d] = wait()
    for d, wait in waiting:
        results[d] = wait()
    return results


def run_scripts_shared(jobs: list[tuple[Script, str]], *, max_map_count: int | None = None,
                       parallel: bool = True) -> list[DesignResult]:
    """``run_design(script, design)`` for each job, running once the ops all the scripts
    share at their start (equal as written, and before any design-dependent op: see
    ``design_free_prefix``), then each job in a forked copy as ``run_designs_shared`` does.
    The scripts must describe the same arena and files (two rebuilds of one layout that
    differ in their guard ops). Results in job order, without ``records``.
    CPU O(shared prefix + sum of the tails).
    """
    from sparsemm.opscript.model_backend import start_model

    results = [DesignResult(d) for _, d in jobs]
    todo = []
    for i, (script, d) in enumerate(jobs):
        try:
            registry.design_class(d)
        except ValueError as exc:  # the model's own message
            results[i].error = str(exc)
        else:
            todo.append(i)
    if not todo:
        return results
    scripts = [jobs[i][0] for i in todo]
    first = scripts[0]
    k = min(design_free_prefix(sc) for sc in scripts)
    for sc in scripts[1:]:
        if sc is first:
            continue
        n = 0
        for a, b in zip(first.ops[:k], sc.ops[:k]):
            if a.raw != b.raw:
                break
            n += 1
        k = n
    runner = start_model(first, max_map_count=max_map_count)  # the prefix is design-free
    with gc_paused():
        prefix_records = runner.run_ops(first.ops[:k])

    def finish(script: Script, design: str) -> DesignResult:
        runner.mm.set_guard_design(design)
        result = DesignResult(design)
        _fill(result, prefix_records + runner.run_ops(script.ops[k:]), runner.mm)
        return result

    waiting = []
    for i in todo:
        script, d = jobs[i]
        wait = _fork_call(lambda script=script, d=d: finish(script, d))
        if parallel:
            waiting.append((i, wait))
        else:
            results[i] = wait()
    for i, wait in waiting:
        results[i] = wait()
    return results


def start_design(doc: dict, design: str):
    """Start ``run_design`` of the script document ``doc`` under ``design`` in a forked
    child now (it parses the document there); return a function that waits for the
    ``DesignResult`` (without ``records``). Lets one design use an idle core while this
    process goes on (``analyze`` starts the slowest design so)."""
    from sparsemm.opscript.script import parse_script

    def child() -> DesignResult:
        result = run_design(parse_script(doc), design)
        result.records = []
        return result

    return _fork_call(child)


def _fork_call(fn):
    """Run ``fn()`` in a forked child; return a function that waits for and returns its
    result (pickled through a pipe), or raises ``RuntimeError`` naming the child's exception
    in one line (its traceback in ``.child_traceback``)."""
    import gc
    import os
    import pickle
    import traceback

    gc.freeze()  # the collector would otherwise touch (and so copy) every inherited page
    rfd, wfd = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's stack
        status = 0
        try:
            from sparsemm.opscript.child import set_pdeathsig

            set_pdeathsig(parent)  # dies with the command (Ctrl-C, SIGTERM, SIGKILL)
            os.close(rfd)
            gc.disable()
            try:
                payload = pickle.dumps((True, fn()))
            except BaseException:  # noqa: BLE001 - everything goes back to the parent
                payload = pickle.dumps((False, traceback.format_exc()))
            with os.fdopen(wfd, "wb") as out:
                out.write(payload)
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(wfd)
    gc.unfreeze()

    def wait():
        with os.fdopen(rfd, "rb") as src:
            data = src.read()
        _, status = os.waitpid(pid, 0)
        if not data:
            raise RuntimeError(f"design child {pid} died (wait status {status}) before reporting")
        ok, value = pickle.loads(data)
        if not ok:  # one line (the exception); the whole traceback rides along
            lines = value.strip().splitlines() or ["unknown error"]
            err = RuntimeError(f"design child failed: {lines[-1]}")
            err.child_traceback = value
            raise err
        return value

    return wait


def run_designs(script: Script, designs=None, **kw) -> dict[str, DesignResult]:
    """``run_design`` for each of ``designs`` (default: every registered one, in report order)."""
    return {d: run_design(script, d, **kw) for d in (registry.names() if designs is None else designs)}


def report_rows(results: dict[str, DesignResult]) -> tuple[list[str], list[tuple[str, list[str]]], list[str]]:
    """The report as data: the design names (columns), one ``(label, cells)`` row per quantity
    (``n/a`` where a design failed), and the notes (each failure, each design's description)."""
    rows = [
        ("VMAs (map_count)", lambda r: f"{r.cost.map_count:,}"),
        ("guard entries (tree)", lambda r: f"{r.counts.guard_entries:,}"),
        ("anon_vma / chains", lambda r: f"{r.counts.anon_vmas:,} / {r.counts.anon_vma_chains:,}"),
        ("maple nodes", lambda r: f"{r.cost.maple_nodes:,}"),
        ("page-table pages", lambda r: f"{r.counts.pte_tables + r.counts.pmd_tables + r.counts.pud_tables:,}"),
        ("vm_area_struct bytes", lambda r: f"{r.cost.vm_area_struct:,}"),
        ("anon_vma bytes", lambda r: f"{r.cost.anon_vma:,}"),
        ("anon_vma_chain bytes", lambda r: f"{r.cost.anon_vma_chain:,}"),
        ("maple_node bytes", lambda r: f"{r.cost.maple_node:,}"),
        ("page-table bytes", lambda r: f"{r.cost.page_tables:,}"),
        ("kernel bytes (total)", lambda r: f"{r.cost.total:,}"),
        ("charged to its memory cgroup", lambda r: f"{r.cost.memcg:,}"),
        ("failed ops (of them ENOMEM)", lambda r: f"{r.failed_ops} ({r.enomem_ops})"),
        ("hit max_map_count", lambda r: "yes" if r.hit_max_map_count else "no"),
    ]
    names = list(results)
    table = [(label, ["n/a" if results[n].error else fn(results[n]) for n in names]) for label, fn in rows]
    notes = [f"{n}: {results[n].error}" for n in names if results[n].error]
    notes += [f"{n}: {registry.design_class(n).description}" for n in names if n in registry.names()]
    notes.append("bytes are the model's prediction for Linux 6.18 (docs/costs.md); "
                 "'sparsemm measure' measures the pte design on this kernel")
    return names, table, notes


def format_report(results: dict[str, DesignResult]) -> str:
    """A plain-text table: one column per design, then the notes."""
    names, table, notes = report_rows(results)
    width = 16
    lines = [f"{'':<30}" + "".join(f"{n:>{width}}" for n in names)]
    lines += [f"{label:<30}" + "".join(f"{c:>{width}}" for c in cells) for label, cells in table]
    return "\n".join(lines + [""] + notes)


def render_report(results: dict[str, DesignResult]):
    """The report as a rich renderable, in the style of ``analyze``'s (no box; plain in a pipe)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    names, table, notes = report_rows(results)
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("")
    for n in names:
        t.add_column(n, justify="right")
    for label, cells in table:
        t.add_row(label, *cells, style="bold" if label.startswith(("VMAs", "kernel bytes")) else None)
    return Group(t, Text("\n".join(notes), style="dim"))


def report_json(results: dict[str, DesignResult]) -> str:
    return json.dumps({n: r.as_dict() for n, r in results.items()}, indent=2)
