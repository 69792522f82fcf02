"""Draw an ``AnalysisReport``: the address space as one band per design, plus bar charts.

Owns ``plot_report(report, path)`` (matplotlib, Agg backend, PNG or SVG by the suffix).
The bands are drawn from the rebuilt layout along a compressed address axis: every VMA of
the original gets a width of ``1 + log2(pages) / 4`` units and every gap a fixed sliver, so
a 4 KiB guard and a 1 TiB reservation are both visible. Reads reports; computes nothing new.
"""

from __future__ import annotations

import math

from sparsemm.analyze.report import BYTE_KEYS, AnalysisReport

__all__ = ["COLOURS", "plot_report"]

COLOURS = {"rw": "#4caf50", "guard": "#d62728", "payload": "#9467bd", "reservation": "#bdbdbd",
           "file": "#1f77b4", "other": "#ff9f1c"}
_LABELS = {"rw": "anonymous memory", "guard": "guard", "payload": "decommitted payload (PROT_NONE)",
           "reservation": "reservation (PROT_NONE)", "file": "file-backed", "other": "other ([stack], [vdso], shared…)"}
_GAP = 0.6  # axis units drawn for any gap between VMAs
_BYTE_COLOURS = ("#7b9acc", "#f2a541", "#c9a0dc", "#8cc084", "#e07a5f")


def _axis(report: AnalysisReport) -> list[tuple[float, float]]:
    """(x, width) per placed VMA on the compressed axis."""
    out = []
    x = 0.0
    prev_end = None
    for p in report.layout_obj.placed:
        if prev_end is not None and p.at != prev_end:
            x += _GAP
        w = 1.0 + math.log2(max(p.npages, 1)) / 4.0
        out.append((x, w))
        x += w
        prev_end = p.at + p.npages
    return out


def _stays(p) -> bool:
    """A decommitted payload that this layout leaves a PROT_NONE VMA (not a guard install)."""
    return p.category == "payload" and not p.guard


def _band(ax, y: float, h: float, report: AnalysisReport, xs, design: str) -> None:
    """One design's VMAs at height ``y``: coloured by category, with a white line at every
    VMA boundary of that design (so fewer lines = fewer VMAs)."""
    placed = report.layout_obj.placed
    units = report.layout_obj.units
    by_cat: dict[str, list[tuple[float, float]]] = {}
    marks: list[tuple[float, float]] = []  # guards that are not VMAs (markers, tree entries)
    boundaries: list[float] = []
    for i, (p, (x, w)) in enumerate(zip(placed, xs)):
        cat = p.category
        if p.category == "guard" and design != "vma":
            marks.append((x, w))
            cat = "rw" if design == "pte" else None  # pte: inside the VMA; tree: no VMA at all
        if cat is not None:
            by_cat.setdefault(cat, []).append((x, w))
        # A boundary before p unless p continues one VMA of this design (pte: within a unit,
        # where only a decommitted payload left as it was stays a VMA of its own).
        if i and not (design == "pte" and units[p.unit].is_span and p.unit == placed[i - 1].unit
                      and not _stays(p) and not _stays(placed[i - 1])):
            boundaries.append(x)
    for cat, spans in by_cat.items():
        ax.broken_barh(spans, (y, h), facecolors=COLOURS[cat], linewidth=0)
    if marks:
        if design == "pte":
            ax.broken_barh(marks, (y + h * 0.35, h * 0.3), facecolors=COLOURS["guard"], linewidth=0)
        else:
            ax.broken_barh(marks, (y, h), facecolors="none", edgecolors=COLOURS["guard"],
                           linewidth=0.4, hatch="////")
    if boundaries:
        ax.vlines(boundaries, y, y + h, colors="white", linewidth=0.12, alpha=0.8)


def plot_report(report: AnalysisReport, path: str, *, title: str | None = None) -> str:
    """Write the figure to ``path`` (``.png`` or ``.svg``); returns ``path``.
    Raises ``ValueError`` for another suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    low = str(path).lower()
    if not (low.endswith(".png") or low.endswith(".svg")):
        raise ValueError(f"plot file {path!r}: the name must end in .png or .svg")
    if report.layout_obj is None:
        raise ValueError("the report carries no layout to draw")
    designs = [d for d in report.designs]
    xs = _axis(report)
    total = xs[-1][0] + xs[-1][1] if xs else 1.0

    fig = plt.figure(figsize=(13, 7.2))
    gs = fig.add_gridspec(2, 2, height_ratios=[1.15, 1], hspace=0.45, wspace=0.28)
    ax = fig.add_subplot(gs[0, :])
    h = 0.7
    labels = []
    for k, d in enumerate(designs):
        y = len(designs) - 1 - k
        f = report.designs[d]
        if not f.error:
            _band(ax, y, h, report, xs, d)
        labels.append((y + h / 2, f"{d}\n{f.map_count:,} VMAs" if not f.error else f"{d}\n(n/a)"))
        if f.error:
            ax.broken_barh([(0, total)], (y, h), facecolors="#f4f4f4", linewidth=0)
            ax.text(total / 2, y + h / 2, f"{d}: {f.error}", ha="center", va="center", fontsize=9,
                    color="#666666")
    ax.set_yticks([p for p, _ in labels], [t for _, t in labels])
    ax.set_xlim(0, total)
    ax.set_ylim(-0.2, len(designs))
    ax.set_xticks([])
    ax.set_xlabel(f"address order, low to high ({report.vmas:,} VMAs of the original; width "
                  "1 + log2(pages)/4 per VMA, gaps shrunk; white lines: VMA boundaries)", fontsize=8)
    ax.set_title(title or f"{report.source}: the address space under each guard design", fontsize=11)
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    handles = [Patch(facecolor=COLOURS[c], label=_LABELS[c]) for c in COLOURS]
    handles.append(Patch(facecolor="none", edgecolor=COLOURS["guard"], hatch="////",
                         label="guard without a VMA (pte marker / tree entry)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=6, fontsize=7.5,
              frameon=False)

    ok = [d for d in designs if not report.designs[d].error]
    # The columns of both charts: each design, then (with decommitted payload) pte and tree
    # with the payload as markers too - the second set of counts.
    cols = [(d, d, report.designs[d]) for d in ok]
    if report.payload:
        cols += [(f"{d}\n+payload", d, report.designs_with_payload[d]) for d in ok
                 if d != "vma" and not report.designs_with_payload[d].error]
    ax1 = fig.add_subplot(gs[1, 0])
    names = ["original"] + [label for label, _, _ in cols]
    vals = [report.vmas] + [f.map_count for _, _, f in cols]
    colours = ["#555555"] + [COLOURS["payload"] if "+payload" in label else "#4c72b0" for label, _, _ in cols]
    bars = ax1.bar(names, vals, color=colours)
    ax1.bar_label(bars, labels=[f"{v:,}" for v in vals], fontsize=8)
    ax1.set_title("VMAs (map_count)" + ("; +payload: decommitted payload as markers too"
                                        if report.payload else ""), fontsize=10)
    ax1.set_ylim(0, max(vals) * 1.18 if vals else 1)
    ax2 = fig.add_subplot(gs[1, 1])
    labels = [label for label, _, _ in cols]
    bottom = [0.0] * len(cols)
    for key, colour in zip(BYTE_KEYS, _BYTE_COLOURS):
        v = [f.bytes.get(key, 0) / 1024 for _, _, f in cols]
        ax2.bar(labels, v, bottom=bottom, color=colour, label=key)
        bottom = [b + x for b, x in zip(bottom, v)]
    for i, (_, _, f) in enumerate(cols):
        ax2.text(i, bottom[i], f"{f.total_bytes / 1024:,.0f} KiB", ha="center", va="bottom", fontsize=8)
    ax2.set_title("kernel memory by object (KiB, model)", fontsize=10)
    ax2.set_ylim(0, max(bottom) * 1.18 if bottom and max(bottom) else 1)
    ax2.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    for a in (ax1, ax2):
        a.spines[["top", "right"]].set_visible(False)
        a.tick_params(labelsize=8)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return str(path)
