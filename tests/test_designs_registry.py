"""The guard-design registry: one more design is one registered class, and every tool sees it.

``RefuseDesign`` (defined here, registered only inside the ``refuse`` fixture) refuses every
guard install with EINVAL and removes nothing. Registered, it must flow through the model,
``sparsemm run``/``designs`` (text and JSON), ``analyze --json`` and the plot, with no other
file edited; a kernel-only command (``reproduce``) must refuse it.
"""

from __future__ import annotations

import errno
import json

import matplotlib
import pytest

from sparsemm import abi, cli
from sparsemm.model import AddressSpace, designs
from sparsemm.model._util import kerr
from sparsemm.model.designs import GuardDesign, GuardShape, KernelForm

from conftest import ROOT, script_doc

MAPS = ROOT / "tests" / "data" / "maps" / "python311_glibc236_200threads.maps"
LADDER = [{"op": "mmap", "at": 0, "len": 16, "prot": "rw"},
          {"op": "touch", "at": 0, "len": 16, "access": "write"},
          {"op": "madvise", "at": 4, "advice": "guard_install"},
          {"op": "madvise", "at": 4, "advice": "guard_remove"},
          {"op": "snapshot"}]


class RefuseDesign(GuardDesign):
    """A design that has no guards: MADV_GUARD_INSTALL is EINVAL, remove has nothing to do."""

    name = "refuse"
    order = 25
    kernel_form = KernelForm.NONE
    guards_count_toward_max_map_count = False
    guard_shape = GuardShape.MARKER
    description = "test design: every guard install is refused (EINVAL)"
    __slots__ = ()

    def install(self, mm, vma, start, end):
        raise kerr(errno.EINVAL, "guard install: this design has no guards")

    def remove(self, mm, vma, start, end):
        return end


@pytest.fixture
def refuse():
    designs.register(RefuseDesign)
    try:
        yield "refuse"
    finally:
        designs.unregister("refuse")
    assert "refuse" not in designs.names()


def test_builtin_designs_and_their_metadata():
    assert designs.names() == ("vma", "pte", "tree")
    assert designs.baseline() == "vma" and designs.kernel_design() == "pte"
    assert designs.reproducible() == ("vma", "pte")
    counts = {n: designs.design_class(n).guards_count_toward_max_map_count for n in designs.names()}
    assert counts == {"vma": True, "pte": False, "tree": False}
    assert all(designs.design_class(n).description for n in designs.names())


def test_register_refuses_bad_or_clashing_designs(refuse):
    with pytest.raises(ValueError, match="already registered"):
        designs.register(RefuseDesign)

    class Second(RefuseDesign):
        name = "second"
        kernel_form = KernelForm.NATIVE  # the kernel already has pte

    with pytest.raises(ValueError, match="native design"):
        designs.register(Second)

    class Untyped(RefuseDesign):
        name = "untyped"
        order = "first"

    with pytest.raises(ValueError, match="order must be a int"):
        designs.register(Untyped)
    with pytest.raises(ValueError, match="unknown guard design 'nope' .*refuse"):
        designs.make_design("nope")


def test_a_registered_design_runs_in_the_model(refuse):
    mm = AddressSpace(guard_design=refuse)
    mm.mmap(abi.ARENA_BASE, 4 * abi.PAGE_SIZE, abi.PROT_READ | abi.PROT_WRITE,
            abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED)
    with pytest.raises(OSError) as info:
        mm.madvise(abi.ARENA_BASE, abi.PAGE_SIZE, abi.MADV_GUARD_INSTALL)
    assert info.value.errno == errno.EINVAL
    mm.madvise(abi.ARENA_BASE, abi.PAGE_SIZE, abi.MADV_GUARD_REMOVE)
    mm.check()
    assert mm.fork().guard_design == refuse


def test_a_registered_design_flows_through_run_and_designs(refuse, tmp_path, capsys):
    path = tmp_path / "ladder.json"
    path.write_text(script_doc(LADDER))
    assert cli.main(["run", str(path), "--backend", "model", "--design", refuse]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["ret"] for r in records[:4]] == ["ok", "ok", "EINVAL", "ok"]
    assert records[-1]["value"]["pages"] == "P" * 16

    assert cli.main(["designs", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["vma", "pte", "refuse", "tree"]  # report order: 25 sits between pte (20) and tree (30)
    assert doc["refuse"]["failed_ops"] == 1 and doc["refuse"]["vmas"] == 1

    assert cli.main(["designs", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["vma", "pte", "refuse", "tree"]
    assert f"refuse: {RefuseDesign.description}" in text

    assert cli.main(["designs", str(path), "--design", refuse, "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["refuse"]
    # The kernel backend has only its own design.
    assert cli.main(["run", str(path), "--backend", "kernel", "--design", refuse]) == 2
    assert "runs on the model" in capsys.readouterr().err


def test_a_registered_design_flows_through_analyze_and_the_plot(refuse, tmp_path, capsys):
    plot = tmp_path / "designs.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # keep text as text in the SVG
        assert cli.main(["analyze", str(MAPS), "--json", "--plot", str(plot)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["designs"]) == ["vma", "pte", "refuse", "tree"]
    fig = doc["designs"][refuse]
    assert not fig["error"] and fig["failed_ops"] == doc["guards"]["guards"] > 0  # each install refused
    # The rebuild maps each guard inside the memory around it (as markers need), so with
    # every guard refused the VMAs are pte's, and there are no markers, so fewer page tables.
    assert fig["map_count"] == doc["designs"]["pte"]["map_count"] < doc["vmas"]
    assert fig["page_table_pages"] <= doc["designs"]["pte"]["page_table_pages"]
    assert fig["saved_vmas"] == doc["designs"]["vma"]["map_count"] - fig["map_count"]
    svg = plot.read_text()  # one band per design, labelled with its name and VMAs
    assert ">refuse" in svg.replace("\n", "")
    # the pte band and the refuse band, each in the overview and in the zoom panel
    assert svg.count(f"{fig['map_count']:,} VMAs") == 4


def test_kernel_only_commands_refuse_a_model_only_design(refuse, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["reproduce", str(MAPS), "--design", refuse])
    assert info.value.code == 2
    assert "invalid choice: 'refuse'" in capsys.readouterr().err
