"""``sparsemm analyze --html`` without a browser: the page parsed with ``html.parser``.

It references nothing outside itself, its Content-Security-Policy admits only its own
style and script, its table data and first page hold every VMA as ``mappings`` says, hostile
names stay text, and the band view it draws shows each design's VMA count. The browser
tests (sorting, filtering, console, screenshot) are in test_analyze_html_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sparsemm.analyze.bands import GAP, QUANTUM, band_view, design_rows
from sparsemm.analyze.html import PAGE_ROWS, _clean, render_html, write_html
from sparsemm.analyze.maps import parse_maps
from sparsemm.analyze.report import analyze, analyze_source, mappings

from conftest import needs_guards, run_cli

MAPS = Path(__file__).resolve().parent / "data" / "maps"
RENDERER = MAPS / "chromium150_renderer_heavy_default.maps"
SAMPLES = sorted(MAPS.glob("*.maps"))
P = 4096
BASE = 0x7F0000000000

#: Names a maps file may carry in its path column (anything but a newline) that would run
#: script, load a resource or break out of an attribute or the JSON island if not escaped.
HOSTILE_PATHS = [
    '/tmp/</script><img src=x onerror="window.__pwned=1">',
    '/x/"><svg onload=window.__pwned=2>',
    "/y/'onmouseover='window.__pwned=3' &amp; &lt;b&gt; \u2028 \u2029 <!-- --> ]]>",
    "/z/<style>body{display:none}</style><link rel=stylesheet href=http://example.com/x.css>\r\x1b[31m",
    "/w/<script src=https://example.com/x.js></script>",
]
HOSTILE_ANON = "[anon:</script><b>x</b>]"


def hostile_maps() -> str:
    lines, addr = [], BASE
    for k, path in enumerate(HOSTILE_PATHS):
        for j in range(3):  # three of a kind: a fold of file mappings
            lines.append(f"{addr:x}-{addr + P:x} r--p {j * P:08x} fe:00 {100 + k} {path}")
            addr += P
        addr += 16 * P
    for perms in ("rw-p", "---p", "rw-p"):  # a named guard sandwich
        lines.append(f"{addr:x}-{addr + P:x} {perms} 00000000 00:00 0 {HOSTILE_ANON}")
        addr += P
    return "\n".join(lines) + "\n"


class Page(HTMLParser):
    """Every start tag with its attributes, the text of every element by id, script
    and style contents."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self.styles: list[str] = []
        self.rows: list[list[str]] = []  # the table's first page, cell texts
        self._in: str | None = None
        self._buf: list[str] = []
        self._tbody = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in ("script", "style"):
            self._in, self._attrs, self._buf = tag, a, []
        if tag == "tbody" and a.get("id") == "map-rows":
            self._tbody = True
        if self._tbody and tag == "tr":
            self._row = []
        if self._row is not None and tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == self._in:
            (self.scripts.append((self._attrs, "".join(self._buf))) if tag == "script"
             else self.styles.append("".join(self._buf)))
            self._in = None
        if tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None and self._tbody:
            self.rows.append(self._row)
            self._row = None
        if tag == "tbody":
            self._tbody = False

    def handle_data(self, data):
        if self._in:
            self._buf.append(data)
        if self._cell is not None:
            self._cell.append(data)


def data_of(page: Page) -> dict:
    [(_, text)] = [(a, t) for a, t in page.scripts if a.get("type") == "application/json"]
    return json.loads(text)


def expected_cell(m: dict, i: int, label: str, data: dict) -> str:
    """The cell ``label`` of VMA ``i`` as the page must show it, from ``mappings``."""
    if label == "#":
        return str(i + 1)
    if label == "address":
        return f"{m['start']:x}-{m['end']:x}"
    if label == "perms":
        return m["perms"]
    if label == "backing":
        return m["kind"]
    if label == "role":
        return m["role"]
    if label == "why":
        return ", ".join(x for x in (m["reason"], m["side"]) if x)
    if label == "markers held":
        return str(len(m["markers"])) if m["markers"] else ""
    if label == "mapping":
        return _clean(m["path"])
    if label == "size":
        return data["dict"]["size"][sorted({x["size"] for x in data["_ms"]}).index(m["size"])]
    design, _, plus = label.partition(" ")
    return m["designs_with_payload" if plus else "designs"][design]


@pytest.fixture(scope="module")
def renderer():
    return analyze_source(str(RENDERER))


@pytest.fixture(scope="module")
def renderer_page(renderer):
    return render_html(renderer)


# --- nothing from outside ------------------------------------------------------------------------

def check_self_contained(text: str) -> Page:
    """The checks every page must pass; returns it parsed."""
    page = Page(text)
    assert not re.search(r"(?i)\b(?:https?|ftp|wss?):|//[a-z0-9.-]+\.[a-z]{2,}/|url\(|@import|@font-face",
                         page.styles[0] + "".join(s for a, s in page.scripts if not a.get("type")))
    for tag, attrs in page.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)  # no inline handlers
        for key in ("src", "srcset", "action", "formaction", "data", "poster", "background"):
            assert key not in attrs, (tag, attrs)
        for key in ("href", "xlink:href"):
            if key in attrs:
                assert attrs[key].startswith("#"), (tag, attrs)  # fragments only
        assert tag not in ("img", "link", "iframe", "object", "embed", "base", "form", "audio", "video",
                           "image", "foreignobject"), tag
    # Two scripts: the JSON island and the inline script; one style sheet, in <head>.
    assert len(page.scripts) == 2 and len(page.styles) == 1
    kinds = sorted(a.get("type", "") for a, _ in page.scripts)
    assert kinds == ["", "application/json"]
    # The policy forbids every fetch and admits exactly this style and this script.
    [csp] = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    script = next(s for a, s in page.scripts if not a.get("type"))

    def digest(s: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"

    assert csp.startswith("default-src 'none';")
    assert f"script-src {digest(script)};" in csp and f"style-src {digest(page.styles[0])};" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    return page


def test_renderer_page_is_self_contained(renderer_page):
    check_self_contained(renderer_page)
    assert len(renderer_page.encode()) < 600_000  # one page for 1,400 VMAs, not megabytes


# --- the table -------------------------------------------------------------------------------------

def check_table(report, text: str) -> None:
    """Every VMA in the data island and the first page equal to ``mappings(report)``."""
    page = Page(text)
    data = data_of(page)
    ms = mappings(report)
    data["_ms"] = ms
    F = data["fields"]
    assert len(data["rows"]) == len(ms) == report.vmas
    labels = [c["label"] for c in data["cols"]]
    outs = [lab for lab in labels if lab.split(" ")[0] in report.designs]
    assert outs == [lab for lab, _, _ in design_rows(report)]
    for i, (row, m) in enumerate(zip(data["rows"], ms)):
        d = data["dict"]
        assert int(row[F["start"]], 16) == m["start"]
        assert int(row[F["start"]], 16) + int(d["sizeHex"][row[F["size"]]], 16) == m["end"]
        assert (d["perms"][row[F["perms"]]], d["kind"][row[F["kind"]]], d["role"][row[F["role"]]]) == \
            (m["perms"], m["kind"], m["role"])
        assert d["path"][row[F["path"]]] == _clean(m["path"])
        assert row[F["markers"]] == len(m["markers"])
        got = [d["outcome"][row[f]] for f in F["out"]]
        assert got == [expected_cell(m, i, lab, data) for lab in outs]
    # Every dictionary is sorted (a column sorts by its index), sizes by value.
    for name, values in data["dict"].items():
        if name not in ("size", "sizeHex"):
            assert values == sorted(values), name
    assert [int(h, 16) for h in data["dict"]["sizeHex"]] == sorted(int(h, 16) for h in data["dict"]["sizeHex"])
    # The first page, written before the script runs, as the script writes it.
    assert len(page.rows) == min(PAGE_ROWS, len(ms))
    for i, cells in enumerate(page.rows):
        assert cells == [expected_cell(ms[i], i, lab, data) for lab in labels], i


def test_renderer_table(renderer, renderer_page):
    check_table(renderer, renderer_page)
    assert "markers held" not in [c["label"] for c in data_of(Page(renderer_page))["cols"]]  # maps: unknown


def test_markers_table_and_bands():
    from test_analyze_markers import LAYOUT, MARKERS

    r = analyze(parse_maps(LAYOUT), markers=MARKERS, touch="first")
    text = render_html(r)
    check_self_contained(text)
    check_table(r, text)
    assert "markers held" in [c["label"] for c in data_of(Page(text))["cols"]]
    check_bands_count(r)


# --- escaping ----------------------------------------------------------------------------------------

def test_hostile_names_stay_text(tmp_path):
    name = 'evil<script>alert(5)<img src=x onerror=window.__pwned=4>"\'.maps'
    f = tmp_path / name
    f.write_bytes(hostile_maps().encode() + b"7f0000100000-7f0000101000 r--p 00000000 fe:00 9 /bad/\xff\xfe\n")
    r = analyze_source(str(f))
    out = tmp_path / "h.html"
    write_html(r, str(out))  # undecodable bytes in a path do not stop the page
    text = out.read_text(encoding="utf-8")
    page = check_self_contained(text)
    check_table(r, text)
    # No markup from the input: the only elements are the page's own.
    tags = {t for t, _ in page.tags}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "p", "b",
                    "code", "section", "div", "span", "svg", "path", "rect", "g", "text", "line", "title",
                    "table", "thead", "tbody", "tr", "th", "td", "button", "input", "label", "select", "option",
                    "noscript", "ul", "li", "dl", "dt", "dd", "figure", "figcaption", "footer", "a", "script"}
    for hostile in ("<img src=x", "<svg onload", "<style>body", "<link rel", "<b>x</b>", "<script src"):
        assert hostile not in text
    # Everything is still there, as text: the title, the paths in the data.
    assert _unescaped_title(text) == f"sparsemm analyze: {name}"
    paths = set(data_of(page)["dict"]["path"])
    assert {_clean(p) for p in HOSTILE_PATHS} | {HOSTILE_ANON, "/bad/\\xff\\xfe"} <= paths
    assert "\\x1b[31m" in "".join(paths) and "\x1b" not in text  # control characters shown, not sent


def _unescaped_title(text: str) -> str:
    return html.unescape(re.search(r"<title>(.*?)</title>", text, re.S).group(1))


# --- the bands ----------------------------------------------------------------------------------------

def drawn_vmas(view, band) -> int:
    """VMAs the band draws: stretches between consecutive boundaries that hold a VMA (a fill
    not covered by a tree entry); a fold counts its VMAs."""
    eps = 1e-6
    cuts = sorted({0.0, *band.boundaries, view.total})
    fills = sorted(s for spans in band.fills.values() for s in spans)
    entries = [(m.x, m.x + m.w) for m in band.marks if m.shape == "entry"]
    folds = {it.x: it.last + 1 - it.first for it in view.items if it.folded}
    count = 0
    for a, b in zip(cuts, cuts[1:]):
        if b - a < eps:
            continue
        if any(abs(a - x) < eps for x in folds):
            count += next(n for x, n in folds.items() if abs(a - x) < eps)
            continue
        filled = [(max(a, x), min(b, x + w)) for x, w in fills if x < b - eps and x + w > a + eps]
        if not filled:
            continue
        if all(any(e0 <= f0 + eps and f1 <= e1 + eps for e0, e1 in entries) for f0, f1 in filled):
            continue  # a tree entry, no VMA
        count += 1
    return count


def check_bands_count(report) -> None:
    view = band_view(report)
    for band in view.bands:
        assert not band.error
        assert drawn_vmas(view, band) == band.map_count, band.label


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_bands_show_each_designs_vma_count(sample):
    """The picture is the numbers: each band shows exactly its design's VMAs (guards only and
    +payload), folds included."""
    check_bands_count(analyze_source(str(sample)))


def test_folds_hold_only_file_mappings_every_design_keeps(renderer):
    view = band_view(renderer)
    ms = mappings(renderer)
    placed = renderer.layout_obj.placed
    folds = [it for it in view.items if it.folded]
    assert folds and view.folded_vmas == sum(it.last + 1 - it.first for it in folds)
    for it in folds:
        run = range(it.first, it.last + 1)
        assert placed[it.first].category == placed[it.last].category == "file"
        assert all(set(ms[k]["designs"].values()) == {"vma"} == set(ms[k]["designs_with_payload"].values())
                   for k in run)
        assert not any(placed[k].category != "file" and placed[k + 1].category != "file" for k in run[:-1])
    assert f"{view.folded_vmas:,} VMAs folded into {view.folds:,} blocks" in render_html(renderer)


def test_axis_is_exact_in_integers(renderer_page):
    """The script rebuilds every item's position from the widths; integer units make that
    exact (what the script computes is checked in the browser test)."""
    data = data_of(Page(renderer_page))
    x = 0
    for k, code in enumerate(data["axis"]):
        if code & 1 and k:
            x += data["gap"]
        x += code >> 1
    assert x == data["total"] and data["gap"] == GAP * QUANTUM
    assert 0 <= data["zoom"][0] < data["zoom"][1] <= data["total"]
    assert len(data["axis"]) - len(data["folds"]) + sum(b + 1 - a for a, b in data["folds"]) == len(data["rows"])


# --- numbers, provenance, policy ---------------------------------------------------------------------

def test_numbers_say_how_they_were_obtained(renderer, renderer_page):
    text = renderer_page
    for label, figs in (("pte", renderer.designs["pte"]), ("tree +payload", renderer.designs_with_payload["tree"])):
        assert f"<b>{figs.map_count:,}</b> VMAs" in text  # band label
        assert f"{figs.map_count:,}" in text
    assert "predicted (model)" in text and "counted in the input" in text
    assert "none was measured" in text and "sparsemm reproduce TARGET --html FILE" in text
    # The guard policy used, with the values of the report's policy.
    pol = renderer.policy
    section = text[text.index('id="policy"'):text.index('id="mappings"')]
    assert f"{pol['max_guard_bytes'] // 1024} KiB" in section and "1 GiB" in section
    assert f"{renderer.guards:,} ({renderer.sandwiches:,} sandwiched" in section


def test_strict_policy_is_named():
    from sparsemm.analyze.guards import GuardPolicy

    r = analyze(parse_maps(RENDERER.read_text()), GuardPolicy.strict(), source="r.maps")
    text = render_html(r)
    assert "the strict rule" in text and "rw-p" in text


# --- the CLI -----------------------------------------------------------------------------------------

def test_cli_html(tmp_path):
    out = tmp_path / "r.html"
    cp = run_cli("analyze", str(MAPS / "python311_glibc236_200threads.maps"), "--html", str(out), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["html"] == str(out) and out.stat().st_size > 10_000
    check_self_contained(out.read_text())
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize("args, needle", [
    (["DIR", "--html", "OUT"], "--html reports one process"),
    (["FILE", "--html", "/nonexistent/dir/x.html"], "no directory"),
    (["FILE", "--html", "DIR"], "is a directory"),
])
def test_cli_html_errors_are_one_line(tmp_path, args, needle):
    sample = str(MAPS / "python311_glibc236_200threads.maps")
    args = [{"DIR": str(MAPS), "FILE": sample, "OUT": str(tmp_path / "x.html")}.get(a, a) for a in args]
    args = [str(tmp_path) if a == str(MAPS) and i > 0 else a for i, a in enumerate(args)]
    cp = run_cli("analyze", *args)
    assert cp.returncode == 2, cp.stdout
    assert needle in cp.stderr and len(cp.stderr.strip().splitlines()) == 1 and "Traceback" not in cp.stderr


@needs_guards
def test_reproduce_html_has_the_measurements(tmp_path):
    """``reproduce --html``: the page sets what the kernel showed beside each prediction,
    with the method of each figure, the same figures the JSON gives."""
    out = tmp_path / "m.html"
    cp = run_cli("reproduce", str(MAPS / "python311_glibc236_200threads.maps"), "--json", "--html", str(out))
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    text = out.read_text()
    check_self_contained(text)
    assert "none was measured" not in text
    section = text[text.index("<h3>Measured on the kernel</h3>"):text.index('id="policy"')]
    for rep in doc["reproductions"]:
        assert f"design {rep['design']} on the kernel" in section
        for row in rep["rows"]:
            cells = f"<td>{row['label']}</td><td class=\"num\">{'n/a' if row['predicted'] is None else format(row['predicted'], ',')}</td>"
            assert cells in section, row["label"]
            if row["measured"] is not None:
                assert f'<td class="num">{row["measured"]:,}</td>' in section
            how = row["note"] if row["verdict"] == "dropped" else row["method"]
            assert html.escape(how) in section
    vma = next(r for r in doc["reproductions"] if r["design"] == "vma")
    vmas = next(r for r in vma["rows"] if r["key"] == "arena_vmas")
    assert f"vma: {vmas['measured']:,} VMAs (as predicted)" in text  # the summary's sentence


def test_a_design_that_failed_and_a_one_vma_map(tmp_path):
    """A design that could not run shows as n/a with its error (escaped), in the page and the
    plot; a map of one VMA still makes a page."""
    from sparsemm.analyze.plot import plot_report
    from sparsemm.analyze.report import DesignFigures

    r = analyze(parse_maps(f"{BASE:x}-{BASE + 4 * P:x} rw-p 00000000 00:00 0\n"), source="one.maps")
    text = render_html(r)
    check_self_contained(text)
    check_table(r, text)
    r.designs["tree"] = DesignFigures("tree", error="<b>boom</b> & co")
    text = render_html(r)
    check_self_contained(text)
    assert "&lt;b&gt;boom&lt;/b&gt; &amp; co" in text and "<b>boom</b>" not in text
    assert "tree &#183; n/a" in text
    plot_report(r, str(tmp_path / "p.png"))
