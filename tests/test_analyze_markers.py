"""Guard markers a process already holds, in find_guards, the rebuild and every design; the
``mappings`` view and the decommitted-payload role on the bundled Chromium renderer.

Pictures: one letter per page run, addresses growing to the right; ``M`` marks marker pages
inside a VMA (invisible in maps, read from the page tables).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsemm import abi
from sparsemm.analyze.guards import MarkerRun, assign_markers, find_guards, vma_pieces
from sparsemm.analyze.maps import parse_maps, parse_smaps
from sparsemm.analyze.rebuild import build_layout
from sparsemm.analyze.report import analyze, mappings
from sparsemm.opscript.designs import run_design
from sparsemm.opscript.script import parse_script

from conftest import run_cli

P = abi.PAGE_SIZE
BASE = 0x7F0000000000
MAPS = Path(__file__).resolve().parent / "data" / "maps"
RENDERER = MAPS / "chromium150_renderer_heavy_default.maps"


def maps(*vmas) -> str:
    """``(pages, perms[, path])`` laid end to end from BASE."""
    out, addr = [], BASE
    for pages, perms, *path in vmas:
        out.append(f"{addr:x}-{addr + pages * P:x} {perms} 00000000 00:00 0 {path[0] if path else ''}")
        addr += pages * P
    return "\n".join(out) + "\n"


def at(page: int, npages: int = 1) -> tuple[int, int]:
    return BASE + page * P, BASE + (page + npages) * P


# --- find_guards ---------------------------------------------------------------------------------

def test_runs_are_split_at_vma_boundaries():
    entries = parse_maps(maps((8, "rw-p"), (8, "r--p")))
    runs = assign_markers(entries, [at(6, 4)])
    assert runs == [MarkerRun(*at(6, 2), 0), MarkerRun(*at(8, 2), 1)]


@pytest.mark.parametrize("runs, needle", [
    ([at(20)], "not inside any VMA"),
    ([(BASE + 1, BASE + P)], "page-aligned"),
    ([at(4), at(3)], "overlaps or precedes"),
    ([at(4, 0)], "empty"),
])
def test_bad_runs_are_one_line_errors(runs, needle):
    entries = parse_maps(maps((8, "rw-p")))
    with pytest.raises(ValueError, match=needle):
        find_guards(entries, markers=runs)


@pytest.mark.parametrize("runs, pieces", [
    ([at(3)], 2),  # rw MMM rw: one interior run -> two VMAs under tree
    ([at(0)], 1),  # a run at the start: one VMA left
    ([at(7)], 1),
    ([at(0, 8)], 0),  # the whole VMA: it becomes an entry
    ([at(1), at(3), at(6)], 4),
])
def test_tree_formula_counts_the_pieces_markers_leave(runs, pieces):
    entries = parse_maps(maps((8, "rw-p")))
    c = find_guards(entries, markers=runs)
    assert vma_pieces(entries[0], c.markers) == pieces
    s = c.summary
    assert (s.existing_markers, s.vmas_with_markers) == (len(runs), 1)
    assert s.vmas_if_markers == 1  # pte: markers stay markers
    assert s.vmas_if_tree == pieces == s.vmas_if_tree_with_payload
    assert c.markers_known


def test_markers_unknown_vs_none():
    entries = parse_maps(maps((8, "rw-p")))
    assert not find_guards(entries).markers_known
    c = find_guards(entries, markers=[])
    assert c.markers_known and c.summary.existing_markers == 0


# --- the designs on the model -----------------------------------------------------------------------

LAYOUT = maps((16, "rw-p"), (1, "---p"), (16, "rw-p"),  # a sandwich (a guard VMA)
              (8, "r--p", "/usr/lib/libx.so"),  # a file, markers inside
              (4, "rw-p"), (512, "---p"))  # anon with a run at its top edge, against a reservation
MARKERS = [at(5), at(9, 2),  # inside the sandwich's lower neighbour
           at(35, 2),  # inside the file VMA
           at(44)]  # the last page of the anon VMA, touching the reservation


def test_every_design_counts_the_existing_markers():
    entries = parse_maps(LAYOUT)
    r = analyze(entries, markers=MARKERS, touch="first")
    assert (r.vmas, r.guards, r.existing_markers) == (6, 1, 4)
    # pte: the sandwich merges (-2), the markers stay markers.
    assert r.designs["pte"].vmas == r.formula["pte"] == 4
    # vma: 2 interior runs (+4) and one (+2) inside VMAs, one at an edge (+1): 6 + 7.
    assert r.designs["vma"].vmas == 13
    # tree: the guard leaves (-1), each interior run splits its VMA (+1 x3), the edge run does not.
    assert r.designs["tree"].vmas == r.formula["tree"] == 8
    assert r.designs["tree"].guard_entries == 5
    # The rebuild as the process was: guards as PROT_NONE VMAs, markers as markers.
    assert r.rebuilt_vmas == 6 and r.vma_matches_original
    assert all(d.failed_ops == 0 for d in r.designs.values())


def test_an_edge_run_is_kept_apart_from_a_protnone_neighbour():
    """rw MMM | ---p : under vma the run becomes PROT_NONE next to a PROT_NONE VMA; the
    rebuild keeps them apart (as the original kept the two VMAs apart)."""
    entries = parse_maps(maps((4, "rw-p"), (512, "---p")))
    plain = build_layout(entries, find_guards(entries))
    marked = build_layout(entries, find_guards(entries, markers=[at(3)]))
    assert plain.separated == 0 and marked.separated == 1
    vma = run_design(parse_script(marked.script), "vma")
    assert vma.counts.vmas == 3


def test_touches_skip_the_marker_pages():
    smaps = parse_smaps("".join(
        f"{s:x}-{s + 8 * P:x} rw-p 00000000 00:00 0 \nSize: 32 kB\nRss: 16 kB\nAnonymous: 16 kB\nVmFlags: rd wr mr mw me ac gu\n"
        for s in (BASE,)))
    lay = build_layout(smaps, find_guards(smaps, markers=[at(0, 2), at(3)]))
    touches = [(op["at"], op["len"]) for op in lay.script["ops"] if op["op"] == "touch"]
    first = lay.placed[0].at
    # Rss 4 pages: the first four that hold no marker (2, 4, 5, 6).
    assert touches == [(first + 2, 1), (first + 4, 3)]
    installs = [(op["at"], op["len"]) for op in lay.script["ops"] if op.get("advice") == "guard_install"]
    assert installs == [(first, 2), (first + 3, 1)]
    assert lay.existing_markers == 2


# --- decommitted payload and mappings on the renderer --------------------------------------------------

@pytest.fixture(scope="module")
def renderer():
    return analyze(parse_maps(RENDERER.read_text(), RENDERER.name), source=RENDERER.name)


def test_renderer_roles_answer_which_guards(renderer):
    rows = mappings(renderer)
    assert len(rows) == renderer.vmas == 1400
    by_role = {}
    for m in rows:
        by_role[m["role"]] = by_role.get(m["role"], 0) + 1
    assert by_role == {"guard": 225, "decommitted payload": 119, "reservation": 28, "kept": 1400 - 372}
    for m in rows:
        if m["role"] == "guard":
            assert m["perms"] == "---p" and m["size"] <= 64 * 1024
            assert m["designs"] == m["designs_with_payload"] == {"vma": "prot_none_vma", "pte": "marker",
                                                                  "tree": "tree_entry"}
        elif m["role"] == "decommitted payload":
            assert m["size"] > 64 * 1024 and m["reason"] == "cheaper as markers"
            assert m["designs"] == {"vma": "vma", "pte": "vma", "tree": "vma"}
            assert m["designs_with_payload"] == {"vma": "prot_none_vma", "pte": "marker", "tree": "tree_entry"}
        else:
            assert m["designs"]["vma"] == m["designs"]["tree"] == "vma"
    # pte: a marker joins the VMA below it (side below/both) and above it (above/both), and
    # those are the VMAs called "merged"; the VMAs left are the design's count, guards only
    # and with the payload.
    for key, design in (("designs", renderer.designs), ("designs_with_payload", renderer.designs_with_payload)):
        joined = set()
        for k, m in enumerate(rows):
            if m[key]["pte"] == "marker":
                if m["side"] in ("below", "both"):
                    joined.add(k - 1)
                    assert rows[k - 1][key]["pte"] == "merged"
                if m["side"] in ("above", "both"):
                    joined.add(k)
                    assert rows[k + 1][key]["pte"] == "merged"
        assert len(rows) - len(joined) == design["pte"].vmas, key
        assert sum(m[key]["pte"] == "merged" for m in rows) > 0
    assert sum(m["markers"] != [] for m in rows) == 0  # a maps file shows no markers


def test_renderer_both_counts(renderer):
    assert (renderer.guards, renderer.payload) == (225, 119)
    assert renderer.designs["pte"].map_count == 958
    assert renderer.designs_with_payload["pte"].map_count == 722
    assert renderer.designs["tree"].vmas == 1175 and renderer.designs_with_payload["tree"].vmas == 1056


def test_cli_mappings_text_and_json():
    cp = run_cli("analyze", str(RENDERER), "--mappings")
    assert cp.returncode == 0, cp.stderr
    assert "pte +payload" in cp.stdout and "decommitted payload (cheaper as markers" in cp.stdout
    assert cp.stdout.count("prot_none_vma") >= 225
    doc = json.loads(run_cli("analyze", str(RENDERER), "--json", "--mappings").stdout)
    assert doc["schema"] == "sparsemm.analyze/3"
    assert len(doc["mappings"]) == 1400
    assert doc["guards"]["guards"] == 225 and doc["guards"]["decommitted_payload"] == 119
    assert doc["designs"]["pte"]["map_count"] == 958
    assert doc["designs_with_payload"]["pte"]["map_count"] == 722
    first = doc["mappings"][0]
    assert set(first) == {"start", "end", "size", "perms", "kind", "path", "role", "reason", "side", "markers",
                          "designs", "designs_with_payload"}
    cp = run_cli("analyze", str(RENDERER))
    assert "225 guards" in cp.stdout and "119 ranges of decommitted payload" in cp.stdout
    assert "tree +payload" in cp.stdout


def test_plot_shows_the_payload(tmp_path, renderer):
    from sparsemm.analyze.plot import COLOURS, plot_report

    svg = Path(plot_report(renderer, str(tmp_path / "r.svg"))).read_text()
    assert "+payload" in svg and COLOURS["payload"].lstrip("#") in svg.lower()


def test_shared_prefix_runs_equal_runs_alone(monkeypatch):
    """Large layouts run both rebuilds (guards only, +payload) from one shared prefix in
    forked children; each result equals the design run alone on its own script."""
    from sparsemm.analyze import report as report_mod

    monkeypatch.setattr(report_mod, "PARALLEL_MIN_OPS", 0)  # take the shared, forked path
    entries = parse_maps(RENDERER.read_text())
    for workers in (1, 2):
        rep = analyze(entries, workers=workers)
        for figs, lay in ((rep.designs, rep.layout_obj), (rep.designs_with_payload, rep.layout_payload_obj)):
            for d in ("vma", "pte", "tree"):
                alone = run_design(parse_script(lay.script), d)
                f = figs[d]
                assert (f.vmas, f.map_count, f.total_bytes, f.page_table_pages, f.failed_ops) == (
                    alone.counts.vmas, alone.cost.map_count, alone.cost.total,
                    alone.counts.pte_tables + alone.counts.pmd_tables + alone.counts.pud_tables,
                    alone.failed_ops), (workers, d, lay.with_payload)


def test_small_layouts_run_the_second_rebuild_beside_the_first():
    """Below PARALLEL_MIN_OPS, with two workers the +payload designs run in children
    meanwhile; the figures are those of one worker running everything in turn."""
    entries = parse_maps(RENDERER.read_text())
    one, two = analyze(entries, workers=1), analyze(entries, workers=2)
    for a, b in ((one.designs, two.designs), (one.designs_with_payload, two.designs_with_payload)):
        assert {d: f.as_dict() for d, f in a.items()} == {d: f.as_dict() for d, f in b.items()}
