"""Draw an ``AnalysisReport`` with matplotlib: the design bands, a zoom into them, and bar charts.

Owns ``plot_report(report, path)`` (Agg backend, PNG or SVG by the suffix). The geometry
(compressed address axis, folds of file mappings the same in every design, what each design
makes of every VMA, the zoom window) comes from ``analyze.bands``; this module only draws
it. Reads reports; computes nothing new.
"""

from __future__ import annotations

from sparsemm.analyze.bands import (BYTE_COLOURS, COLOURS, LABELS, MARK_COLOURS, MARK_LABELS,
                                    OVERVIEW_COLUMNS, Band, BandView, band_view, overview)
from sparsemm.analyze.report import BYTE_KEYS, AnalysisReport

__all__ = ["COLOURS", "plot_report"]

_H = 0.7  # band height (one band per unit of y)


def _inside(spans, x0: float, x1: float):
    return [(x, w) for x, w in spans if x < x1 and x + w > x0]


def _draw_band(ax, y: float, band: Band, view: BandView, window: tuple[float, float] | None) -> None:
    """One design row at height ``y``: fills by category, guards that are no VMA of their
    own as marks. ``window`` (the zoom): only what lies in it, with a white line at every VMA
    boundary of the design; None (the overview): everything, in mixed columns when the band
    has more items than ``OVERVIEW_COLUMNS``."""
    if band.error:
        ax.broken_barh([(0, view.total)], (y, _H), facecolors="#f4f4f4", linewidth=0)
        x0, x1 = window or (0, view.total)
        ax.text((x0 + x1) / 2, y + _H / 2, f"{band.label}: {band.error}", ha="center", va="center",
                fontsize=8, color="#666666", clip_on=True)
        return
    if window is None and len(view.items) > OVERVIEW_COLUMNS:
        by_colour: dict[str, list] = {}
        by_mark: dict[tuple[str, float], list] = {}
        for s in overview(band, view.total, OVERVIEW_COLUMNS):
            if s.colour:
                by_colour.setdefault(s.colour, []).append((s.x, s.w))
            if s.mark:
                by_mark.setdefault((s.mark, s.alpha), []).append((s.x, s.w))
        for colour, spans in by_colour.items():
            ax.broken_barh(spans, (y, _H), facecolors=colour, linewidth=0)
        yy, hh = (y + _H * 0.3, _H * 0.4) if band.shape == "marker" else (y, _H)
        for (colour, alpha), spans in by_mark.items():
            ax.broken_barh(spans, (yy, hh), facecolors=colour, alpha=alpha, linewidth=0)
        return
    x0, x1 = window or (0, view.total)
    for cat, spans in band.fills.items():
        ax.broken_barh(_inside(spans, x0, x1), (y, _H), facecolors=COLOURS[cat], linewidth=0)
    by_key: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for m in band.marks:
        if m.x < x1 and m.x + m.w > x0:
            by_key.setdefault((m.shape, m.category), []).append((m.x, m.w))
    for (shape, cat), spans in by_key.items():
        yy, hh = (y + _H * 0.3, _H * 0.4) if shape == "marker" else (y, _H)
        ax.broken_barh(spans, (yy, hh), facecolors=MARK_COLOURS[(shape, cat)], linewidth=0)
    if window is not None:
        lines = [b for b in band.boundaries if x0 <= b <= x1]
        if lines:
            ax.vlines(lines, y, y + _H, colors="white", linewidth=1.0)


def _bands_axes(ax, view: BandView, window: tuple[float, float] | None) -> None:
    n = len(view.bands)
    ticks = []
    for k, band in enumerate(view.bands):
        y = n - 1 - k
        _draw_band(ax, y, band, view, window)
        count = "n/a" if band.error else f"{band.map_count:,} VMAs"
        ticks.append((y + _H / 2, f"{band.label}  {count}"))
    ax.set_yticks([p for p, _ in ticks], [t for _, t in ticks], fontsize=8.5)
    ax.tick_params(axis="y", length=0)
    ax.set_ylim(-0.15, n - 0.15)
    ax.set_xticks([])
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)


def plot_report(report: AnalysisReport, path: str, *, title: str | None = None) -> str:
    """Write the figure to ``path`` (``.png`` or ``.svg``); returns ``path``.
    Raises ``ValueError`` for another suffix or a report without a layout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    low = str(path).lower()
    if not (low.endswith(".png") or low.endswith(".svg")):
        raise ValueError(f"plot file {path!r}: the name must end in .png or .svg")
    view = band_view(report)
    nb = len(view.bands)
    fig = plt.figure(figsize=(13, 5.6 + 0.55 * nb))
    gs = fig.add_gridspec(4, 2, height_ratios=[0.42 * nb, 0.42 * nb, 0.5, 2.6], hspace=0.45, wspace=0.28)

    ax = fig.add_subplot(gs[0, :])
    _bands_axes(ax, view, None)
    ax.set_xlim(0, view.total)
    ax.set_title(title or f"{report.source}: the address space under each guard design", fontsize=11)
    fold = f"\n{view.fold_note()}" if view.folds else ""
    if len(view.items) > OVERVIEW_COLUMNS:
        fold += f"\ndrawn in {OVERVIEW_COLUMNS:,} columns, each mixing the colours of what it covers"
    ax.set_xlabel(f"address order, low to high: {report.vmas:,} VMAs of the original, each "
                  f"1 + log2(pages)/4 wide, gaps shrunk{fold}", fontsize=7.5)
    x0, x1 = view.zoom
    fw = max(x1 - x0, view.total / 250)  # a frame around 40 of 65,000 VMAs stays visible
    ax.add_patch(Rectangle((x0, -0.12), fw, nb - 0.06, fill=False, edgecolor="black", linewidth=1.0))

    zx = fig.add_subplot(gs[1, :])
    _bands_axes(zx, view, view.zoom)
    zx.set_xlim(x0, x1)
    placed = report.layout_obj.placed
    inside = [it for it in view.items if it.x >= x0 - 1e-9 and it.x + it.w <= x1 + 1e-9]
    lo, hi = placed[inside[0].first].entry.start, placed[inside[-1].last].entry.end
    zx.set_xlabel(f"zoom: the {len(inside)} VMAs at {lo:#x}-{hi:#x} (the black frame above); white lines "
                  "are VMA boundaries, so fewer lines means fewer VMAs", fontsize=7.5)

    shown = {c for b in view.bands for c in b.fills}
    marks = {(m.shape, m.category) for b in view.bands for m in b.marks if m.shape != "vma"}
    handles = [Patch(facecolor=COLOURS[c], label=LABELS[c]) for c in COLOURS if c in shown]
    handles += [Patch(facecolor=MARK_COLOURS[k], label=MARK_LABELS[k]) for k in MARK_LABELS if k in marks]
    lx = fig.add_subplot(gs[2, :])
    lx.axis("off")
    lx.legend(handles=handles, loc="center", ncol=4, fontsize=7.5, frameon=False)

    ok = [d for d in report.designs if not report.designs[d].error]
    # The columns of both charts: each design, then (with decommitted payload) the designs
    # that turn it into markers / tree entries too - the second set of counts.
    cols = [(d, report.designs[d]) for d in ok]
    if report.payload:
        cols += [(f"{b.label.replace(' ', chr(10))}", report.designs_with_payload[b.design])
                 for b in view.bands if b.with_payload and not b.error]
    ax1 = fig.add_subplot(gs[3, 0])
    names = ["original"] + [label for label, _ in cols]
    vals = [report.vmas] + [f.map_count for _, f in cols]
    colours = ["#555555"] + [COLOURS["payload"] if "+payload" in label else "#4c72b0" for label, _ in cols]
    bars = ax1.bar(names, vals, color=colours)
    ax1.bar_label(bars, labels=[f"{v:,}" for v in vals], fontsize=8)
    ax1.set_title("VMAs (map_count), model" + ("; +payload: decommitted payload as markers too"
                                               if report.payload else ""), fontsize=10)
    ax1.set_ylim(0, max(vals) * 1.18 if vals else 1)
    ax2 = fig.add_subplot(gs[3, 1])
    labels = [label for label, _ in cols]
    bottom = [0.0] * len(cols)
    for key, colour in zip(BYTE_KEYS, BYTE_COLOURS):
        v = [f.bytes.get(key, 0) / 1024 for _, f in cols]
        ax2.bar(labels, v, bottom=bottom, color=colour, label=key)
        bottom = [b + x for b, x in zip(bottom, v)]
    for i, (_, f) in enumerate(cols):
        ax2.text(i, bottom[i], f"{f.total_bytes / 1024:,.0f} KiB", ha="center", va="bottom", fontsize=8)
    ax2.set_title("kernel memory by object (KiB), model", fontsize=10)
    ax2.set_ylim(0, max(bottom) * 1.18 if bottom and max(bottom) else 1)
    handles, names2 = ax2.get_legend_handles_labels()
    ax2.legend(handles[::-1], names2[::-1], fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False)
    for a in (ax1, ax2):
        a.spines[["top", "right"]].set_visible(False)
        a.tick_params(labelsize=8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return str(path)
