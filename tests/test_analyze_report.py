"""sparsemm analyze on the three sample maps: the rebuild, the per-design report, JSON, plot, CLI.

Scenario tests. The key claim: rebuilt under the vma design (guards as PROT_NONE VMAs),
the layout has exactly the original's VMAs, so every other design's count is a
prediction about the same process. The kernel tests build the layouts for real.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsemm.analyze.guards import GuardPolicy, find_guards
from sparsemm.analyze.maps import load, parse_maps
from sparsemm.analyze.rebuild import LayoutError, build_layout
from sparsemm.analyze.report import SCHEMA, analyze
from sparsemm.opscript.designs import run_design
from sparsemm.opscript.script import parse_script
from sparsemm.workloads import to_vma_design

from conftest import needs_guards

MAPS = Path(__file__).resolve().parent / "data" / "maps"
SAMPLES = sorted(MAPS.glob("*.maps"))
SAMPLE_IDS = [p.stem for p in SAMPLES]

# The wiring into sparsemm.cli is the integrator's: until then drive add_parsers directly.
RUNNER = """
import sys
from sparsemm._options import Parser
from sparsemm.analyze.cli import add_parsers
p = Parser(prog="sparsemm"); sub = p.add_subparsers(dest="command", required=True)
add_parsers(sub)
a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))
"""


def run_cmd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER, *args], input=stdin, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module", params=SAMPLES, ids=SAMPLE_IDS)
def report(request):
    entries = load(str(request.param))
    return analyze(entries, source=request.param.name)


def test_three_samples_present():
    assert len(SAMPLES) == 3


def test_vma_rebuild_equals_original(report):
    vma = report.designs["vma"]
    assert not vma.error
    assert vma.vmas == report.vmas  # no residual difference on these maps
    assert vma.failed_ops == 0
    assert report.vma_matches_original


def test_pte_fewer_than_vma_and_matches_formula(report):
    pte, vma = report.designs["pte"], report.designs["vma"]
    assert pte.failed_ops == 0
    assert pte.vmas < vma.vmas
    # find_guards' union-find count and the model's merges agree
    assert pte.vmas == report.formula["pte"]
    assert pte.saved_vmas == vma.map_count - pte.map_count > 0
    assert pte.saved_bytes > 0


def test_decommitted_payload_as_markers_is_the_second_set_of_counts(report):
    """Guards only, and guards plus the decommitted payload as markers: the model's counts
    equal find_guards' formula in both; the payload only ever lowers the counts; a map
    without payload has one set of figures."""
    for d in ("pte", "tree"):
        f = report.designs_with_payload[d]
        assert not f.error and f.failed_ops == 0
        assert f.vmas == report.formula[f"{d}_with_payload"]
        assert f.map_count <= report.designs[d].map_count
    assert report.designs_with_payload["vma"].vmas == report.vmas  # the payload rebuild is faithful too
    if report.payload:
        assert report.designs_with_payload["pte"].map_count < report.designs["pte"].map_count
        assert report.layout_payload_obj is not report.layout_obj
    else:
        assert report.designs_with_payload is report.designs


def test_tree_between_pte_and_vma(report):
    tree = report.designs["tree"]
    if tree.error:
        pytest.skip(f"model: {tree.error}")
    assert report.designs["pte"].vmas <= tree.vmas <= report.designs["vma"].vmas
    assert tree.vmas == report.formula["tree"]


def test_headroom(report):
    for d in report.designs.values():
        if d.error:
            continue
        assert d.headroom_vmas == report.max_map_count - d.map_count
        assert not d.hits_max_map_count


def test_json_schema(report):
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["schema"] == SCHEMA
    for key in ("source", "input", "maps_lines", "vmas", "max_map_count", "headroom_vmas", "guards",
                "formula", "layout", "designs", "designs_with_payload", "rebuilt_vmas",
                "vma_matches_original", "policy", "warnings", "seconds"):
        assert key in doc
    assert "mappings" not in doc  # only on request
    assert set(doc["guards"]) == {"guards", "sandwiches", "one_sided", "reservations",
                                  "isolated_prot_none", "guard_bytes", "decommitted_payload",
                                  "decommitted_payload_bytes", "existing_markers", "existing_marker_bytes",
                                  "vmas_with_markers"}
    assert doc["guards"]["existing_markers"] is None  # a maps file cannot show markers
    assert set(doc["formula"]) == {"pte", "tree", "pte_with_payload", "tree_with_payload"}
    assert set(doc["designs"]) == set(doc["designs_with_payload"]) == {"vma", "pte", "tree"}
    assert doc["rebuilt_vmas"] == doc["vmas"] and doc["warnings"] == []
    for d in [*doc["designs"].values(), *doc["designs_with_payload"].values()]:
        for key in ("design", "vmas", "map_count", "guard_entries", "anon_vmas", "anon_vma_chains",
                    "maple_nodes", "page_table_pages", "bytes", "total_bytes", "saved_vmas", "saved_bytes",
                    "headroom_vmas", "headroom_pct", "hits_max_map_count", "failed_ops", "error"):
            assert key in d
        if not d["error"]:
            assert set(d["bytes"]) == {"vm_area_struct", "anon_vma", "anon_vma_chain", "maple_node",
                                       "page_tables"}
            assert sum(d["bytes"].values()) == d["total_bytes"]


def test_layout_keeps_addresses_modulo_granule():
    entries = load(str(MAPS / "chromium150_renderer_heavy_default.maps"))
    lay = build_layout(entries, find_guards(entries))
    assert lay.granule == 1 << 30
    for p in lay.placed:
        assert (p.at * 4096) % lay.granule == p.entry.start % lay.granule
        assert p.npages * 4096 == p.entry.size
    for a, b in zip(lay.placed, lay.placed[1:]):
        gap = b.at - (a.at + a.npages)
        assert (gap == 0) == (b.entry.start == a.entry.end)


def test_adjacent_same_prot_vmas_stay_apart():
    # |rw|rw|---|---| : four VMAs the kernel would merge pairwise if rebuilt naively
    text = "\n".join([
        "7f0000000000-7f0000004000 rw-p 00000000 00:00 0",
        "7f0000004000-7f0000008000 rw-p 00000000 00:00 0",
        "7f0000008000-7f0000208000 ---p 00000000 00:00 0",
        "7f0000208000-7f0000408000 ---p 00000000 00:00 0",
    ])
    entries = parse_maps(text)
    lay = build_layout(entries, find_guards(entries))
    assert lay.separated == 2
    r = run_design(parse_script(to_vma_design(lay.script)), "pte")
    assert r.counts.vmas == 4


def test_sandwich_rebuilt_as_one_mapping_with_guard():
    text = "\n".join([
        "7f0000000000-7f0000001000 rw-p 00000000 00:00 0",
        "7f0000001000-7f0000002000 ---p 00000000 00:00 0",
        "7f0000002000-7f0000003000 rw-p 00000000 00:00 0",
    ])
    entries = parse_maps(text)
    doc = build_layout(entries, find_guards(entries)).script
    mmaps = [op for op in doc["ops"] if op["op"] == "mmap"]
    guards = [op for op in doc["ops"] if op.get("advice") == "guard_install"]
    assert len(mmaps) == 1 and mmaps[0]["len"] == 3 and mmaps[0]["prot"] == "rw"
    assert len(guards) == 1 and guards[0]["len"] == 1
    rep = analyze(entries)
    assert rep.designs["vma"].vmas == 3 and rep.designs["pte"].vmas == 1


def test_touch_modes():
    entries = load(str(MAPS / "python311_glibc236_200threads.maps"))
    cls = find_guards(entries)
    assert build_layout(entries, cls, touch="none").touched_pages == 0
    assert build_layout(entries, cls).touch == "first"  # maps have no Rss
    with pytest.raises(LayoutError):
        build_layout(entries, cls, touch="rss")


def test_policy_changes_guard_count():
    entries = load(str(MAPS / "chromium150_renderer_heavy_default.maps"))
    strict = analyze(entries, GuardPolicy.strict())
    loose = analyze(entries)
    assert strict.guards < loose.guards
    assert strict.designs["vma"].vmas == loose.designs["vma"].vmas == 1400


def test_plot_png_and_svg(tmp_path, report):
    from sparsemm.analyze.plot import plot_report

    png = plot_report(report, str(tmp_path / "a.png"))
    data = Path(png).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    svg = plot_report(report, str(tmp_path / "a.svg"))
    assert "<svg" in Path(svg).read_text()[:2000]
    with pytest.raises(ValueError):
        plot_report(report, str(tmp_path / "a.gif"))


# --- the CLI ----------------------------------------------------------------------------------

def test_cli_json_and_plot(tmp_path):
    out = tmp_path / "p.png"
    cp = run_cmd("analyze", str(SAMPLES[0]), "--json", "--plot", str(out))
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["schema"] == SCHEMA and doc["vma_matches_original"] is True
    assert out.stat().st_size > 0


def test_cli_table():
    cp = run_cmd("analyze", str(MAPS / "python311_glibc236_200threads.maps"))
    assert cp.returncode == 0, cp.stderr
    assert "VMAs (map_count)" in cp.stdout and "535" in cp.stdout and "139" in cp.stdout


def test_cli_stdin():
    text = (MAPS / "python311_glibc236_200threads.maps").read_text()
    cp = run_cmd("analyze", "-", "--json", stdin=text)
    assert cp.returncode == 0, cp.stderr
    assert json.loads(cp.stdout)["vmas"] == 535


@pytest.mark.parametrize("args, needle", [
    (["analyze", "/nonexistent/maps"], "no such file"),
    (["analyze", "999999999"], "no process"),
    (["analyze", "BADMAPS"], "BADMAPS"),
    (["analyze", "SAMPLE", "--plot", "x.gif"], ".png or .svg"),
    (["analyze", "SAMPLE", "--max-guard-kib=-1"], "argument --max-guard-kib"),
    (["reproduce", "SAMPLE", "--repeat", "0"], "--repeat"),
    (["analyze", "EMPTY"], "no mappings"),
])
def test_cli_errors_are_one_line(tmp_path, args, needle):
    bad = tmp_path / "BADMAPS"
    bad.write_text("00400000-00401000 r-xp 00000000 08:01 1 /bin/x\nthis is not a maps line\n")
    empty = tmp_path / "EMPTY"
    empty.write_text("")
    subst = {"BADMAPS": str(bad), "SAMPLE": str(SAMPLES[0]), "EMPTY": str(empty)}
    cp = run_cmd(*[subst.get(a, a) for a in args])
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsemm "), cp.stderr
    assert needle in lines[0]


def test_cli_dir_mode(tmp_path):
    """A directory is fleet mode (tests/test_fleet.py): its JSON summary totals the samples."""
    for p in SAMPLES:
        (tmp_path / p.name).write_text(p.read_text())
    (tmp_path / "broken.maps").write_text("garbage\n")
    cp = run_cmd("analyze", str(tmp_path), "--json", "--workers", "2")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["files"] == 4 and doc["analyzed"] == 3 and doc["failed_files"] == 1
    dist = doc["distributions"]
    assert dist["original"]["vmas"]["total"] == 1400 + 815 + 535
    assert dist["vma"]["map_count"]["total"] == 1400 + 815 + 535
    assert dist["pte"]["map_count"]["total"] == 958 + 711 + 139  # guards only
    assert doc["decommitted_payload"] == 119 + 10 + 0
    cp = run_cmd("analyze", str(tmp_path), "--workers", "1")
    assert cp.returncode == 0, cp.stderr
    assert "distributions" in cp.stdout and "broken.maps" in cp.stdout


# --- on the kernel ------------------------------------------------------------------------------

@needs_guards
@pytest.mark.kernel
@pytest.mark.parametrize("path", SAMPLES, ids=SAMPLE_IDS)
@pytest.mark.parametrize("design", ["vma", "pte"])
def test_reproduce_on_kernel_exact(path, design):
    from sparsemm.analyze.reproduce import reproduce

    rep = analyze(load(str(path)), source=path.name)
    r = reproduce(rep.layout_obj, design, repeat=1)
    assert r.measured.failed_ops == 0
    assert r.exact_vmas, r.rows
    assert r.exact_vmpte, r.rows
    assert r.memcg_ok is not False, r.rows  # kernel bytes within the charge granularity, if measured
    expected = rep.vmas if design == "vma" else rep.designs["pte"].vmas
    assert r.measured.values["arena_vmas"] == expected


@needs_guards
@pytest.mark.kernel
def test_cli_reproduce_json():
    cp = run_cmd("reproduce", str(MAPS / "python311_glibc236_200threads.maps"), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    assert [r["design"] for r in doc["reproductions"]] == ["vma", "pte"]
    assert all(r["exact_vmas"] for r in doc["reproductions"])


def test_analyze_shares_the_prefix_yet_gives_each_designs_own_run(monkeypatch):
    from sparsemm.analyze import report

    monkeypatch.setattr(report, "PARALLEL_MIN_OPS", 0)  # take the shared, forked path
    entries = load(str(MAPS / "python311_glibc236_200threads.maps"))
    for workers in (1, 2):
        rep = analyze(entries, workers=workers)
        doc = rep.layout_obj.script
        for d in ("vma", "pte", "tree"):
            alone = run_design(parse_script(doc), d)
            f = rep.designs[d]
            assert (f.vmas, f.map_count, f.total_bytes, f.page_table_pages, f.failed_ops) == (
                alone.counts.vmas, alone.cost.map_count, alone.cost.total,
                alone.counts.pte_tables + alone.counts.pmd_tables + alone.counts.pud_tables,
                alone.failed_ops), (workers, d)
