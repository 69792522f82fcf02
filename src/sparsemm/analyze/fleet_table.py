"""The fleet table: one row per process and design, its schema, its files and its summary.

Owns ``COLUMNS`` (the schema, documented in docs/fleet.md), ``report_rows`` and
``error_row`` (an ``AnalysisReport`` or a failure -> rows), ``TableWriter`` (Parquet
through pyarrow, or CSV) and ``Summary``, which keeps the distributions, the processes
that gain most and those nearest the wall in bounded memory as rows stream by. It never
runs an analysis (that is ``report.analyze_source``, called by ``analyze.fleet``).
"""

from __future__ import annotations

import heapq
import math
import os
from array import array
from dataclasses import dataclass, field

from sparsemm.analyze.report import AnalysisReport
from sparsemm.model import designs as registry

__all__ = ["SCHEMA", "SUMMARY_SCHEMA", "COLUMNS", "COLUMN_NAMES", "Row",
           "report_rows", "error_row", "TableWriter", "check_out_path", "Summary"]

SCHEMA = "sparsemm.fleet/1"
SUMMARY_SCHEMA = "sparsemm.fleet.summary/1"

#: (name, Arrow type, meaning). Counts are whole-process; bytes are the model's kernel
#: memory (predicted, not measured). A null is "not known" or "not applicable".
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("source", "string", "the input file: DIR/path, a path, or TARBALL:member"),
    ("input", "string", "what the file was: snapshot, smaps or maps (pid for a live process)"),
    ("host", "string", "the host the process ran on, when the input tells (snapshots)"),
    ("pid", "int64", "the process id, when the input tells (snapshot, live pid, a file named PID[.maps|.smaps])"),
    ("comm", "string", "the command name, when the input tells (snapshot, live pid)"),
    ("uptime_s", "double", "seconds the process had been running when it was read, when the input tells (snapshot, live pid)"),
    ("design", "string", "a registered guard design (model.designs: vma as captured, pte markers, tree); "
                         "null for a file that failed"),
    ("vmas_original", "int64", "VMAs of the process as captured (its map_count)"),
    ("vmas", "int64", "vm_area_structs under the design"),
    ("map_count", "int64", "what counts against max_map_count under the design"),
    ("max_map_count", "int64", "the limit the headroom is measured against"),
    ("headroom", "int64", "max_map_count - map_count"),
    ("hits_max_map_count", "bool", "the layout reaches max_map_count under the design"),
    ("kernel_bytes", "int64", "kernel memory for the layout by the model: VMAs, anon_vmas, chains, maple nodes, page tables"),
    ("page_table_bytes", "int64", "the page-table part of kernel_bytes (depends on touch)"),
    ("memcg_bytes", "int64", "bytes charged to the memory cgroup, when the report has them"),
    ("saved_vmas", "int64", "map_count saved versus the status-quo design (registry baseline, vma; positive: fewer)"),
    ("saved_bytes", "int64", "kernel_bytes saved versus the status-quo design"),
    ("guards", "int64", "guard VMAs found in the process (policy: the analyze options)"),
    ("guard_bytes", "int64", "bytes those guards span"),
    ("reservations", "int64", "PROT_NONE reservations found (not guards)"),
    ("payload", "int64", "decommitted payload ranges found (PROT_NONE memory the program may reuse; not guards)"),
    ("map_count_with_payload", "int64", "map_count under the design with the payload as markers / tree entries too"),
    ("kernel_bytes_with_payload", "int64", "kernel_bytes under the design with the payload as markers / tree entries too"),
    ("existing_markers", "int64", "guard-marker runs the process already holds (null: unknown, e.g. a maps file)"),
    ("guard_entries", "int64", "tree design: reserved maple-tree entries (no VMA)"),
    ("touch", "string", "pages the rebuild touched: rss (smaps), first (maps) or none"),
    ("error", "string", "null when the row is fine; else why the file or the design could not be analyzed"),
)
COLUMN_NAMES = tuple(c[0] for c in COLUMNS)
_I = {name: i for i, name in enumerate(COLUMN_NAMES)}

#: One row: a tuple in ``COLUMN_NAMES`` order (compact to pickle and to buffer).
Row = tuple


def report_rows(source: str, r: AnalysisReport) -> list[Row]:
    """One row per design of ``r``, named ``source``. O(designs)."""
    rows = []
    for name, d in r.designs.items():
        ok = not d.error
        memcg = getattr(d, "memcg_bytes", None)  # only reports that predict the cgroup charge
        p = r.designs_with_payload.get(name)
        p_ok = p is not None and not p.error
        rows.append((
            source, r.input_kind or None, r.host, r.pid, r.comm, r.uptime_s, name, r.vmas,
            d.vmas if ok else None, d.map_count if ok else None, r.max_map_count,
            d.headroom_vmas if ok else None, d.hits_max_map_count if ok else None,
            d.total_bytes if ok else None, d.bytes.get("page_tables") if ok else None,
            memcg if ok else None, d.saved_vmas if ok else None, d.saved_bytes if ok else None,
            r.guards, r.guard_bytes, r.reservations, r.payload,
            p.map_count if p_ok else None, p.total_bytes if p_ok else None, r.existing_markers,
            d.guard_entries if ok else None, r.layout.get("touch"), None if ok else d.error))
    return rows


def error_row(source: str, error: str) -> Row:
    """The one row of a file that could not be analyzed."""
    row = [None] * len(COLUMNS)
    row[_I["source"]] = source
    row[_I["error"]] = error
    return tuple(row)


def check_out_path(path: str) -> str:
    """The table format of ``path`` ("parquet" or "csv"); ``ValueError`` if the name or
    its directory is unusable (checked before any work is done)."""
    low = path.lower()
    kind = "parquet" if low.endswith(".parquet") else "csv" if low.endswith(".csv") else None
    if kind is None:
        raise ValueError(f"--out {path}: the file name must end in .parquet or .csv")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"--out {path}: no directory {parent}")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"--out {path}: directory {parent} is not writable")
    return kind


class TableWriter:
    """Streams rows to ``path`` (Parquet or CSV, by suffix) in chunks of ``chunk_rows``
    (one Parquet row group each). Rows go to ``PATH.partial`` first; ``close(ok=True)``
    renames it to ``path``, ``close(ok=False)`` keeps the rows so far in ``partial_path``.
    Memory: one chunk. Needs pyarrow (imported here, only when a table is written)."""

    def __init__(self, path: str, chunk_rows: int = 50_000):
        import pyarrow as pa

        self.kind = check_out_path(path)
        self.path = path
        self.partial_path = path + ".partial"
        self.rows_written = 0
        self._pa = pa
        self._schema = pa.schema([pa.field(n, pa.type_for_alias(t)) for n, t, _ in COLUMNS])
        self._chunk: list[Row] = []
        self._chunk_rows = chunk_rows
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            self._writer = pq.ParquetWriter(self.partial_path, self._schema)
        else:
            import pyarrow.csv as pcsv

            self._writer = pcsv.CSVWriter(self.partial_path, self._schema)

    def write(self, rows: list[Row]) -> None:
        self._chunk.extend(rows)
        if len(self._chunk) >= self._chunk_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._chunk:
            return
        cols = list(zip(*self._chunk))
        table = self._pa.Table.from_arrays(
            [self._pa.array(c, type=f.type) for c, f in zip(cols, self._schema)], schema=self._schema)
        self._writer.write_table(table)
        self.rows_written += len(self._chunk)
        self._chunk = []

    def close(self, ok: bool) -> str:
        """Finish the file; return where the rows are."""
        try:
            self._flush()
        finally:
            self._writer.close()
        if ok:
            os.replace(self.partial_path, self.path)
            return self.path
        return self.partial_path


# --- the summary ---------------------------------------------------------------------------

def _nearest_rank(sorted_vals, q: float):
    """The ``q`` quantile by nearest rank (an observed value): ceil(q*n)-th smallest."""
    return sorted_vals[max(math.ceil(q * len(sorted_vals)), 1) - 1]


@dataclass(slots=True)
class _Bounded:
    """The ``n`` largest items by key (a min-heap); ties keep the earlier row."""

    n: int
    heap: list = field(default_factory=list)

    def offer(self, key: tuple, seq: int, item) -> None:
        entry = (key, -seq, item)  # -seq: among equal keys, the earlier row is "larger"
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, entry)
        elif entry > self.heap[0]:
            heapq.heapreplace(self.heap, entry)

    def ranked(self) -> list:
        return [item for _, _, item in sorted(self.heap, key=lambda e: (e[0], e[1]), reverse=True)]


class Summary:
    """What the fleet run prints at the end, fed one row at a time (``add``). Keeps two
    integers per analyzed row (for the distributions) and ``top`` rows per ranking; O(1)
    per row, O(n log n) to report. The designs come from the rows; the two the summary
    compares come from the registry: ``today``, the status quo (``registry.baseline()``,
    the process as captured: its headroom is today's), and ``markers``, the design the
    running kernel implements (``registry.kernel_design()``: guard markers), whose savings
    are ranked."""

    def __init__(self, top: int = 10):
        self.top = top
        self.today = registry.baseline()
        self.markers = registry.kernel_design()
        self.files = 0  # distinct sources seen
        self.failed_files: list[tuple[str, str]] = []  # (source, error), the first few
        self.n_failed_files = 0
        self.design_errors = 0
        self.max_map_counts: set[int] = set()
        self._designs: dict[str, tuple[array, array]] = {}  # design -> (map_count, kernel_bytes)
        self._hits: dict[str, int] = {}
        self._original = array("q")
        self._last_source: str | None = None
        self._seq = 0
        self._gain_vmas = _Bounded(top)
        self._gain_bytes = _Bounded(top)
        self._wall = _Bounded(top)
        self._today: dict | None = None  # the current process's status-quo row, paired with its markers row
        self.payload = 0  # decommitted payload ranges over the processes
        self.existing_markers = 0  # marker runs the processes already hold (where known)

    def add(self, row: Row) -> None:
        source, design, error = row[_I["source"]], row[_I["design"]], row[_I["error"]]
        if source != self._last_source:  # a file's rows are consecutive
            self._last_source = source
            self.files += 1
            self._seq += 1
            self._today = None
            if design is not None:
                self._original.append(row[_I["vmas_original"]])
                self.payload += row[_I["payload"]] or 0
                self.existing_markers += row[_I["existing_markers"]] or 0
        if design is None:
            self.n_failed_files += 1
            if len(self.failed_files) < self.top:
                self.failed_files.append((source, error))
            return
        if error is not None:
            self.design_errors += 1
            return
        self.max_map_counts.add(row[_I["max_map_count"]])
        counts, kbytes = self._designs.setdefault(design, (array("q"), array("q")))
        counts.append(row[_I["map_count"]])
        kbytes.append(row[_I["kernel_bytes"]])
        self._hits[design] = self._hits.get(design, 0) + bool(row[_I["hits_max_map_count"]])
        who = {"source": source, "pid": row[_I["pid"]], "comm": row[_I["comm"]],
               "vmas": row[_I["vmas_original"]]}
        if design == self.today:
            self._today = {**who, "headroom": row[_I["headroom"]], "map_count": row[_I["map_count"]],
                           "kernel_bytes": row[_I["kernel_bytes"]]}
            self._wall.offer((-row[_I["headroom"]],), self._seq, self._today)
        elif design == self.markers:
            gain = {**who, "saved_vmas": row[_I["saved_vmas"]], "saved_bytes": row[_I["saved_bytes"]],
                    "map_count": row[_I["map_count"]], "headroom": row[_I["headroom"]]}
            if gain["saved_vmas"] is not None and gain["saved_vmas"] > 0:  # a process that gains nothing is no gainer
                self._gain_vmas.offer((gain["saved_vmas"], gain["saved_bytes"]), self._seq, gain)
            if gain["saved_bytes"] is not None and gain["saved_bytes"] > 0:
                self._gain_bytes.offer((gain["saved_bytes"], gain["saved_vmas"]), self._seq, gain)
            if self._today is not None and self._today["source"] == source:
                self._today["headroom_" + self.markers] = row[_I["headroom"]]

    @property
    def analyzed(self) -> int:
        """Processes with at least one design's figures."""
        return len(self._original)

    def distributions(self) -> dict:
        """Per design (and the original VMAs): min, median, p90, max by nearest rank, and
        totals, of map_count and kernel bytes; how many processes hit the wall."""
        out = {}
        if self._original:
            s = sorted(self._original)
            out["original"] = {"vmas": _stats(s)}
        for name, (counts, kbytes) in self._designs.items():
            out[name] = {"processes": len(counts), "map_count": _stats(sorted(counts)),
                         "kernel_bytes": _stats(sorted(kbytes)), "hits_max_map_count": self._hits[name]}
        return out

    def to_json(self) -> dict:
        """The summary as JSON (schema ``SUMMARY_SCHEMA``, docs/fleet.md)."""
        return {"schema": SUMMARY_SCHEMA, "files": self.files, "analyzed": self.analyzed,
                "failed_files": self.n_failed_files, "design_errors": self.design_errors,
                "max_map_count": sorted(self.max_map_counts),
                "decommitted_payload": self.payload, "existing_markers": self.existing_markers,
                "distributions": self.distributions(),
                "gain_most_vmas": self._gain_vmas.ranked(), "gain_most_bytes": self._gain_bytes.ranked(),
                "nearest_wall": self._wall.ranked(),
                "errors": [{"source": s, "error": e} for s, e in self.failed_files]}

    def render(self):
        """A rich renderable for people: distributions, gains, the wall, errors."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        from sparsemm.analyze.report import _b, _n

        parts = []
        limits = ", ".join(f"{m:,}" for m in sorted(self.max_map_counts)) or "n/a"
        head = Text()
        head.append(f"{self.files:,} file(s): {self.analyzed:,} process(es) analyzed, "
                    f"{self.n_failed_files:,} failed", style="bold")
        if self.design_errors:
            head.append(f", {self.design_errors:,} design run(s) failed")
        if self.payload or self.existing_markers:
            head.append(f"\n{self.payload:,} decommitted payload range(s) (not guards; the *_with_payload columns "
                        f"count them as markers), {self.existing_markers:,} guard-marker run(s) already held")
        head.append(f"\nheadroom measured against max_map_count {limits} (the kernel's default, "
                    "DEFAULT_MAX_MAP_COUNT; the model's limit); kernel bytes are the model's prediction")
        parts.append(head)
        dist = self.distributions()
        if self._designs:
            t = Table(title="distributions (nearest rank)", header_style="bold", title_justify="left")
            t.add_column("")
            for col in ("min", "median", "p90", "max", "total"):
                t.add_column(col, justify="right")
            t.add_column("hit the wall", justify="right")
            if "original" in dist:
                o = dist["original"]["vmas"]
                t.add_row("VMAs as captured", *(_n(o[k]) for k in ("min", "median", "p90", "max", "total")), "")
            for name in self._designs:
                d = dist[name]
                t.add_row(f"{name}: map_count", *(_n(d["map_count"][k]) for k in ("min", "median", "p90", "max", "total")),
                          _n(d["hits_max_map_count"]))
                t.add_row(f"{name}: kernel bytes", *(_b(d["kernel_bytes"][k]) for k in ("min", "median", "p90", "max", "total")),
                          "")
            parts.append(t)
        for title, ranked in ((f"gain most from markers ({self.markers}), by VMAs saved", self._gain_vmas.ranked()),
                              (f"gain most from markers ({self.markers}), by kernel bytes saved", self._gain_bytes.ranked())):
            if not ranked:
                continue
            t = Table(title=title, header_style="bold", title_justify="left")
            for col, just in (("source", "left"), ("pid", "right"), ("comm", "left"), ("VMAs", "right"),
                              (f"{self.markers} VMAs", "right"), ("saved VMAs", "right"), ("saved bytes", "right")):
                t.add_column(col, justify=just, overflow="fold")
            for g in ranked:
                t.add_row(g["source"], _n(g["pid"]), g["comm"] or "", _n(g["vmas"]), _n(g["map_count"]),
                          _n(g["saved_vmas"]), _b(g["saved_bytes"]))
            parts.append(t)
        ranked = self._wall.ranked()
        if ranked:
            t = Table(title="nearest the max_map_count wall (as captured)", header_style="bold",
                      title_justify="left")
            for col, just in (("source", "left"), ("pid", "right"), ("comm", "left"), ("VMAs", "right"),
                              ("headroom", "right"), (f"headroom with {self.markers}", "right")):
                t.add_column(col, justify=just, overflow="fold")
            for w in ranked:
                t.add_row(w["source"], _n(w["pid"]), w["comm"] or "", _n(w["map_count"]), _n(w["headroom"]),
                          _n(w.get("headroom_" + self.markers)))
            parts.append(t)
        if self.failed_files:
            lines = Text()
            more = self.n_failed_files - len(self.failed_files)
            lines.append(f"files that could not be analyzed (their rows carry the error"
                         f"{f'; {more:,} more' if more else ''}):\n", style="bold")
            for s, e in self.failed_files:
                if not e.startswith(s):  # most errors name their file already
                    lines.append(f"  {s}: ", style="red")
                else:
                    lines.append("  ")
                lines.append(f"{e}\n")
            parts.append(lines)
        return Group(*parts)


def _stats(s) -> dict:
    return {"min": s[0], "median": _nearest_rank(s, 0.5), "p90": _nearest_rank(s, 0.9), "max": s[-1],
            "total": sum(s)}
