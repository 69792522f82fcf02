"""``sparsemm analyze --html``: one self-contained HTML page for an ``AnalysisReport``.

Owns the page: bands (from ``analyze.bands``) and bars as inline SVG, the mappings table (sorted,
filtered, paged by ``html_page.js``), the guard policy, every number with its provenance. Loads
nothing (a CSP forbids any fetch), escapes every input string, and computes no figure itself.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
import os
import re
from html import escape
from importlib import resources

from sparsemm import __version__
from sparsemm.analyze.bands import (BYTE_COLOURS, COLOURS, GAP, LABELS, MARK_COLOURS, MARK_LABELS, OVERVIEW_COLUMNS, QUANTUM,
                                    Band, BandView, band_view, design_rows, overview)
from sparsemm.analyze.rebuild import _fmt_bytes
from sparsemm.analyze.report import BYTE_KEYS, OUTCOMES, AnalysisReport, DesignFigures, _size, mappings
from sparsemm.measure_view import verdict_label
from sparsemm.model.designs import baseline, kernel_design

__all__ = ["render_html", "write_html", "PAGE_ROWS"]

PAGE_ROWS = 100  # table rows per page (and rows written into the page before the script runs)
_ZOOM_CHOICES = (20, 40, 80, 160, 400)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean(text: str) -> str:
    """``text`` as it can be shown: bytes that were not UTF-8 (kept by ``surrogateescape``)
    and control characters become visible ``\\xNN`` escapes."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        raw = text.encode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", raw.decode("utf-8", "backslashreplace"))


def _e(text) -> str:
    """Shown (``_clean``) and escaped for HTML text and double-quoted attributes."""
    return escape(_clean(str(text)), quote=True)


def _n(v) -> str:
    return "n/a" if v is None else f"{v:,}"


def _b(n: int | None) -> str:
    if n is None:
        return "n/a"
    if abs(n) >= 10 * 1024 * 1024:
        return f"{n / 1048576:,.1f} MiB"
    if abs(n) >= 10 * 1024:
        return f"{n / 1024:,.1f} KiB"
    return f"{n:,} B"


def _f(x: float) -> str:
    """An SVG coordinate: 3 decimals, no trailing zeros."""
    s = f"{x:.3f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def _json_island(doc) -> str:
    """``doc`` as JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or
    ``&`` left (so no ``</script>`` and no ``<!--``), U+2028/9 escaped."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for ch, rep in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, rep)
    return text


def _asset(name: str) -> str:
    return resources.files("sparsemm.analyze").joinpath(name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


# --- the bands ---------------------------------------------------------------------------------
#
# Band SVGs use axis units times QUANTUM (integers: every position and width in the band view
# is a multiple of 1/QUANTUM), a viewBox of height 1 stretched to the row (preserveAspectRatio
# none), and spans drawn as horizontal strokes ("m dx 0 h w", about 9 bytes a span). The zoom
# is the same drawing under a narrower viewBox; its paths come in chunks of CHUNK_UNITS axis
# units so that the browser skips those outside the view. A band with more items than
# OVERVIEW_COLUMNS is drawn in the overview as that many mixed columns (``bands.overview``).

CHUNK_UNITS = 512.0  # axis units per chunk of the zoom (a few hundred VMAs)
_STRIPE = {"marker": (0.5, 0.4), "entry": (0.5, 1.0), "vma": (0.5, 1.0)}  # y of the stroke, width


def _X(x: float) -> int:
    """Axis units (>= 0) as the SVG's integer units."""
    return int(x * QUANTUM + 0.5)


def _hpath(spans: list[tuple[int, int]], y: float) -> str:
    """Horizontal runs ``(x, w)`` (sorted, integers) as one path: M x y h w m dx 0 h w ..."""
    out = []
    end = None
    for x, w in spans:
        out.append(f"M{x} {_f(y)}h{w}" if end is None else f"m{x - end} 0h{w}")
        end = x + w
    return "".join(out)


def _vpath(xs: list[int]) -> str:
    """Vertical lines over the whole height at ``xs`` (sorted, integers)."""
    out = []
    prev = None
    for x in xs:
        out.append(f"M{x} 0v1" if prev is None else f"m{x - prev}-1v1")
        prev = x
    return "".join(out)


def _zoom_body(band: Band, chunk: int) -> str:
    """The band at full detail, in ``<g>`` chunks of ``chunk`` units of the axis each."""
    fills: dict[int, dict[str, list]] = {}
    marks: dict[int, dict[tuple[str, float, float], list]] = {}
    bounds: dict[int, list[int]] = {}
    for cat, spans in band.fills.items():
        colour = COLOURS[cat]
        for x, w in spans:
            x16 = _X(x)
            fills.setdefault(x16 // chunk, {}).setdefault(colour, []).append((x16, _X(x + w) - x16))
    for m in band.marks:
        x16 = _X(m.x)
        y, h = _STRIPE[m.shape]
        key = (MARK_COLOURS[(m.shape, m.category)], y, h)
        marks.setdefault(x16 // chunk, {}).setdefault(key, []).append((x16, max(1, _X(m.x + m.w) - x16)))
    for x in band.boundaries:
        x16 = _X(x)
        bounds.setdefault(x16 // chunk, []).append(x16)
    out = []
    for k in sorted(fills.keys() | marks.keys() | bounds.keys()):
        parts = [f'<path stroke="{c}" d="{_hpath(sorted(sp), 0.5)}"/>' for c, sp in fills.get(k, {}).items()]
        parts += [f'<path stroke="{c}" stroke-width="{_f(h)}" d="{_hpath(sorted(sp), y)}"/>'
                  for (c, y, h), sp in marks.get(k, {}).items()]
        if k in bounds:
            parts.append(f'<path class="bd" d="{_vpath(sorted(bounds[k]))}"/>')
        out.append(f"<g>{''.join(parts)}</g>")
    return "".join(out)


def _overview_body(band: Band, view: BandView) -> str:
    """The band as the overview shows it: as in the zoom (without VMA boundaries) when it
    has at most OVERVIEW_COLUMNS items, else OVERVIEW_COLUMNS mixed columns."""
    if len(view.items) <= OVERVIEW_COLUMNS:
        return _zoom_body(Band(band.label, band.design, band.with_payload, band.shape, band.map_count,
                               fills=band.fills, marks=band.marks), _X(view.total) + 1)
    strips = overview(band, view.total, OVERVIEW_COLUMNS)
    fills: dict[str, list] = {}
    marks: dict[tuple[str, float], list] = {}
    for s in strips:
        x0, x1 = _X(s.x), _X(s.x + s.w)
        if x1 <= x0:
            continue
        if s.colour is not None:
            fills.setdefault(s.colour, []).append((x0, x1 - x0))
        if s.mark is not None:
            marks.setdefault((s.mark, s.alpha), []).append((x0, x1 - x0))
    y, h = _STRIPE[band.shape]
    parts = [f'<path stroke="{c}" d="{_hpath(sp, 0.5)}"/>' for c, sp in fills.items()]
    parts += [f'<path stroke="{c}" stroke-opacity="{_f(a)}" stroke-width="{_f(h)}" d="{_hpath(sp, y)}"/>'
              for (c, a), sp in marks.items()]
    return "".join(parts)


def _band_rows(view: BandView, zoom: bool) -> str:
    total = _X(view.total)
    x0, x1 = (_X(view.zoom[0]), _X(view.zoom[1])) if zoom else (0, total)
    chunk = max(1, _X(CHUNK_UNITS))
    out = []
    for band in view.bands:
        count = "n/a" if band.error else f"<b>{band.map_count:,}</b> VMAs"
        out.append(f'<div class="lab">{_e(band.label)} &#183; {count}</div>')
        if band.error:
            body = f'<path class="na" d="M0 .5h{total}"><title>{_e(band.error)}</title></path>'
        else:
            body = _zoom_body(band, chunk) if zoom else _overview_body(band, view)
        what = "zoom" if zoom else "overview"
        out.append(f'<svg viewBox="{x0} 0 {max(1, x1 - x0)} 1" preserveAspectRatio="none" role="img" '
                   f'aria-label="{_e(band.label)} design, {what}">{body}</svg>')
    if not zoom:
        out.append('<div id="win" aria-hidden="true"></div>')
    return "".join(out)


def _swatch(colour: str, stripe: str | None = None) -> str:
    inner = f'<rect x="0" y="4" width="16" height="4" fill="{stripe}"/>' if stripe else ""
    return (f'<svg viewBox="0 0 16 12" aria-hidden="true"><rect width="16" height="12" fill="{colour}"/>'
            f'{inner}</svg>')


def _legend(view: BandView) -> str:
    shown = {c for b in view.bands for c in b.fills}
    marks = {(m.shape, m.category) for b in view.bands for m in b.marks if m.shape != "vma"}
    items = [f"<span>{_swatch(COLOURS[c])}{_e(LABELS[c])}</span>" for c in COLOURS if c in shown]
    for key in MARK_LABELS:
        if key in marks:
            sw = _swatch(COLOURS["rw"], MARK_COLOURS[key]) if key[0] == "marker" else _swatch(MARK_COLOURS[key])
            items.append(f"<span>{sw}{_e(MARK_LABELS[key])}</span>")
    items.append(f'<span>{_swatch(COLOURS["rw"], "#ffffff")}a white line (zoom): a VMA boundary</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def _bands_section(report: AnalysisReport, view: BandView) -> str:
    fold = f" {_e(view.fold_note())}." if view.folds else ""
    dense = (f" The overview draws the {len(view.items):,} VMAs and folds in {OVERVIEW_COLUMNS:,} columns, each "
             "mixing the colours of what it covers; the zoom draws every VMA."
             if len(view.items) > OVERVIEW_COLUMNS else "")
    inside = [it for it in view.items if it.x >= view.zoom[0] - 1e-9 and it.x + it.w <= view.zoom[1] + 1e-9]
    options = "".join(f'<option value="{n}"{" selected" if n == len(inside) else ""}>{n} VMAs</option>'
                      for n in sorted(set(_ZOOM_CHOICES) | {len(inside)}))
    return f"""
<section id="bands"><h2>The address space under each design</h2>
<p>One band per design, in address order, low to high: each of the {report.vmas:,} VMAs of the
original is <code>1 + log2(pages)/4</code> wide (a 4 KiB guard and a terabyte reservation are
both visible) and gaps are shrunk to a sliver.{fold}{dense} The zoom below shows the framed part
with its VMA boundaries: fewer white lines, fewer VMAs. Click the overview to move the frame;
point at a VMA in the zoom to read it, click it to find it in the table.</p>
{_legend(view)}
<div class="bands" id="overview">{_band_rows(view, False)}</div>
<div class="controls"><label for="zoom-pos">zoom frame</label>
<button type="button" id="zoom-prev" aria-label="previous window">&#9664;</button>
<input type="range" id="zoom-pos" min="0" max="{_X(view.total)}" value="{_X(view.zoom[0])}" step="1">
<button type="button" id="zoom-next" aria-label="next window">&#9654;</button>
<label>width <select id="zoom-n">{options}</select></label>
<span id="zoom-range" class="mono"></span></div>
<div class="bands" id="zoom">{_band_rows(view, True)}</div>
<div id="zoom-info" aria-live="polite">Point at a VMA in the zoom.</div>
</section>"""


# --- bar charts --------------------------------------------------------------------------------

def _nice_step(top: float, ticks: int = 5) -> float:
    if top <= 0:
        return 1.0
    raw = top / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _bar_chart(title: str, labels: list[str], stacks: list[tuple[str, str, list[float]]],
               tops: list[str], bar_colours: list[str] | None = None, unit: str = "") -> str:
    """A (stacked) bar chart as SVG: ``stacks`` = (name, colour, values per label);
    ``tops`` the text over each bar; ``bar_colours`` overrides a single series' colour per bar."""
    W, H, left, right, top, bottom = 520, 300, 52, 12 if len(stacks) == 1 else 132, 30, 44
    pw, ph = W - left - right, H - top - bottom
    sums = [sum(s[2][i] for s in stacks) for i in range(len(labels))]
    peak = max(sums, default=0) * 1.15 or 1
    step = _nice_step(peak)
    parts = [f'<text class="t" x="{left}" y="16">{_e(title)}</text>']
    y = 0.0
    while y <= peak + 1e-9:
        py = top + ph - ph * y / peak
        parts.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{_f(py)}" y2="{_f(py)}"/>'
                     f'<text x="{left - 6}" y="{_f(py + 4)}" text-anchor="end">{y:,.0f}{_e(unit)}</text>')
        y += step
    slot = pw / max(len(labels), 1)
    bw = slot * 0.62
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bw) / 2
        base = 0.0
        for name, colour, vals in stacks:
            v = vals[i]
            fill = bar_colours[i] if bar_colours else colour
            y0 = top + ph - ph * (base + v) / peak
            parts.append(f'<rect x="{_f(x)}" y="{_f(y0)}" width="{_f(bw)}" height="{_f(ph * v / peak)}" '
                         f'fill="{fill}"><title>{_e(label)}: {_e(name)} {v:,.1f}{_e(unit)}</title></rect>')
            base += v
        parts.append(f'<text class="v" x="{_f(x + bw / 2)}" y="{_f(top + ph - ph * base / peak - 4)}" '
                     f'text-anchor="middle">{_e(tops[i])}</text>')
        for j, line in enumerate(label.split("\n")):
            parts.append(f'<text x="{_f(x + bw / 2)}" y="{_f(top + ph + 15 + 13 * j)}" '
                         f'text-anchor="middle">{_e(line)}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/>')
    if len(stacks) > 1:
        for j, (name, colour, _) in enumerate(reversed(stacks)):
            ly = top + 10 + 18 * j
            parts.append(f'<rect x="{W - right + 14}" y="{ly - 9}" width="12" height="11" fill="{colour}"/>'
                         f'<text x="{W - right + 31}" y="{ly}">{_e(name)}</text>')
    return (f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{_e(title)}">{"".join(parts)}</svg>')


def _columns(report: AnalysisReport, view: BandView) -> list[tuple[str, DesignFigures]]:
    """The designs' columns: guards only, then (with payload) the +payload ones."""
    return [(label, (report.designs_with_payload if wp else report.designs)[d])
            for label, d, wp in design_rows(report)]


def _charts(report: AnalysisReport, view: BandView) -> str:
    ok = [(label, f) for label, f in _columns(report, view) if not f.error]
    labels = ["original"] + [label.replace(" +", "\n+") for label, _ in ok]
    vals = [float(report.vmas)] + [float(f.map_count) for _, f in ok]
    colours = ["#555555"] + [COLOURS["payload"] if "+payload" in label else "#4c72b0" for label, _ in ok]
    vma_chart = _bar_chart("VMAs (map_count)",
                           labels, [("VMAs", "#4c72b0", vals)], [f"{v:,.0f}" for v in vals], colours)
    blabels = [label.replace(" +", "\n+") for label, _ in ok]
    stacks = [(key, colour, [f.bytes.get(key, 0) / 1024 for _, f in ok]) for key, colour in zip(BYTE_KEYS, BYTE_COLOURS)]
    bytes_chart = _bar_chart("Kernel memory by object (KiB)", blabels, stacks,
                             [f"{f.total_bytes / 1024:,.0f} KiB" for _, f in ok])
    more = "; +payload (purple): the decommitted payload as markers / tree entries too" if report.payload else ""
    return (f'<div class="charts"><figure>{vma_chart}<figcaption class="prov">original: counted in the '
            f'input; designs: predicted by the model{more}</figcaption></figure><figure>{bytes_chart}'
            '<figcaption class="prov">predicted by the model: object counts × slab strides</figcaption>'
            '</figure></div>')


# --- numbers and their provenance --------------------------------------------------------------

_PREDICTED = ("predicted: the model (an executable Linux 6.18 address space) runs the rebuilt layout "
              "under each design and counts the kernel objects")


def _figures_table(report: AnalysisReport, view: BandView) -> str:
    cols = _columns(report, view)
    head = "".join(f'<th class="num">{_e(label)}</th>' for label, _ in cols)
    rows = []

    def row(label, original, fn, how, strong=False):
        cells = "".join(f'<td class="num">{_e(fn(f)) if not f.error else "n/a"}</td>' for _, f in cols)
        cls = ' class="strong"' if strong else ""
        rows.append(f'<tr{cls}><td>{_e(label)}</td><td class="num">{_e(original)}</td>{cells}'
                    f'<td class="prov">{_e(how)}</td></tr>')

    model = "predicted (model)"
    row("VMAs (map_count)", _n(report.vmas), lambda f: _n(f.map_count),
        "original: counted in the input; designs: " + model, True)
    row("  saved vs vma", "", lambda f: _n(f.saved_vmas), model)
    row("guard entries (tree)", "", lambda f: _n(f.guard_entries), model)
    row("headroom to max_map_count", _n(report.max_map_count - report.vmas),
        lambda f: f"{_n(f.headroom_vmas)} ({f.headroom_pct:.1f}%)",
        f"max_map_count {report.max_map_count:,} (the kernel's default) minus map_count")
    row("anon_vma / chains", "", lambda f: f"{_n(f.anon_vmas)} / {_n(f.anon_vma_chains)}", model)
    row("maple nodes", "", lambda f: _n(f.maple_nodes), model)
    row("page-table pages", "", lambda f: _n(f.page_table_pages),
        model + f"; from the pages the rebuild touches (touch={report.layout['touch']}"
        + (": a lower bound" if report.layout["touch"] == "first" else "") + ")")
    for key in BYTE_KEYS:
        row(f"  {key}", "", lambda f, key=key: _b(f.bytes.get(key)),
            "predicted: model object count × slab stride (cost constants measured on Linux 6.18)")
    row("kernel bytes (total)", "", lambda f: _b(f.total_bytes), "predicted (model): the sum above", True)
    row("  saved vs vma", "", lambda f: _b(f.saved_bytes), model)
    return (f'<table class="figs"><thead><tr><th>quantity</th><th class="num">original</th>{head}'
            f'<th>how obtained</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _verdict(r) -> str:
    text, tone = verdict_label(r)
    return f'<span class="{tone}">{text}</span>' if tone in ("ok", "bad", "drop") else text


def _measured_section(report: AnalysisReport, reproductions, with_payload: bool) -> str:
    if not reproductions:
        return ("<p><b>Every design figure on this page is predicted</b> (the model); none was "
                "measured. <code>sparsemm reproduce TARGET --html FILE</code> builds the layout on the "
                "running kernel under <code>vma</code> and <code>pte</code> and adds what the kernel "
                "shows: VMAs, <code>VmPTE</code> and the kernel bytes charged to a memory cgroup.</p>")
    from sparsemm.analyze.reproduce import PROVENANCE
    from sparsemm.measure_view import SECTIONS, how_notes

    which = ("the +payload rebuild (guards and decommitted payload as guards)" if with_payload
             else "the guards-only rebuild")
    out = [f"<p>Measured on this kernel by <code>sparsemm reproduce</code>, {which}: each design's layout "
           f"built in fresh processes and read back. {_e(PROVENANCE)}.</p>"]
    for rep in reproductions:
        m = rep.measured
        body = []
        scope = None
        for r in rep.rows:
            if r.scope != scope:
                scope = r.scope
                body.append(f'<tr><th colspan="7">{_e(SECTIONS.get(r.scope, r.scope))}</th></tr>')
            spread = "" if r.spread is None else (
                _n(r.spread[0]) if r.spread[0] == r.spread[1] else f"{_n(r.spread[0])}..{_n(r.spread[1])}")
            how = r.note if r.verdict == "dropped" else r.method
            body.append(f'<tr><td>{_e(r.label)}</td><td class="num">{_e(_n(r.predicted))}</td>'
                        f'<td class="num">{"-" if r.measured is None else _e(_n(r.measured))}</td>'
                        f'<td class="num">{_e(spread)}</td>'
                        f'<td class="num">{"" if r.diff is None else _e(f"{r.diff:+,}")}</td>'
                        f'<td>{_verdict(r)}</td><td class="prov">{_e(how)}</td></tr>')
        notes = [f"median of {len(m.runs)} run(s)" + (f" ({m.attempts} made)" if m.attempts > len(m.runs) else "")]
        notes += how_notes(m) + list(m.notes) + [f"skipped: {s}" for s in m.skipped]
        out.append(f"<h3>design {_e(rep.design)}{' +payload' if with_payload and rep.design != baseline() else ''} "
                   "on the kernel</h3>"
                   '<table class="figs"><thead><tr><th>quantity</th><th class="num">predicted (model)</th>'
                   '<th class="num">measured (kernel)</th><th class="num">runs min..max</th>'
                   '<th class="num">diff</th><th>verdict</th><th>method</th></tr></thead>'
                   f'<tbody>{"".join(body)}</tbody></table>'
                   + "".join(f'<p class="note">{_e(n)}</p>' for n in notes))
    return "".join(out)


def _policy_section(report: AnalysisReport) -> str:
    p = report.policy
    guard = _fmt_bytes(p["max_guard_bytes"])
    border = p["max_borderline_bytes"]
    strict = border == p["max_guard_bytes"] and p["neighbour_perms"] == "rw-p"
    neighbours = (f"exactly <code>{_e(p['neighbour_perms'])}</code>" if p["neighbour_perms"]
                  else "any accessible private anonymous memory they would merge with")
    rule = (f"A private anonymous <code>PROT_NONE</code> VMA next to {neighbours} is a <b>guard</b> when it "
            f"is at most {guard}. ")
    if strict:
        rule += "Nothing larger is a guard or decommitted payload (the strict rule, <code>--strict-guards</code>)."
    else:
        limit = "with no upper bound" if border is None else f"up to {_fmt_bytes(border)}"
        rule += (f"A larger one, {limit}, is <b>decommitted payload</b> when markers for it would cost "
                 f"no more kernel memory than its VMA times {p['cost_ratio']:g} (the cost test); "
                 "anything else is a <b>reservation</b>.")
    items = [("max guard size", f"{guard} (--max-guard-kib)"),
             ("max borderline size", "none" if border is None else f"{_fmt_bytes(border)} (--max-borderline-mib)"),
             ("cost ratio", f"{p['cost_ratio']:g} (--cost-ratio)"),
             ("neighbour perms", p["neighbour_perms"] or "any (--neighbour-perms)")]
    found = [("guards", f"{report.guards:,} ({report.sandwiches:,} sandwiched, {report.one_sided:,} one-sided), "
                        f"{_b(report.guard_bytes)}"),
             ("decommitted payload", f"{report.payload:,} ranges, {_b(report.payload_bytes)}"),
             ("reservations", f"{report.reservations:,}"),
             ("isolated PROT_NONE", f"{report.isolated_prot_none:,} (kept: markers need a VMA to live in)"),
             ("guard markers held", "unknown (the input cannot show them)" if report.existing_markers is None
              else f"{report.existing_markers:,} runs, {_b(report.existing_marker_bytes)} in "
                   f"{report.vmas_with_markers:,} VMA(s)")]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    dl2 = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in found)
    return (f'<section id="policy"><h2>The guard policy used</h2><p>{rule}</p>'
            f'<dl class="policy">{dl}</dl><h3>What it found</h3><dl class="policy">{dl2}</dl></section>')


# --- the mappings table ------------------------------------------------------------------------

def _table_data(report: AnalysisReport) -> tuple[dict, list[dict], list[str]]:
    """The JSON the script reads (rows dictionary-encoded: every dictionary is sorted, so a
    column sorts by its index) and the outcome column labels."""
    ms = mappings(report)
    rows_of = design_rows(report)
    out_labels = [label for label, _, _ in rows_of]

    def why(m):
        parts = [x for x in (m["reason"], m["side"]) if x]
        return ", ".join(parts)

    sizes = sorted({m["size"] for m in ms})
    size_ix = {s: i for i, s in enumerate(sizes)}
    dicts = {name: sorted({fn(m) for m in ms}) for name, fn in (
        ("perms", lambda m: m["perms"]), ("kind", lambda m: m["kind"]), ("role", lambda m: m["role"]),
        ("why", why), ("path", lambda m: m["path"]))}
    dicts["path"] = sorted({_clean(p) for p in dicts["path"]})  # as shown, sorted as shown
    dicts["outcome"] = sorted(OUTCOMES)
    ix = {name: {v: i for i, v in enumerate(vals)} for name, vals in dicts.items()}
    rows, markers = [], {}
    for i, m in enumerate(ms):
        outs = [m["designs_with_payload" if wp else "designs"][d] for _, d, wp in rows_of]
        rows.append([f"{m['start']:x}", size_ix[m["size"]], ix["perms"][m["perms"]], ix["kind"][m["kind"]],
                     ix["role"][m["role"]], ix["why"][why(m)], len(m["markers"]),
                     *(ix["outcome"][o] for o in outs), ix["path"][_clean(m["path"])]])
        if m["markers"]:
            markers[str(i)] = [[f"{r['start']:x}", f"{r['end']:x}"] for r in m["markers"]]
    nout = len(out_labels)
    # end = start + size: the script adds them (BigInt: addresses exceed 2**53)
    fields = {"start": 0, "size": 1, "perms": 2, "kind": 3, "role": 4, "why": 5, "markers": 6,
              "out": list(range(7, 7 + nout)), "path": 7 + nout}
    cols = [{"label": "#", "type": "index", "f": 0, "cls": "num"},
            {"label": "address", "type": "addr", "f": 0, "cls": "addr"},
            {"label": "size", "type": "dict", "dict": "size", "f": 1, "cls": "num"},
            {"label": "perms", "type": "dict", "dict": "perms", "f": 2, "cls": "mono"},
            {"label": "backing", "type": "dict", "dict": "kind", "f": 3},
            {"label": "role", "type": "dict", "dict": "role", "f": 4},
            {"label": "why", "type": "dict", "dict": "why", "f": 5, "cls": "why"}]
    if report.existing_markers:  # unknown (None) or none held: no column
        cols.append({"label": "markers held", "type": "count", "f": 6, "cls": "num"})
    cols += [*({"label": label, "type": "dict", "dict": "outcome", "f": 7 + j} for j, label in enumerate(out_labels)),
             {"label": "mapping", "type": "dict", "dict": "path", "f": 7 + nout, "cls": "path"}]
    dicts["sizeHex"] = [f"{s:x}" for s in sizes]
    dicts["size"] = [_size(s) for s in sizes]
    data = {"fields": fields, "cols": cols, "dict": dicts, "rows": rows, "markers": markers,
            "outLabels": out_labels, "page": PAGE_ROWS,
            "roleClass": {"guard": "guard", "decommitted payload": "payload", "reservation": "reservation",
                          "kept": "kept"},
            "outcomeClass": {o: o for o in OUTCOMES}}
    return data, ms, out_labels


def _cell_text(data: dict, row: list, i: int, col: dict) -> str:
    """What the script writes in a cell (the first page is written here the same way)."""
    if col["type"] == "addr":
        start = int(row[0], 16)
        return f"{start:x}-{start + int(data['dict']['sizeHex'][row[1]], 16):x}"
    if col["type"] == "index":
        return str(i + 1)
    if col["type"] == "dict":
        return data["dict"][col["dict"]][row[col["f"]]]
    if col["type"] == "count":
        return str(row[col["f"]]) if row[col["f"]] else ""
    raise ValueError(f"unknown column type {col['type']!r}")


def _cell_class(data: dict, col: dict, text: str) -> str:
    if col["type"] == "dict" and col["dict"] == "outcome":
        return "o-" + data["outcomeClass"].get(text, "x")
    if col["type"] == "dict" and col["dict"] == "role":
        return "r-" + data["roleClass"].get(text, "x")
    return col.get("cls", "")


def _table_section(report: AnalysisReport, data: dict) -> str:
    head = "".join(
        f'<th{" aria-sort=" + chr(34) + "ascending" + chr(34) if k == 0 else ""}'
        f'{" class=" + chr(34) + "num" + chr(34) if c.get("cls") == "num" else ""}>'
        f'<button type="button">{_e(c["label"])}</button></th>' for k, c in enumerate(data["cols"]))
    first = []
    for i, row in enumerate(data["rows"][:PAGE_ROWS]):
        tds = []
        for c in data["cols"]:
            text = _cell_text(data, row, i, c)
            cls = _cell_class(data, c, text)
            tds.append(f'<td{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{_e(text)}</td>')
        first.append(f"<tr>{''.join(tds)}</tr>")
    roles = "".join(f'<option value="{k}">{_e(r)}</option>' for k, r in enumerate(data["dict"]["role"]))
    n = len(data["rows"])
    sizes = "".join(f'<option value="{s}"{" selected" if s == PAGE_ROWS else ""}>{s}</option>'
                    for s in (50, PAGE_ROWS, 500, 2000))
    return f"""
<section id="mappings"><h2>Every VMA: its role and what each design makes of it</h2>
<p>{n:,} VMAs of the original in address order. <b>role</b>: guard, decommitted payload, reservation or
kept; <b>why</b>: the policy's reason and where the mergeable memory is. Under each design a VMA
stays a <code>vma</code>, is <code>merged</code> with the guards next to it, is a
<code>prot_none_vma</code>, <code>marker</code>s or a <code>tree_entry</code>, or is <code>split</code>
by the markers it holds. Click a column to sort; type to filter (addresses, paths, roles, outcomes).</p>
<div class="controls"><label>filter <input type="search" id="map-q" size="28" placeholder="text, address or path"></label>
<label>role <select id="map-role"><option value="">any</option>{roles}</select></label>
<label><input type="checkbox" id="map-changed"> only VMAs a design changes</label></div>
<div class="pager"><button type="button" id="page-first">first</button><button type="button" id="page-prev">previous</button>
<span id="page-no">page 1 of {max(1, -(-n // PAGE_ROWS)):,}</span><button type="button" id="page-next">next</button>
<button type="button" id="page-last">last</button><label>rows per page <select id="page-size">{sizes}</select></label>
<span id="map-status">rows 1&#8211;{min(n, PAGE_ROWS):,} of {n:,}</span></div>
<noscript><p class="warn">Without JavaScript only the first {PAGE_ROWS} rows are shown; the full
table is in this page's data (and in <code>sparsemm analyze TARGET --json --mappings</code>).</p></noscript>
<div class="scroll"><table id="map-table"><thead><tr>{head}</tr></thead>
<tbody id="map-rows">{"".join(first)}</tbody></table></div>
</section>"""


# --- the page ----------------------------------------------------------------------------------

def _measured_line(reproductions) -> str:
    """One sentence: what the kernel showed, per reproduced design."""
    parts = []
    for rep in reproductions:
        by = {r.key: r for r in rep.rows}
        got = []
        vmas = by.get("arena_vmas")
        if vmas is not None and vmas.measured is not None:
            got.append(f"{vmas.measured:,} VMAs ({'as predicted' if vmas.verdict == 'exact' else 'predicted ' + _n(vmas.predicted)})")
        memcg = by.get("memcg_bytes")
        if memcg is not None and memcg.measured is not None:
            ok = memcg.verdict in ("exact", "within")
            got.append(f"{memcg.measured:,} kernel bytes charged to its memory cgroup "
                       f"({'within ±' + format(memcg.slack, ',') + ' B of the prediction' if ok else 'predicted ' + _n(memcg.predicted)})")
        if got:
            parts.append(f"{rep.design}: " + ", ".join(got))
    if not parts:
        return ""
    return f'<p><b>Measured on this kernel</b> (<a href="#numbers">details</a>): {_e("; ".join(parts))}.</p>'


def _summary(report: AnalysisReport, view: BandView, reproductions) -> str:
    cards = [(f"{report.vmas:,}", "VMAs in the original (counted)")]
    base = baseline()  # the status quo (vma): the design the others are compared with
    vma = report.designs.get(base)
    for label, f in _columns(report, view):
        if f.error or label == base:
            continue
        saved = "" if f.saved_vmas is None else f", {f.saved_vmas:,} fewer"
        cards.append((f"{f.map_count:,}", f"VMAs under {label} (predicted{saved})"))
    own = kernel_design()  # the kernel's own design (pte)
    pte = report.designs.get(own)
    if pte is not None and not pte.error and pte.saved_bytes is not None:
        cards.append((_b(pte.saved_bytes), f"kernel memory {own} saves vs {base} (predicted)"))
    if vma is not None and not vma.error:
        cards.append((f"{vma.headroom_pct:.1f}%", f"of max_map_count {report.max_map_count:,} left ({base})"))
    lines = [f"{report.vmas:,} VMAs, {report.guards:,} guards ({report.sandwiches:,} sandwiched, "
             f"{report.one_sided:,} one-sided), {report.reservations:,} reservations"]
    if report.payload:
        lines.append(f"{report.payload:,} ranges of decommitted payload ({_b(report.payload_bytes)} PROT_NONE "
                     "inside used memory; not guards)")
    if report.existing_markers:
        lines.append(f"{report.existing_markers:,} guard-marker runs already held")
    warn = "".join(f'<p class="warn">warning: {_e(w)}</p>' for w in report.warnings)
    if report.vma_matches_original is False:
        warn += (f'<p class="warn">the rebuild as the process was has {_n(report.rebuilt_vmas)} VMAs, '
                 f"the original {report.vmas:,}: the predictions are for a different layout</p>")
    return (f'<section id="summary"><p>{"; ".join(_e(x) for x in lines)}.</p>{_measured_line(reproductions)}'
            '<div class="cards">'
            + "".join(f"<div class=\"card\"><b>{_e(v)}</b><span>{_e(t)}</span></div>" for v, t in cards)
            + f"</div>{warn}</section>")


def _notes(report: AnalysisReport) -> str:
    lay = report.layout
    notes = [f"rebuilt in an arena of {lay['arena_pages'] * 4096 / 2**30:,.1f} GiB: gaps between VMAs are "
             f"shortened, keeping every address's offset within a {lay['granule_bytes'] >> 20} MiB block "
             f"(so page-table sharing is kept); {lay['ops']:,} ops",
             f"pages touched by the rebuild: {lay['touched_pages']:,} ({lay['touch']}: "
             + ("each VMA's resident pages from smaps" if lay["touch"] == "rss" else
                "the first page of each accessible anonymous VMA: page tables are a lower bound"
                if lay["touch"] == "first" else "none") + ")",
             f"the guard finder's own prediction: pte {report.formula['pte']:,}, tree {report.formula['tree']:,} VMAs",
             "rebuild check: the rebuild as the process was has "
             + (f"{report.rebuilt_vmas:,} VMAs, the original {report.vmas:,}"
                if report.rebuilt_vmas is not None else "no count (it could not run)"),
             f"analysis took {report.seconds:.2f} s"]
    notes += lay["notes"]
    errs = [f"{n}: {f.error}" for n, f in report.designs.items() if f.error]
    return ('<section id="notes"><h2>How the layout was rebuilt</h2><ul>'
            + "".join(f"<li>{_e(n)}</li>" for n in notes + errs) + "</ul></section>")


def _axis_data(view: BandView) -> dict:
    """The axis for the script, in integer units (``_X``): per item ``2 * width + gap``
    (gap: a gap sliver of ``gap`` units lies before it), the folds as [first, last] VMA
    indices; the script adds the widths up to the same positions."""
    code, prev_end = [], 0
    for it in view.items:
        x, w = _X(it.x), _X(it.w)
        code.append(2 * w + (x != prev_end))
        prev_end = x + w
    return {"axis": code, "gap": _X(GAP), "folds": [[it.first, it.last] for it in view.items if it.folded],
            "total": _X(view.total), "zoom": [_X(view.zoom[0]), _X(view.zoom[1])]}


def render_html(report: AnalysisReport, reproductions=None, *, with_payload: bool = False,
                now: _dt.datetime | None = None) -> str:
    """The page for ``report`` (from ``analyze``: it needs the layouts and classification),
    with ``reproductions`` (``analyze.reproduce.Reproduction`` list; ``with_payload``: of the
    +payload rebuild) as the measured figures. O(VMAs). Raises ``ValueError`` for a report
    without its layouts."""
    view = band_view(report)
    data, _, _ = _table_data(report)
    data.update(_axis_data(view))
    css, js = _asset("html_page.css"), _asset("html_page.js")
    csp = (f"default-src 'none'; style-src {_csp_hash(css)}; script-src {_csp_hash(js)}; "
           "img-src 'none'; base-uri 'none'; form-action 'none'")
    when = (now or _dt.datetime.now(_dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    kind = {"pid": "a live process", "snapshot": "a snapshot", "smaps": "a saved smaps file",
            "maps": "a saved maps file"}.get(report.input_kind, "maps entries")
    title = f"sparsemm analyze: {report.source}"
    body = "".join([
        f'<header><h1>{_e(report.source)}</h1><p class="meta">what each guard design makes of {_e(kind)} '
        f"&#183; sparsemm {_e(__version__)} &#183; {_e(when)}</p></header>",
        _summary(report, view, reproductions or []),
        _bands_section(report, view),
        f'<section id="numbers"><h2>The numbers, and how each was obtained</h2>'
        f"<p class=\"prov\">{_e(_PREDICTED)}; the original's VMAs are counted in the input.</p>"
        f"{_charts(report, view)}{_figures_table(report, view)}"
        f'<h3>Measured on the kernel</h3>{_measured_section(report, reproductions, with_payload)}</section>',
        _policy_section(report),
        _table_section(report, data),
        _notes(report),
        f'<footer>Written by <code>sparsemm analyze --html</code>; self-contained (no network, no '
        f"external files). Schema of the data: <code>sparsemm analyze --json --mappings</code>.</footer>",
    ])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{css}</style></head><body>{body}"
            f'<script type="application/json" id="sparsemm-data">{_json_island(data)}</script>'
            f"<script>{js}</script></body></html>\n")


def write_html(report: AnalysisReport, path: str, reproductions=None, *, with_payload: bool = False) -> str:
    """Write ``render_html(report, reproductions, with_payload=...)`` to ``path`` (through a
    temporary file in the same directory, renamed when complete); returns ``path``."""
    text = render_html(report, reproductions, with_payload=with_payload)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(path)
