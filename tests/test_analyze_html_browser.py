"""``sparsemm analyze --html`` in a real headless Chromium (Debian's ``/usr/bin/chromium``),
driven over the DevTools protocol with the network cut off.

The page loads with no request but its own file, no console message, exception or dialog;
the script rebuilds the axis Python drew; the table sorts, filters and pages as the data
says; the zoom moves and reads a VMA; hostile names run nothing; and a screenshot shows the
band colours. Skipped with a reason where Chromium is not installed (``make test`` does not
install it: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

from sparsemm.analyze.bands import COLOURS, MARK_COLOURS
from sparsemm.analyze.html import PAGE_ROWS, render_html, write_html
from sparsemm.analyze.report import analyze_source, mappings

from cdp import CHROMIUM, Browser
from test_analyze_html import HOSTILE_PATHS, RENDERER, hostile_maps

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason=f"no headless browser: {CHROMIUM} is absent (apt-get install chromium)")

PROBLEMS = ("Runtime.exceptionThrown", "Page.javascriptDialogOpening")


def open_page(b: Browser, path: Path) -> None:
    for domain in ("Runtime", "Log", "Network", "Page"):
        b.call(f"{domain}.enable")
    b.call("Page.navigate", url=path.as_uri())
    b.wait_event("Page.loadEventFired")
    assert b.evaluate("document.documentElement.dataset.ready") == "1"


def check_clean(b: Browser, path: Path) -> None:
    """No request but the page's own file; no console message, log entry, exception or dialog."""
    urls = [e["params"]["request"]["url"] for e in b.events if e["method"] == "Network.requestWillBeSent"]
    assert urls == [path.as_uri()]
    assert not [e for e in b.events if e["method"] in PROBLEMS]
    assert not [e for e in b.events if e["method"] == "Runtime.consoleAPICalled"]
    assert not [e for e in b.events if e["method"] == "Log.entryAdded"
                and e["params"]["entry"]["level"] in ("error", "warning")]


def column(b: Browser, label: str) -> list[str]:
    """The visible page's cells of the column ``label``."""
    return b.evaluate(f"""(() => {{
        const k = Array.from(document.querySelectorAll('#map-table thead th')).findIndex(t => t.textContent === {label!r});
        return Array.from(document.querySelectorAll('#map-rows tr')).map(r => r.children[k].textContent);
    }})()""")


def click_header(b: Browser, label: str) -> None:
    b.evaluate(f"""Array.from(document.querySelectorAll('#map-table thead th button'))
                   .find(x => x.textContent === {label!r}).click()""")


def status(b: Browser) -> str:
    return b.evaluate("document.getElementById('map-status').textContent")


@pytest.fixture(scope="module")
def renderer():
    return analyze_source(str(RENDERER))


def test_renderer_page_in_chromium(tmp_path, renderer):
    path = tmp_path / "renderer.html"
    write_html(renderer, str(path))
    ms = mappings(renderer)
    n = len(ms)
    with Browser(width=1280, height=1800) as b:
        open_page(b, path)
        # The script placed every item where Python drew it (integer units, exact).
        assert b.evaluate("document.documentElement.dataset.axisTotal") == \
            str(b.evaluate("JSON.parse(document.getElementById('sparsemm-data').textContent).total"))
        # The first page, rewritten by the script, is what Python wrote before it ran.
        assert len(column(b, "#")) == PAGE_ROWS and column(b, "#")[:3] == ["1", "2", "3"]
        assert column(b, "address")[0] == f"{ms[0]['start']:x}-{ms[0]['end']:x}"
        assert status(b) == f"rows 1–{PAGE_ROWS} of {n:,}"

        # Sort by size: ascending, then descending (whole table, not only the page).
        click_header(b, "size")
        sizes = sorted(m["size"] for m in ms)
        first = column(b, "address")[0]
        assert int(first.split("-")[1], 16) - int(first.split("-")[0], 16) == sizes[0]
        click_header(b, "size")
        first = column(b, "address")[0]
        assert int(first.split("-")[1], 16) - int(first.split("-")[0], 16) == sizes[-1]
        assert b.evaluate("document.querySelector('#map-table th[aria-sort]').textContent") == "size"
        # Sort by mapping: the paths in order.
        click_header(b, "mapping")
        paths = column(b, "mapping")
        assert paths == sorted(paths) and paths[0] == min(m["path"] for m in ms)

        # Filter by role, then only what a design changes, then by text.
        b.evaluate("(() => { const s = document.getElementById('map-role');"
                   " s.value = Array.from(s.options).find(o => o.text === 'guard').value;"
                   " s.dispatchEvent(new Event('change')); })()")
        guards = sum(m["role"] == "guard" for m in ms)
        assert status(b) == f"rows 1–{min(PAGE_ROWS, guards)} of {guards:,} (filtered from {n:,})"
        assert set(column(b, "role")) == {"guard"}
        b.evaluate("(() => { const s = document.getElementById('map-role'); s.value = '';"
                   " s.dispatchEvent(new Event('change'));"
                   " const c = document.getElementById('map-changed'); c.checked = true;"
                   " c.dispatchEvent(new Event('change')); })()")
        changed = sum(set(m["designs"].values()) | set(m["designs_with_payload"].values()) != {"vma"} for m in ms)
        assert status(b).endswith(f"of {changed:,} (filtered from {n:,})")
        b.evaluate("(() => { const c = document.getElementById('map-changed'); c.checked = false;"
                   " c.dispatchEvent(new Event('change'));"
                   " const q = document.getElementById('map-q'); q.value = 'libc.so';"
                   " q.dispatchEvent(new Event('input')); })()")
        b.evaluate("new Promise(r => setTimeout(r, 300))")  # the input is debounced
        libc = sum("libc.so" in m["path"] for m in ms)
        assert libc and status(b) == f"rows 1–{libc} of {libc} (filtered from {n:,})"
        assert all("libc.so" in p for p in column(b, "mapping"))

        # Pages.
        b.evaluate("(() => { const q = document.getElementById('map-q'); q.value = '';"
                   " q.dispatchEvent(new Event('input')); })()")
        b.evaluate("new Promise(r => setTimeout(r, 300))")
        click_header(b, "#")
        b.evaluate("document.getElementById('page-next').click()")
        assert column(b, "#")[0] == str(PAGE_ROWS + 1)
        b.evaluate("document.getElementById('page-last').click()")
        assert column(b, "#")[-1] == str(n)

        # The zoom: the next window, then a VMA read under the mouse.
        before = b.evaluate("document.querySelector('#zoom svg').getAttribute('viewBox')")
        b.evaluate("document.getElementById('zoom-next').click()")
        after = b.evaluate("document.querySelector('#zoom svg').getAttribute('viewBox')")
        assert before != after and after.split()[2] == before.split()[2]
        box = b.evaluate("(() => { const r = document.querySelectorAll('#zoom svg')[1].getBoundingClientRect();"
                         " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        b.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0], y=box[1])
        info = b.evaluate("document.getElementById('zoom-info').textContent")
        assert info.startswith("#") or info.startswith("folded")
        if info.startswith("#"):
            i = int(info[1:].split()[0]) - 1
            assert f"{ms[i]['start']:x}" in info and ms[i]["role"] in info
        check_clean(b, path)


def test_screenshot_shows_the_figures(tmp_path, renderer):
    """A screenshot of the top of the page holds the band colours: anonymous memory, guards
    as VMAs and as markers, and the bars' blue."""
    import matplotlib.image as mpimg

    path = tmp_path / "renderer.html"
    write_html(renderer, str(path))
    with Browser(width=1280, height=1100) as b:
        open_page(b, path)
        png = base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"])
        check_clean(b, path)
    (tmp_path / "shot.png").write_bytes(png)
    img = mpimg.imread(io.BytesIO(png), format="png")
    assert img.shape[0] == 1100 and img.shape[1] == 1280
    pixels = {tuple(int(round(c * 255)) for c in px[:3]) for px in img[::2, ::2].reshape(-1, img.shape[2])}

    def rgb(h: str) -> tuple[int, int, int]:
        return int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16)

    for colour in (COLOURS["rw"], COLOURS["guard"], MARK_COLOURS[("marker", "guard")],
                   MARK_COLOURS[("entry", "guard")], COLOURS["payload"], "#4c72b0"):
        assert rgb(colour) in pixels, colour


def test_hostile_names_run_nothing(tmp_path):
    name = 'evil<script>alert(5)<img src=x onerror=window.__pwned=4>.maps'
    f = tmp_path / name
    f.write_text(hostile_maps())
    r = analyze_source(str(f))
    path = tmp_path / "hostile.html"
    path.write_text(render_html(r), encoding="utf-8")
    with Browser() as b:
        open_page(b, path)
        assert b.evaluate("typeof window.__pwned") == "undefined"
        assert b.evaluate("document.querySelectorAll('img, link, iframe, object, embed').length") == 0
        assert b.evaluate("document.title") == f"sparsemm analyze: {name}"
        assert b.evaluate("document.querySelector('h1').textContent") == name
        cells = column(b, "mapping")
        for hostile in HOSTILE_PATHS[:3]:
            assert hostile in cells
        # Filter on markup: the text matches, nothing is parsed.
        b.evaluate("(() => { const q = document.getElementById('map-q'); q.value = '</script><img';"
                   " q.dispatchEvent(new Event('input')); })()")
        b.evaluate("new Promise(r => setTimeout(r, 300))")
        assert set(column(b, "mapping")) == {HOSTILE_PATHS[0]}
        # Pointing at every VMA in the zoom writes its path as text.
        b.evaluate("document.getElementById('zoom-n').value = '400';"
                   "document.getElementById('zoom-n').dispatchEvent(new Event('change'))")
        r_ = b.evaluate("(() => { const r = document.querySelectorAll('#zoom svg')[0].getBoundingClientRect();"
                        " return [r.left, r.top + r.height / 2, r.width]; })()")
        for k in range(40):
            b.call("Input.dispatchMouseEvent", type="mouseMoved", x=r_[0] + r_[2] * (k + 0.5) / 40, y=r_[1])
        assert b.evaluate("typeof window.__pwned") == "undefined"
        assert b.evaluate("document.getElementById('zoom-info').children.length") == 0
        check_clean(b, path)
