"""The band view of an ``AnalysisReport`` as plain geometry: one band per design, in address order.

Owns ``band_view``: the compressed axis, folds (file mappings the same in every design), what each
design row makes of every VMA, the zoom window, the overview columns, and the colours. Read by
``analyze.plot`` and ``analyze.html``; reads the report's layouts only and draws nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sparsemm.analyze.report import AnalysisReport
from sparsemm.model.designs import design_class

__all__ = ["COLOURS", "LABELS", "MARK_COLOURS", "MARK_LABELS", "BYTE_COLOURS", "FOLD_MIN", "GAP", "QUANTUM", "OVERVIEW_COLUMNS",
           "Item", "Mark", "Band", "BandView", "Strip", "band_view", "design_rows", "overview", "guard_shape", "width_of"]

#: Fill colour of a VMA by ``Placed.category`` (and of a fold). Red is kept for guards alone.
COLOURS = {"rw": "#4caf50", "guard": "#d62728", "payload": "#9467bd", "reservation": "#bdbdbd",
           "file": "#1f77b4", "other": "#ff9f1c", "fold": "#a9c7e8"}
LABELS = {"rw": "anonymous memory", "guard": "guard as a PROT_NONE VMA",
          "payload": "decommitted payload (PROT_NONE VMA)", "reservation": "reservation (PROT_NONE)",
          "file": "file-backed", "other": "other ([stack], [vdso], shared…)",
          "fold": "folded: file mappings the same in every design"}
#: A guard (or payload range) that is not a VMA of its own: its colour by shape and category.
MARK_COLOURS = {("marker", "guard"): "#b0001e", ("entry", "guard"): "#f4a6a6",
                ("marker", "payload"): "#5b2c91", ("entry", "payload"): "#d3bde8",
                ("vma", "guard"): COLOURS["guard"], ("vma", "payload"): COLOURS["payload"]}
MARK_LABELS = {("marker", "guard"): "guard as page-table markers, inside the VMA (pte)",
               ("entry", "guard"): "guard as a maple-tree entry, no VMA (tree)",
               ("marker", "payload"): "payload as markers (+payload)",
               ("entry", "payload"): "payload as tree entries (+payload)"}
#: Kernel memory by object (``report.BYTE_KEYS`` order): blues, amber and sand, no red, so
#: page tables are never mistaken for guards.
BYTE_COLOURS = ("#3b6ea5", "#f2a541", "#8fb8de", "#6b6b6b", "#c8b88a")

#: Axis positions and widths are multiples of 1/QUANTUM units: exact in binary floating point,
#: so every sum along the axis is exact in Python and in the page's script alike.
QUANTUM = 16
GAP = 10 / QUANTUM  # axis units drawn for any gap between VMAs
FOLD_MIN = 3  # VMAs a fold needs (fewer are drawn one by one)
ZOOM_ITEMS = 40  # items (VMAs or folds) in the default zoom window
OVERVIEW_COLUMNS = 1600  # an overview of more items than this is drawn in this many columns


def _q(w: float) -> float:
    return round(w * QUANTUM) / QUANTUM


def width_of(size: int) -> float:
    """Axis units of a VMA of ``size`` bytes: ``1 + log2(pages) / 4`` (4 KiB: 1, 2 MiB:
    3.25, 16 GiB: 6.5), so a guard page and a terabyte reservation are both visible;
    rounded to a multiple of ``1 / QUANTUM``."""
    return _q(1.0 + math.log2(max(size >> 12, 1)) / 4.0)


def guard_shape(design: str) -> str:
    """How ``design`` holds a guard: ``"vma"`` (a PROT_NONE VMA), ``"marker"`` (page-table
    markers inside the VMA around it) or ``"entry"`` (a maple-tree entry, no VMA), from the
    design registry's ``guard_shape``."""
    return design_class(design).guard_shape.value  # ValueError naming the choices if unknown


@dataclass(slots=True)
class Item:
    """One slot of the axis: a VMA of the original (``first == last``) or a fold of the
    VMAs ``first..last`` (indices into the layout's ``placed``)."""

    x: float
    w: float
    first: int
    last: int
    category: str  # Placed.category, or "fold"

    @property
    def folded(self) -> bool:
        return self.category == "fold"


@dataclass(slots=True)
class Mark:
    """A guard (or payload range, or marker run the process holds) drawn over a band."""

    x: float
    w: float
    shape: str  # "vma" (a PROT_NONE VMA), "marker", "entry"
    category: str  # "guard" or "payload"


@dataclass(slots=True)
class Band:
    """One design row: ``fills`` (category -> merged (x, w) spans), ``marks`` and the
    ``boundaries`` (x of every VMA boundary of this design, none inside a fold)."""

    label: str  # "pte", "pte +payload"
    design: str
    with_payload: bool
    shape: str
    map_count: int | None
    error: str = ""
    fills: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    marks: list[Mark] = field(default_factory=list)
    boundaries: list[float] = field(default_factory=list)


@dataclass(slots=True)
class BandView:
    """The axis (``items``, ``total`` units), the design rows and the default zoom window
    ``zoom`` (x0, x1) in axis units; ``folded_vmas`` VMAs lie in ``folds`` folds."""

    items: list[Item]
    total: float
    bands: list[Band]
    zoom: tuple[float, float]
    folds: int = 0
    folded_vmas: int = 0
    item_of: list[int] = field(default_factory=list)  # per placed VMA: its item's index

    def fold_note(self) -> str:
        if not self.folds:
            return ""
        return (f"{self.folded_vmas:,} VMAs folded into {self.folds:,} block{'s' if self.folds != 1 else ''}: "
                "runs of file-backed "
                "mappings (with the anonymous VMAs between two of them, such as a library's .bss) "
                "that are the same in every design")


def _unchanged(report: AnalysisReport) -> list[bool]:
    """Per placed VMA: the same in every design and both rebuilds (not in a guard span, no
    markers, not a guard nor payload). O(n)."""
    lay, lay_p = report.layout_obj, report.layout_payload_obj or report.layout_obj
    out = []
    for p, pp in zip(lay.placed, lay_p.placed):
        out.append(p.category not in ("guard", "payload") and not p.markers
                   and not lay.units[p.unit].is_span and not lay_p.units[pp.unit].is_span)
    return out


def _folds(report: AnalysisReport, fold: bool) -> list[tuple[int, int]]:
    """(first, last) of each fold: a maximal run of unchanged VMAs that starts and ends with
    a file-backed one and has no two non-file VMAs in a row, of at least ``FOLD_MIN``. O(n)."""
    if not fold:
        return []
    placed = report.layout_obj.placed
    same = _unchanged(report)
    out = []
    i, n = 0, len(placed)
    while i < n:
        if not (same[i] and placed[i].category == "file"):
            i += 1
            continue
        j = last_file = i
        while j + 1 < n and same[j + 1] and (placed[j + 1].category == "file" or placed[j].category == "file"):
            j += 1
            if placed[j].category == "file":
                last_file = j
        if last_file + 1 - i >= FOLD_MIN:
            out.append((i, last_file))
        i = last_file + 1
    return out


def _axis(report: AnalysisReport, folds: list[tuple[int, int]]) -> tuple[list[Item], list[int]]:
    placed = report.layout_obj.placed
    items: list[Item] = []
    item_of = [0] * len(placed)
    fold_at = dict(folds)
    x, prev_end, i = 0.0, None, 0
    while i < len(placed):
        p = placed[i]
        if prev_end is not None and p.entry.start != prev_end:
            x += GAP
        if i in fold_at:
            j = fold_at[i]
            w = _q(1.0 + math.log2(j + 2 - i))
            items.append(Item(x, w, i, j, "fold"))
            for k in range(i, j + 1):
                item_of[k] = len(items) - 1
            prev_end = placed[j].entry.end
            i = j + 1
        else:
            w = width_of(p.entry.size)
            items.append(Item(x, w, i, i, p.category))
            item_of[i] = len(items) - 1
            prev_end = p.entry.end
            i += 1
        x += w
    return items, item_of


def _base_category(layout, unit) -> str:
    """The fill of a guard drawn inside the VMA around it: its unit's first non-guard VMA."""
    for k in range(unit.first, unit.last + 1):
        p = layout.placed[k]
        if not p.guard:
            return p.category
    return "rw"


def _band(report: AnalysisReport, items: list[Item], label: str, design: str, with_payload: bool) -> Band:
    figs = (report.designs_with_payload if with_payload else report.designs)[design]
    shape = guard_shape(design)
    band = Band(label, design, with_payload, shape, figs.map_count, figs.error)
    if figs.error:
        return band
    layout = report.layout_payload_obj if with_payload and report.layout_payload_obj else report.layout_obj
    placed, units = layout.placed, layout.units
    base_cat: dict[int, str] = {}
    spans: list[tuple[str, float, float]] = []  # (category, x, w), in order
    for it in items:
        if it.folded:
            spans.append(("fold", it.x, it.w))
            band.boundaries.append(it.x)
            continue
        k = it.first
        p = placed[k]
        cat = p.category
        if p.guard:
            mark_cat = "payload" if cat == "payload" else "guard"
            if shape == "vma":
                cat = mark_cat
            else:
                band.marks.append(Mark(it.x, it.w, shape, mark_cat))
                cat = None
                if shape == "marker":
                    if p.unit not in base_cat:
                        base_cat[p.unit] = _base_category(layout, units[p.unit])
                    cat = base_cat[p.unit]
        if cat is not None:
            spans.append((cat, it.x, it.w))
        if k and not _continues(layout, k, shape):
            band.boundaries.append(it.x)
        for at, npages in p.markers:  # marker runs the process holds
            mx = it.x + it.w * (at - p.at) / max(p.npages, 1)
            mw = max(it.w * npages / max(p.npages, 1), min(0.15, it.w))
            band.marks.append(Mark(mx, mw, shape, "guard"))
            if shape != "marker":  # a PROT_NONE VMA or a tree entry splits the VMA
                band.boundaries.extend(b for b in (mx, mx + mw) if it.x < b < it.x + it.w)
    for cat, x, w in spans:  # adjacent spans of one category become one
        run = band.fills.setdefault(cat, [])
        if run and abs(run[-1][0] + run[-1][1] - x) < 1e-9:
            run[-1] = (run[-1][0], run[-1][1] + w)
        else:
            run.append((x, w))
    return band


def _continues(layout, k: int, shape: str) -> bool:
    """Is placed ``k`` part of the same VMA as ``k - 1`` under a design of ``shape``? Only
    markers merge: within one guard span, where a decommitted payload left as it was (a
    PROT_NONE VMA) stays a VMA of its own."""
    if shape != "marker":
        return False
    p, q = layout.placed[k], layout.placed[k - 1]
    if p.unit != q.unit or not layout.units[p.unit].is_span:
        return False
    return not any(x.category == "payload" and not x.guard for x in (p, q))


def _zoom(items: list[Item], report: AnalysisReport) -> tuple[float, float]:
    """The window of ``ZOOM_ITEMS`` items with the most guards, payload and marker runs
    (the first such), starting at the first of them. O(items)."""
    if not items:
        return 0.0, 1.0
    placed = report.layout_obj.placed
    score = [0 if it.folded else int(placed[it.first].category in ("guard", "payload")
                                     or bool(placed[it.first].markers)) for it in items]
    n = min(ZOOM_ITEMS, len(items))
    best = cur = sum(score[:n])
    at = 0
    for i in range(n, len(items)):
        cur += score[i] - score[i - n]
        if cur > best:
            best, at = cur, i - n + 1
    # Leading items that score nothing give way to the ones after the window (as many score).
    lead = next((k for k in range(at, at + n) if score[k]), at)
    at = max(0, min(lead, len(items) - n))
    first, last = items[at], items[at + n - 1]
    return first.x, last.x + last.w


@dataclass(slots=True)
class Strip:
    """A column of a band's overview when the band has more VMAs than the overview has
    columns: ``colour`` mixes the colours of what it covers by width (None: a gap only);
    ``mark`` mixes the guards drawn over it (None: none), shown with opacity ``alpha``."""

    x: float
    w: float
    colour: str | None
    mark: str | None = None
    alpha: float = 0.0


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _spread(acc: list[list[float]], step: float, x: float, w: float, rgb) -> None:
    """Add the span [x, x + w) in colour ``rgb`` to the columns it covers, by width."""
    last = len(acc) - 1
    k = min(last, int(x / step))
    end = x + w
    if end <= (k + 1) * step:  # within one column: most spans of a dense band
        a = acc[k]
        a[0] += rgb[0] * w
        a[1] += rgb[1] * w
        a[2] += rgb[2] * w
        a[3] += w
        return
    while k <= last:
        lo, hi = max(x, k * step), min(end, (k + 1) * step)
        if hi > lo:
            a = acc[k]
            cov = hi - lo
            a[0] += rgb[0] * cov
            a[1] += rgb[1] * cov
            a[2] += rgb[2] * cov
            a[3] += cov
        if (k + 1) * step >= end:
            break
        k += 1


def _mix(a: list[float]) -> str | None:
    if a[3] <= 0:
        return None
    return "#" + "".join(f"{min(255, round(c / a[3])):02x}" for c in a[:3])


def overview(band: Band, total: float, columns: int) -> list[Strip]:
    """``band`` drawn in ``columns`` equal columns over ``total`` axis units (adjacent equal
    columns merged): what a screen shows of a band denser than its pixels, computed once
    instead of drawn VMA by VMA. O(spans + columns)."""
    step = total / columns
    fill = [[0.0, 0.0, 0.0, 0.0] for _ in range(columns)]
    mark = [[0.0, 0.0, 0.0, 0.0] for _ in range(columns)]
    for cat, spans in band.fills.items():
        rgb = _rgb(COLOURS[cat])
        for x, w in spans:
            _spread(fill, step, x, w, rgb)
    for m in band.marks:
        _spread(mark, step, m.x, m.w, _rgb(MARK_COLOURS[(m.shape, m.category)]))
    out: list[Strip] = []
    for k in range(columns):
        colour, mc = _mix(fill[k]), _mix(mark[k])
        alpha = 0.0 if mc is None else round(max(0.5, min(1.0, mark[k][3] / step)), 2)
        prev = out[-1] if out else None
        if prev is not None and (prev.colour, prev.mark, prev.alpha) == (colour, mc, alpha):
            prev.w += step
        else:
            out.append(Strip(k * step, step, colour, mc, alpha))
    return out


def design_rows(report: AnalysisReport) -> list[tuple[str, str, bool]]:
    """(label, design, with_payload) of every design column a report shows: each design,
    then, when the map has decommitted payload, each design that does not keep guards as
    VMAs with the payload as guards too (``"pte +payload"``)."""
    rows = [(d, d, False) for d in report.designs]
    if report.payload:
        rows += [(f"{d} +payload", d, True) for d in report.designs_with_payload if guard_shape(d) != "vma"]
    return rows


def band_view(report: AnalysisReport, *, fold: bool = True) -> BandView:
    """The band view of ``report``: rows for each design (guards only), then, when the map
    has decommitted payload, each design but ``vma`` with the payload as guards too.
    ``fold``: fold runs of file mappings that are the same in every design. O(n).
    Raises ``ValueError`` when the report carries no layout."""
    if report.layout_obj is None:
        raise ValueError("the report carries no layout to draw")
    folds = _folds(report, fold)
    items, item_of = _axis(report, folds)
    bands = [_band(report, items, label, d, wp) for label, d, wp in design_rows(report)]
    total = items[-1].x + items[-1].w if items else 1.0
    return BandView(items=items, total=total, bands=bands, zoom=_zoom(items, report), folds=len(folds),
                    folded_vmas=sum(j + 1 - i for i, j in folds), item_of=item_of)
