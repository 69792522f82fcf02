"""What each guard design makes of a real process: ``analyze(entries) -> AnalysisReport``.

Owns ``AnalysisReport`` / ``DesignFigures``, their JSON form (schema in docs/analyze.md),
the rich tables for people and the many-files mode. Rebuilds the layout with
``analyze.rebuild`` and runs it on the model (``opscript.designs.run_design``); never
touches the kernel (that is ``analyze.reproduce``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from sparsemm._gc import gc_paused
from sparsemm.analyze.guards import GuardPolicy, find_guards
from sparsemm.analyze.maps import MapEntry
from sparsemm.analyze.rebuild import Layout, build_layout
from sparsemm.model import designs as registry
from sparsemm.model.costs import constants
from sparsemm.opscript.designs import DesignResult, run_design, run_designs_shared, start_design
from sparsemm.opscript.script import parse_script

__all__ = ["SCHEMA", "MANY_SCHEMA", "DesignFigures", "AnalysisReport", "analyze",
           "analyze_source", "design_result", "render_report", "render_many", "many_to_json",
           "BYTE_KEYS"]

SCHEMA = "sparsemm.analyze/2"
MANY_SCHEMA = "sparsemm.analyze.many/2"
#: Kernel memory by object, in the order the tables and plots show them.
BYTE_KEYS = ("vm_area_struct", "anon_vma", "anon_vma_chain", "maple_node", "page_tables")
#: From this many ops on, the designs share their prefix through fork (below, a fork costs more).
PARALLEL_MIN_OPS = 20_000


@dataclass(slots=True)
class DesignFigures:
    """One design's result on the rebuilt layout. Counts are for the whole process (the
    layout is the process); ``None`` everywhere but ``error`` when the design could not run."""

    design: str
    vmas: int | None = None  # VMAs (vm_area_structs)
    map_count: int | None = None  # what counts against vm.max_map_count
    guard_entries: int | None = None  # tree design: reserved maple entries
    anon_vmas: int | None = None
    anon_vma_chains: int | None = None
    maple_nodes: int | None = None
    page_table_pages: int | None = None  # PTE + PMD + PUD tables
    bytes: dict[str, int] = field(default_factory=dict)  # BYTE_KEYS -> bytes
    total_bytes: int | None = None
    saved_vmas: int | None = None  # vs the status-quo design (registry.baseline(): positive, fewer)
    saved_bytes: int | None = None  # vs the status-quo design
    headroom_vmas: int | None = None  # max_map_count - map_count
    headroom_pct: float | None = None  # of max_map_count
    hits_max_map_count: bool | None = None
    failed_ops: int = 0  # ops of the rebuild that failed on the model (0 expected)
    error: str = ""

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class AnalysisReport:
    """Everything ``sparsemm analyze`` reports for one process (see docs/analyze.md)."""

    source: str
    maps_lines: int  # entries parsed ([vsyscall] included)
    vmas: int  # VMAs of the original (map_count)
    guards: int
    sandwiches: int
    one_sided: int
    reservations: int
    isolated_prot_none: int
    guard_bytes: int
    formula: dict[str, int]  # find_guards' own prediction: {"pte": ..., "tree": ...}
    layout: dict  # arena_pages, granule_bytes, shrunk_reservations, touch, touched_pages, separated, notes
    designs: dict[str, DesignFigures]
    max_map_count: int
    policy: dict
    seconds: float = 0.0  # wall time of the analysis
    layout_obj: Layout | None = field(default=None, repr=False)  # not in JSON

    @property
    def vma_matches_original(self) -> bool | None:
        """The rebuild under the status-quo design (``vma``) has the original's VMAs (the
        rebuild's check)."""
        d = self.designs.get(registry.baseline())
        return None if d is None or d.vmas is None else d.vmas == self.vmas

    def to_json(self) -> dict:
        """The documented JSON object (schema ``SCHEMA``)."""
        return {
            "schema": SCHEMA,
            "source": self.source,
            "maps_lines": self.maps_lines,
            "vmas": self.vmas,
            "max_map_count": self.max_map_count,
            "headroom_vmas": self.max_map_count - self.vmas,
            "guards": {"guards": self.guards, "sandwiches": self.sandwiches, "one_sided": self.one_sided,
                       "reservations": self.reservations, "isolated_prot_none": self.isolated_prot_none,
                       "guard_bytes": self.guard_bytes},
            "formula": self.formula,
            "layout": self.layout,
            "designs": {n: d.as_dict() for n, d in self.designs.items()},
            "vma_matches_original": self.vma_matches_original,
            "policy": self.policy,
            "seconds": round(self.seconds, 4),
        }


def design_result(layout_doc: dict, design: str) -> DesignResult:
    """``run_design`` of the layout script ``layout_doc`` under ``design`` (one design alone)."""
    return run_design(parse_script(layout_doc), design)


def _figures(design: str, result: DesignResult, max_map_count: int) -> DesignFigures:
    if result.error:
        return DesignFigures(design, error=result.error)
    c, k = result.counts, result.cost
    map_count = k.map_count
    return DesignFigures(
        design=design, vmas=c.vmas, map_count=map_count, guard_entries=c.guard_entries,
        anon_vmas=c.anon_vmas, anon_vma_chains=c.anon_vma_chains, maple_nodes=k.maple_nodes,
        page_table_pages=c.pte_tables + c.pmd_tables + c.pud_tables,
        bytes={"vm_area_struct": k.vm_area_struct, "anon_vma": k.anon_vma,
               "anon_vma_chain": k.anon_vma_chain, "maple_node": k.maple_node,
               "page_tables": k.page_tables},
        total_bytes=k.total, headroom_vmas=max_map_count - map_count,
        headroom_pct=round(100.0 * (max_map_count - map_count) / max_map_count, 2),
        hits_max_map_count=bool(result.hit_max_map_count or map_count >= max_map_count),
        failed_ops=result.failed_ops)


def analyze(entries: list[MapEntry], policy: GuardPolicy | None = None, *, source: str = "",
            touch: str = "auto", designs: tuple[str, ...] | None = None, on_stage=None,
            workers: int | None = None) -> AnalysisReport:
    """Classify, rebuild and run ``entries`` under each design (default: every registered
    one, in report order). O(n) plus the model runs.
    ``on_stage(text)``, if given, is called as each stage starts (for progress displays).
    Layouts of at least ``PARALLEL_MIN_OPS`` ops share one model run up to their
    first guard op among the designs (``run_designs_shared``: each design continues
    in a forked copy). With ``workers`` (default ``os.cpu_count()``) above 1 the
    designs run at the same time, and the slowest (``tree``) starts from scratch
    in a child as soon as the layout is built, using the core that parsing and
    the shared prefix leave idle. Smaller layouts run each design here.

    Raises ``LayoutError`` (a ``ValueError``) if the layout cannot be rebuilt.
    """
    t0 = time.perf_counter()
    designs = registry.names() if designs is None else tuple(designs)
    stage = on_stage or (lambda _text: None)
    policy = policy or GuardPolicy()
    stage(f"finding guards among {len(entries):,} VMAs")
    cls = find_guards(entries, policy)
    stage("rebuilding the layout")
    layout = build_layout(entries, cls, touch=touch, source=source)
    limit = constants().max_map_count
    nops = len(layout.script["ops"])
    if workers is None:
        workers = os.cpu_count() or 1
    parallel = workers > 1 and nops >= PARALLEL_MIN_OPS and len(designs) > 1
    rest, early = designs, None
    if parallel:  # the slowest design starts now, on the core the next stages leave idle
        first = _slowest(designs)
        early = start_design(layout.script, first)
        rest = tuple(d for d in designs if d != first)
    stage(f"parsing the layout script ({nops:,} ops)")
    with gc_paused():  # one Op per op, none freed (see sparsemm._gc)
        script = parse_script(layout.script)
    if nops < PARALLEL_MIN_OPS:
        results = {}
        for d in rest:
            stage(f"running the {d} design on the model ({nops:,} ops)")
            results[d] = run_design(script, d)
    else:
        stage(f"running {', '.join(designs)} on the model{' in parallel' if parallel else ''} "
              f"({nops:,} ops; the ops before the first guard once)")
        results = run_designs_shared(script, rest, parallel=parallel)
    if early is not None:
        results[first] = early()
    figs = {d: _figures(d, results[d], limit) for d in designs}
    base = figs.get(registry.baseline())
    for f in figs.values():
        if base is not None and not base.error and not f.error:
            f.saved_vmas = base.map_count - f.map_count
            f.saved_bytes = base.total_bytes - f.total_bytes
    s = cls.summary
    return AnalysisReport(
        source=source, maps_lines=len(entries), vmas=s.vmas, guards=s.guards, sandwiches=s.sandwiches,
        one_sided=s.one_sided, reservations=s.reservations, isolated_prot_none=s.isolated_prot_none,
        guard_bytes=s.guard_bytes, formula={"pte": s.vmas_if_markers, "tree": s.vmas_if_tree},
        layout={"arena_pages": layout.arena_pages, "granule_bytes": layout.granule,
                "shrunk_reservations": layout.shrunk_reservations, "touch": layout.touch,
                "touched_pages": layout.touched_pages, "separated_pairs": layout.separated,
                "files": len(layout.files), "ops": len(layout.script["ops"]), "notes": layout.notes},
        designs=figs, max_map_count=limit, policy=_policy_dict(policy),
        seconds=time.perf_counter() - t0, layout_obj=layout)


def _slowest(designs: tuple[str, ...]) -> str:
    """The design to start first: guard entries make the slowest model runs, then PROT_NONE
    VMAs, then markers (tree 1.07 s, vma 0.66 s, pte 0.50 s on a 65,530-VMA map:
    bench/results_analyze_designs.md)."""
    speed = {registry.GuardShape.ENTRY: 0, registry.GuardShape.VMA: 1, registry.GuardShape.MARKER: 2}
    known = [d for d in designs if d in registry.names()]
    return min(known, key=lambda d: speed[registry.design_class(d).guard_shape]) if known else designs[0]


def _policy_dict(p: GuardPolicy) -> dict:
    return {"max_guard_bytes": p.max_guard_bytes, "max_borderline_bytes": p.max_borderline_bytes,
            "cost_ratio": p.cost_ratio, "neighbour_perms": p.neighbour_perms}


def analyze_source(target: str, policy: GuardPolicy | None = None, touch: str = "auto") -> AnalysisReport:
    """Load ``target`` (file, pid, ``/proc/N``, ``-``) with ``maps.load`` and analyze it."""
    from sparsemm.analyze.maps import load

    entries = load(target)
    name = f"pid {target}" if str(target).isdigit() else os.path.basename(str(target)) or str(target)
    return analyze(entries, policy, source=name, touch=touch)


# --- rendering ---------------------------------------------------------------------------------

def _b(n: int | None) -> str:
    if n is None:
        return "n/a"
    if abs(n) >= 10 * 1024 * 1024:
        return f"{n / 1048576:,.1f} MiB"
    if abs(n) >= 10 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n:,} B"


def _n(v) -> str:
    return "n/a" if v is None else f"{v:,}"


def render_report(r: AnalysisReport):
    """A rich renderable: the summary line and one column per design."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text()
    head.append(f"{r.source}: ", style="bold")
    head.append(f"{r.vmas:,} VMAs, {r.guards:,} guards ({r.sandwiches:,} sandwiched, "
                f"{r.one_sided:,} one-sided), {r.reservations:,} reservations\n"
                f"max_map_count {r.max_map_count:,} ({100.0 * r.vmas / r.max_map_count:.1f}% used)")
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("")
    t.add_column("original", justify="right")
    names = list(r.designs)
    for n in names:
        t.add_column(n, justify="right")

    def row(label, orig, fn, style=None):
        cells = [fn(r.designs[n]) if not r.designs[n].error else "n/a" for n in names]
        t.add_row(label, orig, *cells, style=style)

    base = registry.baseline()
    entries = ", ".join(n for n in names if n in registry.names()
                        and registry.design_class(n).guard_shape is registry.GuardShape.ENTRY)
    row("VMAs (map_count)", _n(r.vmas), lambda d: _n(d.map_count), "bold")
    row(f"  saved vs {base}", "", lambda d: _n(d.saved_vmas) + (f" ({100 * d.saved_vmas / max(r.designs[base].map_count, 1):.0f}%)"
                                                                if d.saved_vmas is not None and base in r.designs else ""))
    row(f"guard entries ({entries})" if entries else "guard entries", "", lambda d: _n(d.guard_entries))
    row("headroom to max_map_count", _n(r.max_map_count - r.vmas),
        lambda d: f"{_n(d.headroom_vmas)} ({d.headroom_pct:.1f}%)")
    row("hits max_map_count", "yes" if r.vmas >= r.max_map_count else "no",
        lambda d: "YES" if d.hits_max_map_count else "no")
    row("anon_vma / chains", "", lambda d: f"{_n(d.anon_vmas)} / {_n(d.anon_vma_chains)}")
    row("maple nodes", "", lambda d: _n(d.maple_nodes))
    row("page-table pages", "", lambda d: _n(d.page_table_pages))
    for key in BYTE_KEYS:
        row(f"  {key}", "", lambda d, key=key: _b(d.bytes.get(key)))
    row("kernel bytes (total)", "", lambda d: _b(d.total_bytes), "bold")
    row(f"  saved vs {base}", "", lambda d: _b(d.saved_bytes))
    foot = []
    for n in names:
        if r.designs[n].error:
            foot.append(f"{n}: {r.designs[n].error}")
    if r.vma_matches_original is False:
        foot.append(f"warning: the {base}-design rebuild has {r.designs[base].vmas} VMAs, the original {r.vmas}")
    lay = r.layout
    foot.append(f"rebuilt in an arena of {lay['arena_pages'] * 4096 / 2**30:,.1f} GiB "
                f"(gaps compressed modulo {lay['granule_bytes'] >> 20} MiB), touch={lay['touch']} "
                f"({lay['touched_pages']:,} pages), formula pte={r.formula['pte']:,} tree={r.formula['tree']:,}, "
                f"{r.seconds:.2f} s")
    foot.extend(lay["notes"])
    return Group(head, t, Text("\n".join(foot), style="dim"))


def render_many(reports: list[AnalysisReport], errors: list[tuple[str, str]]):
    """A rich table across many files, with a total row; the files that failed below it."""
    from rich.table import Table

    names, base, native = registry.names(), registry.baseline(), registry.kernel_design()
    t = Table(title="sparsemm analyze: summary", header_style="bold")
    for col in ("source", "VMAs", "guards", *names, f"{native} saves", f"{native} saves bytes",
                f"headroom ({base})"):
        if col == "source":
            t.add_column(col, overflow="fold", min_width=24)
        else:
            t.add_column(col, justify="right", no_wrap=True)
    tot = {"vmas": 0, "guards": 0}
    sums: dict[str, int | None] = {d: 0 for d in names}
    saved_b = 0
    for r in reports:
        cells = []
        for d in names:
            f = r.designs.get(d)
            cells.append("n/a" if f is None or f.error else _n(f.map_count))
            if f is None or f.error:
                sums[d] = None
            elif sums[d] is not None:
                sums[d] += f.map_count
        kern = r.designs.get(native)
        saved = "n/a" if kern is None or kern.saved_vmas is None else f"{kern.saved_vmas:,} ({100 * kern.saved_vmas / max(r.vmas, 1):.0f}%)"
        sb = None if kern is None else kern.saved_bytes
        saved_b += sb or 0
        sq = r.designs.get(base)
        head = _n(sq.headroom_vmas) if sq is not None and not sq.error else _n(r.max_map_count - r.vmas)
        t.add_row(r.source, _n(r.vmas), _n(r.guards), *cells, saved, _b(sb), head)
        tot["vmas"] += r.vmas
        tot["guards"] += r.guards
    if len(reports) > 1:
        t.add_row("total", _n(tot["vmas"]), _n(tot["guards"]), *(_n(sums[d]) for d in names),
                  _n(None if sums[base] is None or sums[native] is None else sums[base] - sums[native]),
                  _b(saved_b), "", style="bold")
    if not errors:
        return t
    from rich.console import Group
    from rich.text import Text

    lines = Text()
    for src, err in errors:
        lines.append(f"{src}: ", style="bold red")
        lines.append(f"{err}\n")
    return Group(t, lines)


def many_to_json(reports: list[AnalysisReport], errors: list[tuple[str, str]]) -> dict:
    """Directory mode JSON (schema ``MANY_SCHEMA``)."""
    summary = {"files": len(reports), "errors": len(errors), "vmas": sum(r.vmas for r in reports),
               "guards": sum(r.guards for r in reports)}
    for d in registry.names():
        vals = [r.designs[d].map_count for r in reports if d in r.designs and not r.designs[d].error]
        summary[d] = sum(vals) if len(vals) == len(reports) and reports else None
    return {"schema": MANY_SCHEMA, "summary": summary, "reports": [r.to_json() for r in reports],
            "errors": [{"source": s, "error": e} for s, e in errors]}
