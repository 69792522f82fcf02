"""Benchmark of ``sparsemm analyze --html`` and ``--plot``: the bundled renderer (1,400 VMAs)
and a synthetic 65,530-VMA map (``bench_analyze.synthetic_map``, PartitionAlloc super pages).

Per map: ``render_html`` (wall and CPU time, page size), ``plot_report`` to PNG beside the
``plot_report`` of commit 9e261ac (before the band view had folds, a zoom and overview
columns; run alternately, same report), and, when ``/usr/bin/chromium`` exists, the page in
headless Chromium over DevTools (tests/cdp.py): load to ready, sort by size, filter by role,
the first text search (it builds the search text; includes the input's debounce), and
moving the zoom window (to the second frame painted).

Run: ``PYTHONPATH=src python3 bench/bench_html.py [--repeat N] [--quick] [--record]``. Prints the
results and writes ``out/bench/results_html.md``; ``--record`` writes ``bench/results_html.md``.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # cdp.py, the DevTools client the browser tests use

from _common import Run, parser  # noqa: E402
from bench_analyze import synthetic_map  # noqa: E402

from sparsemm.analyze.html import render_html  # noqa: E402
from sparsemm.analyze.maps import parse_maps  # noqa: E402
from sparsemm.analyze.plot import plot_report  # noqa: E402
from sparsemm.analyze.report import analyze  # noqa: E402

BASELINE = "9e261ac"  # main before analyze --html: plot.py without folds, zoom or overview columns
RENDERER = ROOT / "tests" / "data" / "maps" / "chromium150_renderer_heavy_default.maps"
CHROMIUM = "/usr/bin/chromium"
FULL, QUICK = "about 5 minutes", "about 40 s (the renderer only, 2 repeats)"
TITLE = "analyze --html and --plot: render time, page size, the page in Chromium (`bench/bench_html.py`)"


def baseline_plot():
    """``plot_report`` of the baseline commit, loaded from git (None without git)."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE}:src/sparsemm/analyze/plot.py"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "plot_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("plot_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.plot_report


def clock(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def stats(xs: list[float]) -> str:
    med = statistics.median(xs)
    if med < 1.0:
        return f"{med * 1000:.0f} ms (worst {max(xs) * 1000:.0f})"
    return f"{med:.2f} s (worst {max(xs):.2f})"


def browser_figures(path: Path, repeat: int) -> dict[str, list[float]]:
    from cdp import Browser

    out: dict[str, list[float]] = {k: [] for k in ("load", "sort", "role", "search", "zoom")}
    with Browser(width=1280, height=1800) as b:
        b.call("Page.enable")
        for _ in range(repeat):
            t = time.perf_counter()
            b.call("Page.navigate", url=path.as_uri())
            b.wait_event("Page.loadEventFired")
            b.events.clear()
            while b.evaluate("document.documentElement.dataset.ready") != "1":
                time.sleep(0.01)
            out["load"].append(time.perf_counter() - t)
            ms = b.evaluate("""(async () => {
                const $ = (id) => document.getElementById(id);
                const frame = () => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
                let t = performance.now();
                Array.from(document.querySelectorAll('#map-table thead th button')).find(x => x.textContent === 'size').click();
                const sort = performance.now() - t;
                const s = $('map-role');
                s.value = Array.from(s.options).find(o => o.text === 'guard').value;
                t = performance.now(); s.dispatchEvent(new Event('change')); const role = performance.now() - t;
                s.value = ''; s.dispatchEvent(new Event('change'));
                const before = $('map-status').textContent;
                t = performance.now();
                $('map-q').value = 'rw-p'; $('map-q').dispatchEvent(new Event('input'));
                while ($('map-status').textContent === before) await new Promise(r => setTimeout(r, 2));
                const search = performance.now() - t;
                await frame();
                t = performance.now(); $('zoom-next').click(); await frame(); const zoom = performance.now() - t;
                return [sort, role, search, zoom];
            })()""")
            for k, v in zip(("sort", "role", "search", "zoom"), ms):
                out[k].append(v / 1000)
    return out


def bench_map(name: str, text: str, repeat: int, old_plot, rows: list[str]) -> None:
    t0 = time.perf_counter()
    report = analyze(parse_maps(text, name), source=name)
    t_an = time.perf_counter() - t0
    html_w, html_c, size = [], [], 0
    for _ in range(repeat):
        holder = {}
        w, c = clock(lambda: holder.setdefault("t", render_html(report)))
        html_w.append(w)
        html_c.append(c)
        size = len(holder["t"].encode())
    tmp = Path(tempfile.mkdtemp())
    new_w, old_w = [], []
    for k in range(repeat):  # alternate: the same load for both
        new_w.append(clock(lambda: plot_report(report, str(tmp / "new.png")))[0])
        if old_plot is not None:
            old_w.append(clock(lambda: old_plot(report, str(tmp / "old.png")))[0])
    page = tmp / "page.html"
    page.write_text(render_html(report), encoding="utf-8")
    rows.append(f"| {name}: {report.vmas:,} VMAs (analyze took {t_an:.1f} s) | | |")
    rows.append(f"| render_html | wall {stats(html_w)}; CPU {stats(html_c)} | page {size / 1e6:.2f} MB |")
    ratio = ""
    if old_w:
        ratios = [n / o for n, o in zip(new_w, old_w)]
        ratio = f"new/old ratio median {statistics.median(ratios):.2f} (worst {max(ratios):.2f})"
    rows.append(f"| plot_report PNG, this branch | wall {stats(new_w)} | {ratio} |")
    if old_w:
        rows.append(f"| plot_report PNG, {BASELINE} | wall {stats(old_w)} | |")
    if os.access(CHROMIUM, os.X_OK):
        fig = browser_figures(page, repeat)
        labels = {"load": "Chromium: navigate to ready (parse, script, first table page)",
                  "sort": "Chromium: sort by size (whole table, first page drawn)",
                  "role": "Chromium: filter by role",
                  "search": "Chromium: first text search (builds the search text; debounce included)",
                  "zoom": "Chromium: move the zoom window (to the second frame painted)"}
        for k, label in labels.items():
            rows.append(f"| {label} | {stats(fig[k])} | |")
    else:
        rows.append(f"| Chromium | not measured: {CHROMIUM} absent | |")


def main(argv: list[str]) -> int:
    ap = parser(__doc__, FULL, QUICK)
    ap.add_argument("--repeat", type=int, default=5, help="runs per row (default 5; --quick 2)")
    args = ap.parse_args(argv)
    run = Run("html", args, argv, full=FULL, quick=QUICK)
    repeat = 2 if args.quick else args.repeat
    old_plot = baseline_plot()
    rows = ["| what | time: median (worst) | note |", "|---|---|---|"]
    bench_map(RENDERER.name, RENDERER.read_text(), repeat, old_plot, rows)
    if not args.quick:
        bench_map("synthetic-65530-superpages.maps", synthetic_map(), repeat, old_plot, rows)
    lines = run.header(TITLE, [
        f"{repeat} runs per row; the plot rows alternate this checkout's `plot_report` with the one of "
        f"{BASELINE} on the same report" + ("" if old_plot else f" ({BASELINE} is not in this "
                                           "checkout's history: not run)") + ". Chromium rows: one "
        f"browser, the page loaded {repeat} times, timings taken in the page (`performance.now`) "
        "except the load (DevTools round trips included)."])
    run.write("\n".join(lines + rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
