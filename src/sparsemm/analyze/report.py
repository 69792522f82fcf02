"""What each guard design makes of a real process: ``analyze(entries) -> AnalysisReport``.

Owns ``AnalysisReport`` / ``DesignFigures``, their JSON form (schema in docs/analyze.md),
the per-VMA ``mappings`` view, the rich table for people and ``analyze_source``, the
single-file entry point every mode calls (pid, snapshot, maps or smaps file; the
many-files mode, ``analyze.fleet``, calls it per file). Rebuilds the layout with
``analyze.rebuild`` and runs it on the model (``opscript.designs.run_design``); never
touches the kernel (that is ``analyze.reproduce``).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

from sparsemm._gc import gc_paused
from sparsemm.analyze.guards import Classification, GuardPolicy, find_guards
from sparsemm.analyze.maps import MapEntry
from sparsemm.analyze.rebuild import Layout, build_layout
from sparsemm.model import designs as registry
from sparsemm.model.costs import constants
from sparsemm.opscript.designs import DesignResult, run_design, run_scripts_shared, start_design
from sparsemm.opscript.script import parse_script

__all__ = ["SCHEMA", "DesignFigures", "AnalysisReport", "analyze", "analyze_source",
           "design_result", "render_report", "render_mappings", "mappings", "BYTE_KEYS"]

SCHEMA = "sparsemm.analyze/3"
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
    pid: int | None = None  # the process, when the input tells (see analyze_source)
    comm: str | None = None  # its command name, when the input tells
    host: str | None = None  # the host it ran on (snapshots)
    uptime_s: float | None = None  # how long the process had been running when read (snapshots, live pids)
    layout_obj: Layout | None = field(default=None, repr=False)  # not in JSON
    payload: int = 0  # ranges of decommitted payload (Role.DECOMMITTED)
    payload_bytes: int = 0
    designs_with_payload: dict[str, DesignFigures] = field(default_factory=dict)  # payload as markers too
    existing_markers: int | None = None  # marker runs the process holds (None: unknown)
    existing_marker_bytes: int | None = None
    vmas_with_markers: int | None = None
    rebuilt_vmas: int | None = None  # the rebuild as the process was (existing markers as markers)
    input_kind: str = ""  # "pid", "snapshot", "smaps", "maps" or "" (entries given)
    warnings: list[str] = field(default_factory=list)
    layout_payload_obj: Layout | None = field(default=None, repr=False)  # the with-payload rebuild
    classification: Classification | None = field(default=None, repr=False)  # for mappings()

    @property
    def vma_matches_original(self) -> bool | None:
        """The rebuild as the process was (guards as PROT_NONE VMAs, the markers it holds as
        markers) has the original's VMAs: the rebuild's check. Without existing markers
        that is the ``vma`` design's run."""
        return None if self.rebuilt_vmas is None else self.rebuilt_vmas == self.vmas

    def to_json(self, *, with_mappings: bool = False) -> dict:
        """The documented JSON object (schema ``SCHEMA``); ``with_mappings`` adds the
        per-VMA ``mappings`` list (needs the classification and layouts)."""
        doc = {
            "schema": SCHEMA,
            "source": self.source,
            "pid": self.pid,
            "comm": self.comm,
            "host": self.host,
            "uptime_s": self.uptime_s,
            "input": self.input_kind,
            "maps_lines": self.maps_lines,
            "vmas": self.vmas,
            "max_map_count": self.max_map_count,
            "headroom_vmas": self.max_map_count - self.vmas,
            "guards": {"guards": self.guards, "sandwiches": self.sandwiches, "one_sided": self.one_sided,
                       "reservations": self.reservations, "isolated_prot_none": self.isolated_prot_none,
                       "guard_bytes": self.guard_bytes, "decommitted_payload": self.payload,
                       "decommitted_payload_bytes": self.payload_bytes,
                       "existing_markers": self.existing_markers,
                       "existing_marker_bytes": self.existing_marker_bytes,
                       "vmas_with_markers": self.vmas_with_markers},
            "formula": self.formula,
            "layout": self.layout,
            "designs": {n: d.as_dict() for n, d in self.designs.items()},
            "designs_with_payload": {n: d.as_dict() for n, d in self.designs_with_payload.items()},
            "rebuilt_vmas": self.rebuilt_vmas,
            "vma_matches_original": self.vma_matches_original,
            "policy": self.policy,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 4),
        }
        if with_mappings:
            doc["mappings"] = mappings(self)
        return doc


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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: ``taskset -c 0`` gives 1), not the
    machine's count: forking design runs onto one CPU only adds work. O(1)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity call on this platform
        return os.cpu_count() or 1


def _run_layouts(layouts: list[tuple[Layout, tuple[str, ...]]], stage, workers: int | None
                 ) -> list[dict[str, DesignResult]]:
    """Each layout's designs on the model, one dict per layout.

    Small layouts run the first layout's designs here and, with more than one worker,
    the other layouts' designs in forked children meanwhile (each from scratch). From
    ``PARALLEL_MIN_OPS`` ops on, the ops the layouts share at their start run once and each
    (layout, design) continues in a forked copy (``run_scripts_shared``); with more than
    one worker they run at the same time, and the first layout's ``tree`` (the slowest)
    starts from scratch in a child at once, on the core that parsing and the shared
    prefix leave idle."""
    nops = len(layouts[0][0].script["ops"])
    if workers is None:
        workers = usable_cpus()
    jobs = [(i, d) for i, (_, designs) in enumerate(layouts) for d in designs]
    large = nops >= PARALLEL_MIN_OPS
    results: list[dict[str, DesignResult]] = [{} for _ in layouts]
    aside = []  # (layout, design, wait) run from scratch in children
    if workers > 1 and len(jobs) > 1:
        if large:  # the slowest design starts now, on the core the next stages leave idle
            first = _slowest(layouts[0][1])
            picked = [(0, first)]
        else:  # a second rebuild runs beside the first
            picked = [(i, d) for i, d in jobs if i > 0]
        aside = [(i, d, start_design(layouts[i][0].script, d)) for i, d in picked]
        jobs = [job for job in jobs if job not in picked]
    here = sorted({i for i, _ in jobs})
    stage(f"parsing the layout script{'s' if len(here) > 1 else ''} ({nops:,} ops)")
    with gc_paused():  # one Op per op, none freed (see sparsemm._gc)
        scripts = {i: parse_script(layouts[i][0].script) for i in here}
    if not large:
        for i, d in jobs:
            stage(f"running the {d} design on the model ({nops:,} ops)")
            results[i][d] = run_design(scripts[i], d)
    elif jobs:
        parallel = workers > 1
        stage(f"running {len(jobs) + len(aside)} design runs on the model{' in parallel' if parallel else ''} "
              f"({nops:,} ops; the ops before the first guard once)")
        for (i, d), r in zip(jobs, run_scripts_shared([(scripts[i], d) for i, d in jobs], parallel=parallel)):
            results[i][d] = r
    for i, d, wait in aside:
        results[i][d] = wait()
    return results


def _all_figures(results: dict[str, DesignResult], designs: tuple[str, ...], limit: int,
                 shared: dict[str, DesignFigures] | None = None) -> dict[str, DesignFigures]:
    """Figures per design in ``designs`` order, with savings against the status-quo design
    (``vma``); ``shared`` gives the figures of designs that were not run again (taken as
    they are)."""
    shared = shared or {}
    figs = {d: shared[d] if d in shared else _figures(d, results[d], limit) for d in designs}
    base = figs.get(registry.baseline())
    for d, f in figs.items():
        if d not in shared and base is not None and not base.error and not f.error:
            f.saved_vmas = base.map_count - f.map_count
            f.saved_bytes = base.total_bytes - f.total_bytes
    return figs


def analyze(entries: list[MapEntry], policy: GuardPolicy | None = None, *, source: str = "",
            touch: str = "auto", designs: tuple[str, ...] | None = None, on_stage=None,
            workers: int | None = None, markers: list[tuple[int, int]] | None = None,
            warnings: list[str] | None = None, input_kind: str = "") -> AnalysisReport:
    """Classify, rebuild and run ``entries`` under each design (default: every registered
    one, in report order). O(n) plus the model runs.
    ``on_stage(text)``, if given, is called as each stage starts (for progress displays).
    Layouts of at least ``PARALLEL_MIN_OPS`` ops share one model run up to their
    first guard op among the designs and both rebuilds (``run_scripts_shared``: each
    run continues in a forked copy). With ``workers`` (default ``usable_cpus()``) above 1 the
    designs run at the same time, and the slowest (``tree``) starts from scratch
    in a child as soon as the layout is built, using the core that parsing and
    the shared prefix leave idle. Smaller layouts run each design here.

    ``markers``: the guard-marker runs the process already holds (byte ranges, sorted;
    None: unknown). They stay markers under ``pte`` and become PROT_NONE VMAs under
    ``vma`` and tree entries under ``tree``. When the map has decommitted payload, a
    second rebuild with the payload as markers too gives ``designs_with_payload``;
    otherwise those are the same figures. ``warnings`` are carried into the report.

    Raises ``LayoutError`` (a ``ValueError``) if the layout cannot be rebuilt, and
    ``ValueError`` for marker runs outside the map.
    """
    t0 = time.perf_counter()
    designs = registry.names() if designs is None else tuple(designs)
    stage = on_stage or (lambda _text: None)
    policy = policy or GuardPolicy()
    stage(f"finding guards among {len(entries):,} VMAs")
    cls = find_guards(entries, policy, markers)
    stage("rebuilding the layout")
    layout = build_layout(entries, cls, touch=touch, source=source)
    limit = constants().max_map_count
    s = cls.summary
    layouts = [(layout, designs)]
    layout_p = layout
    if s.payload:
        # The two scripts differ only in the payload's op (mprotect(PROT_NONE) or a guard
        # install), which a design whose guards are PROT_NONE VMAs (vma) runs as the same
        # mprotect: such a design is run once.
        stage("rebuilding the layout with the decommitted payload as guards")
        layout_p = build_layout(entries, cls, touch=touch, source=source, with_payload=True)
        layouts.append((layout_p, tuple(d for d in designs if not _payload_blind(d))))
    results = _run_layouts(layouts, stage, workers)
    figs = figs_p = _all_figures(results[0], designs, limit)
    if s.payload:
        figs_p = _all_figures(results[1], designs, limit,
                              shared={d: figs[d] for d in designs if _payload_blind(d)})
    rebuilt = None
    if layout.existing_markers:
        stage("rebuilding the process as it was (existing markers as markers)")
        # the kernel's own design keeps the markers the process holds as markers
        as_is = run_design(parse_script(layout.as_is_script()), registry.kernel_design())
        rebuilt = None if as_is.error else as_is.counts.vmas
    elif registry.baseline() in figs and not figs[registry.baseline()].error:
        rebuilt = figs[registry.baseline()].vmas
    known = cls.markers_known
    return AnalysisReport(
        source=source, maps_lines=len(entries), vmas=s.vmas, guards=s.guards, sandwiches=s.sandwiches,
        one_sided=s.one_sided, reservations=s.reservations, isolated_prot_none=s.isolated_prot_none,
        guard_bytes=s.guard_bytes,
        formula={"pte": s.vmas_if_markers, "tree": s.vmas_if_tree,
                 "pte_with_payload": s.vmas_if_markers_with_payload,
                 "tree_with_payload": s.vmas_if_tree_with_payload},
        layout={"arena_pages": layout.arena_pages, "granule_bytes": layout.granule,
                "shrunk_reservations": layout.shrunk_reservations, "touch": layout.touch,
                "touched_pages": layout.touched_pages, "separated_pairs": layout.separated,
                "files": len(layout.files), "ops": len(layout.script["ops"]),
                "existing_marker_installs": layout.existing_markers, "notes": layout.notes},
        designs=figs, max_map_count=limit, policy=_policy_dict(policy),
        seconds=time.perf_counter() - t0, layout_obj=layout,
        payload=s.payload, payload_bytes=s.payload_bytes, designs_with_payload=figs_p,
        existing_markers=s.existing_markers if known else None,
        existing_marker_bytes=s.existing_marker_bytes if known else None,
        vmas_with_markers=s.vmas_with_markers if known else None,
        rebuilt_vmas=rebuilt, input_kind=input_kind, warnings=list(warnings or ()),
        layout_payload_obj=layout_p, classification=cls)


def _slowest(designs: tuple[str, ...]) -> str:
    """The design to start first: guard entries make the slowest model runs, then PROT_NONE
    VMAs, then markers (CPU time of a whole run on a 65,530-VMA map: tree 1.2 s, vma 0.83 s,
    pte 0.73 s: bench/results_analyze_designs.md)."""
    speed = {registry.GuardShape.ENTRY: 0, registry.GuardShape.VMA: 1, registry.GuardShape.MARKER: 2}
    known = [d for d in designs if d in registry.names()]
    return min(known, key=lambda d: speed[registry.design_class(d).guard_shape]) if known else designs[0]


def _payload_blind(design: str) -> bool:
    """Does ``design`` build the same thing whether the decommitted payload is written as a
    guard or as mprotect(PROT_NONE)? True where a guard is a PROT_NONE VMA (``vma``)."""
    return design in registry.names() and registry.design_class(design).guard_shape is registry.GuardShape.VMA


def _shape(design: str):
    return registry.design_class(design).guard_shape if design in registry.names() else None


def _policy_dict(p: GuardPolicy) -> dict:
    return {"max_guard_bytes": p.max_guard_bytes, "max_borderline_bytes": p.max_borderline_bytes,
            "cost_ratio": p.cost_ratio, "neighbour_perms": p.neighbour_perms}


def analyze_source(target: str | int, policy: GuardPolicy | None = None, touch: str = "auto", *,
                   data: str | bytes | None = None, on_stage=None,
                   workers: int | None = None) -> AnalysisReport:
    """The single-file entry point: read ``target`` with ``snapshot.load_source`` and
    analyze it. Every mode calls it, one file at a time (``sparsemm analyze FILE``, and
    each file of ``analyze.fleet``).

    ``target`` is a live pid (``N``, ``/proc/N``: read with its guard markers), a
    snapshot file, a maps or smaps file, or ``-`` (stdin). With ``data`` (a file's
    content, as fleet workers receive it) nothing is read: ``target`` only names the file
    and is the report's ``source`` as given. ``pid``, ``comm``, ``host`` and ``uptime_s`` come from a
    live pid or a snapshot; a maps/smaps file named ``PID``, ``PID.maps``, ``PID.smaps``
    or ``PID/maps`` / ``PID/smaps`` gives its pid. ``on_stage`` and ``workers`` are
    ``analyze``'s. Raises ``ValueError`` (one line) for an input without mappings, and
    what ``load_source`` and ``analyze`` raise.
    """
    from sparsemm.analyze.snapshot import load_source

    if on_stage:
        on_stage(f"reading {target}")
    src = load_source(target, data=data)
    if not src.entries:
        raise ValueError(f"{target}: no mappings in the input")
    report = analyze(src.entries, policy, source=src.name, touch=touch, on_stage=on_stage, workers=workers,
                     markers=src.markers, warnings=src.warnings, input_kind=src.kind)
    if src.snapshot is not None:
        snap = src.snapshot
        report.pid, report.comm, report.host, report.uptime_s = snap.pid, snap.comm, snap.host or None, snap.uptime_s
    elif str(target) != "-":
        report.pid = _pid_from_name(str(target))
    return report


# PID, PID.maps, PID.smaps, or a PID directory holding maps/smaps (a copy of /proc/PID).
_PID_NAME = re.compile(r"(?:.*/)?(?:(\d+)(?:\.s?maps)?|(\d+)/s?maps)\Z")


def _pid_from_name(name: str) -> int | None:
    m = _PID_NAME.match(name)
    return None if m is None else int(m.group(1) or m.group(2))


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


def _headline(r: AnalysisReport) -> str:
    lines = [f"{r.vmas:,} VMAs, {r.guards:,} guards ({r.sandwiches:,} sandwiched, {r.one_sided:,} one-sided), "
             f"{r.reservations:,} reservations"]
    if r.payload:
        lines.append(f"{r.payload:,} ranges of decommitted payload ({_b(r.payload_bytes)} PROT_NONE inside used "
                     "memory; not guards)")
    if r.existing_markers:
        lines.append(f"{r.existing_markers:,} guard-marker runs already held ({_b(r.existing_marker_bytes)} "
                     f"in {r.vmas_with_markers:,} VMA(s))")
    elif r.existing_markers == 0:
        lines.append("no guard markers held")
    return "\n".join(lines)


def _touch_words(mode: str, pages: int) -> str:
    """What the rebuild touched (its ``touch`` mode), in words."""
    if mode == "rss":
        return f"it touched each mapping's resident pages (smaps Rss): {pages:,} pages"
    if mode == "first":
        return (f"it touched the first page of each accessible anonymous mapping ({pages:,} pages): a maps "
                "file has no Rss, so page tables are a lower bound (smaps or a pid gives the real ones)")
    return "it touched no page: page tables are a lower bound"


def render_report(r: AnalysisReport):
    """A rich renderable: the summary line and one column per design (and, when the map
    has decommitted payload, one per design that turns it into markers too)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text()
    head.append(f"{r.source}: ", style="bold")
    head.append(f"{_headline(r)}\n"
                f"max_map_count {r.max_map_count:,} ({100.0 * r.vmas / r.max_map_count:.1f}% used)")
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("")
    t.add_column("original", justify="right")
    cols = [(n, r.designs) for n in r.designs]
    if r.payload:  # the second set of counts: guards plus decommitted payload as markers
        cols += [(n, r.designs_with_payload) for n in r.designs_with_payload if not _payload_blind(n)]
    for n, figs in cols:
        t.add_column(n if figs is r.designs else f"{n} +payload", justify="right")

    def row(label, orig, fn, style=None):
        cells = [fn(figs[n], figs) if not figs[n].error else "n/a" for n, figs in cols]
        t.add_row(label, orig, *cells, style=style)

    baseline = registry.baseline()

    def saved_pct(d, figs):
        base = figs.get(baseline)
        if d.saved_vmas is None or base is None or base.error:
            return _n(d.saved_vmas)
        return f"{_n(d.saved_vmas)} ({100 * d.saved_vmas / max(base.map_count, 1):.0f}%)"

    entries = ", ".join(n for n in r.designs if _shape(n) is registry.GuardShape.ENTRY)
    row("VMAs (map_count)", _n(r.vmas), lambda d, f: _n(d.map_count), "bold")
    row(f"  saved vs {baseline}", "", saved_pct)
    row(f"guard entries ({entries})" if entries else "guard entries", "", lambda d, f: _n(d.guard_entries))
    row("headroom to max_map_count", _n(r.max_map_count - r.vmas),
        lambda d, f: f"{_n(d.headroom_vmas)} ({d.headroom_pct:.1f}%)")
    row("hits max_map_count", "yes" if r.vmas >= r.max_map_count else "no",
        lambda d, f: "YES" if d.hits_max_map_count else "no")
    row("anon_vma / chains", "", lambda d, f: f"{_n(d.anon_vmas)} / {_n(d.anon_vma_chains)}")
    row("maple nodes", "", lambda d, f: _n(d.maple_nodes))
    row("page-table pages", "", lambda d, f: _n(d.page_table_pages))
    for key in BYTE_KEYS:
        row(f"  {key}", "", lambda d, f, key=key: _b(d.bytes.get(key)))
    row("kernel bytes (total)", "", lambda d, f: _b(d.total_bytes), "bold")
    row(f"  saved vs {baseline}", "", lambda d, f: _b(d.saved_bytes))
    foot = []
    for n, figs in cols:
        if figs[n].error:
            foot.append(f"{n}: {figs[n].error}")
    if r.vma_matches_original is False:
        foot.append(f"warning: the rebuild as the process was has {r.rebuilt_vmas} VMAs, the original {r.vmas}")
    lay = r.layout
    g = lay["granule_bytes"]
    granule = f"{g >> 30} GiB" if g % (1 << 30) == 0 else f"{g >> 20} MiB"
    foot.append(f"how: the model rebuilt the map in a {lay['arena_pages'] * 4096 / 2**30:,.1f} GiB range, long "
                f"gaps between mappings shortened to keep each address's offset within {granule} (so the same "
                f"mappings share page tables); {_touch_words(lay['touch'], lay['touched_pages'])}; "
                f"{r.seconds:.2f} s")
    payload = (f" ({r.formula['pte_with_payload']:,} and {r.formula['tree_with_payload']:,} with the payload)"
               if r.payload else "")
    foot.append(f"check: counting the guards alone, without the rebuild, gives {r.formula['pte']:,} VMAs under pte "
                f"and {r.formula['tree']:,} under tree{payload}")
    if r.payload:
        foot.append("+payload: guards and the decommitted payload (large PROT_NONE ranges inside used "
                    "memory, e.g. PartitionAlloc's decommitted super-page payload) as markers / tree entries")
    if r.existing_markers:
        foot.append(f"the {r.existing_markers:,} marker runs the process holds stay markers under pte, become "
                    "PROT_NONE VMAs under vma and tree entries under tree; the rebuild as the process was "
                    f"has {_n(r.rebuilt_vmas)} VMAs")
    foot.extend(lay["notes"])
    parts = [head, t, Text("\n".join(foot), style="dim")]
    if r.warnings:
        parts.append(Text("\n".join(f"warning: {w}" for w in r.warnings), style="yellow"))
    return Group(*parts)


# --- mappings: every VMA with its role and what each design makes of it -----------------------

#: What a design makes of a VMA or a marker run (the ``mappings`` vocabulary, docs/analyze.md).
OUTCOMES = ("vma", "merged", "prot_none_vma", "marker", "tree_entry", "split")


#: What a guard becomes, by the design's guard shape (the ``mappings`` vocabulary).
_GUARD_OUTCOME = {registry.GuardShape.VMA: "prot_none_vma", registry.GuardShape.MARKER: "marker",
                  registry.GuardShape.ENTRY: "tree_entry"}


def _outcomes(designs, installed: bool, merged: bool, runs: int) -> dict[str, str]:
    """What each of ``designs`` makes of one VMA of the original, by its guard shape:
    ``installed`` (a guard in this rebuild), ``merged`` (it merges with a guard under
    markers), with ``runs`` existing marker runs (they split the VMA unless they are markers)."""
    out = {}
    for d in designs:
        shape = _shape(d)
        if installed:
            out[d] = _GUARD_OUTCOME[shape]
        elif shape is registry.GuardShape.MARKER:
            out[d] = "merged" if merged else "vma"
        else:
            out[d] = "split" if runs else "vma"
    return out


def _merged(lay: Layout, sides: list) -> list[bool]:
    """Per placed VMA: does it merge with a neighbouring guard under markers? (A guard on
    its side BOTH, or ABOVE for the VMA above it / BELOW for the one below it.) O(n)."""
    from sparsemm.analyze.guards import GuardSide

    placed = lay.placed
    n = len(placed)
    up, down = (GuardSide.ABOVE, GuardSide.BOTH), (GuardSide.BELOW, GuardSide.BOTH)
    out = [False] * n
    for k, p in enumerate(placed):
        if not p.guard:
            continue
        if k > 0 and sides[k] in down and not placed[k - 1].guard:
            out[k - 1] = True
        if k + 1 < n and sides[k] in up and not placed[k + 1].guard:
            out[k + 1] = True
    return out


def mappings(r: AnalysisReport) -> list[dict]:
    """Every VMA of the original, in address order: its range, perms, backing, role (and
    why), its existing marker runs, and what each design makes of it, guards only
    (``designs``) and with the decommitted payload as markers (``designs_with_payload``).
    Needs the report's classification and layouts (a report from ``analyze``). O(n)."""
    cls, lay, lay_p = r.classification, r.layout_obj, r.layout_payload_obj
    if cls is None or lay is None or lay_p is None:
        raise ValueError("this report carries no classification (reports from worker processes drop it)")
    runs_of = cls.markers_by_vma()
    index = {id(role.entry): i for i, role in enumerate(cls.roles)}
    verdicts = [cls.roles[index[id(p.entry)]] for p in lay.placed]
    sides = [v.side for v in verdicts]
    merged, merged_p = _merged(lay, sides), _merged(lay_p, sides)
    out = []
    for k, (p, pp, v) in enumerate(zip(lay.placed, lay_p.placed, verdicts)):
        e = p.entry
        runs = runs_of.get(index[id(e)], [])
        out.append({
            "start": e.start, "end": e.end, "size": e.size, "perms": e.perms, "kind": e.kind.value,
            "path": e.path, "role": v.role.value, "reason": v.reason or None,
            "side": v.side.value if v.side is not None else None,
            "markers": [{"start": m.start, "end": m.end} for m in runs],
            "designs": _outcomes(r.designs, p.guard, merged[k], len(runs)),
            "designs_with_payload": _outcomes(r.designs, pp.guard, merged_p[k], len(runs)),
        })
    return out


def render_mappings(r: AnalysisReport) -> str:
    """``mappings(r)`` as plain text (it is long: one line per VMA and per existing marker
    run, never wrapped): address range, size, perms, backing, role (reason, side), what
    vma, pte and tree make of it (and, with decommitted payload, pte and tree +payload),
    and the mapping's path."""
    rows = mappings(r)
    names = list(r.designs)
    payload_names = [n for n in names if not _payload_blind(n)] if r.payload else []
    out_cols = names + [f"{n} +payload" for n in payload_names]
    head = (f"{'address':<25} {'size':>9} {'perms':5} {'backing':11} {'role':<46} "
            + " ".join(f"{c:<13}" for c in out_cols) + " mapping")
    lines = [f"{r.source}: every VMA, its role and what each design makes of it", head]
    for m in rows:
        role = m["role"] + (f" ({m['reason']}, {m['side']})" if m["side"] else
                            f" ({m['reason']})" if m["reason"] else "")
        d, dp = m["designs"], m["designs_with_payload"]
        outs = [d[n] for n in names] + [dp[n] for n in payload_names]
        lines.append(f"{m['start']:>12x}-{m['end']:<12x} {_size(m['size']):>9} {m['perms']:5} "
                     f"{m['kind']:11} {role:<46} " + (" ".join(f"{o:<13}" for o in outs) + f" {m['path']}").rstrip())
        for run in m["markers"]:
            outs = [_GUARD_OUTCOME[_shape(n)] for n in names + payload_names]
            lines.append(f"  {run['start']:>10x}-{run['end']:<12x} {_size(run['end'] - run['start']):>9} "
                         f"{'':5} {'':11} {'existing marker':<46} " + " ".join(f"{o:<13}" for o in outs).rstrip())
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift:,}{unit}"
    return f"{n >> 10:,}K"
