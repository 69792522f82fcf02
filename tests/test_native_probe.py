"""``sparsemm probe`` and ``native.probe``: the same answer every time, and an exit status.

Issue 16: the probe looked for a VMA starting exactly at its test mapping, which
often merges with a neighbour, so ``smaps gu`` came out yes or no at random.
"""

from __future__ import annotations

import errno
import json

import pytest

from sparsemm import abi, cli
from sparsemm.native import libc, probe, procfs

from conftest import HAS_GUARDS, needs_guards, run_cli

P = abi.PAGE_SIZE
RW = abi.PROT_READ | abi.PROT_WRITE


def test_probe_gives_the_same_answer_every_time():
    first = probe.probe()
    assert all(probe.probe() == first for _ in range(30))
    assert probe.features() == first
    assert first.guard_regions == libc.guard_regions_supported()


@needs_guards
def test_smaps_flags_come_from_the_vma_containing_the_address():
    # Two adjacent anonymous mappings merge into one VMA: nothing starts at the second.
    base = libc.mmap(0, 4 * P, RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    try:
        libc.munmap(base + 2 * P, 2 * P)
        second = libc.mmap(base + 2 * P, 2 * P, RW,
                           abi.MAP_PRIVATE | abi.MAP_ANONYMOUS | abi.MAP_FIXED_NOREPLACE)
        assert second == base + 2 * P
        libc.madvise(second, P, abi.MADV_GUARD_INSTALL)
        starts = {e.start for e in procfs.read_smaps()}
        assert second not in starts  # merged with its neighbour
        assert "gu" in probe.vmflags_at(second)
        assert probe.vmflags_at(0) == ()
    finally:
        libc.munmap(base, 4 * P)


@needs_guards
def test_this_kernel_has_every_guard_feature():
    feats = probe.features()  # Linux 6.18 here: every feature the project relies on
    assert feats.pagemap_guard_bit and feats.file_guards and feats.smaps_gu
    assert feats.guard_mode == "markers" and feats.exit_status == probe.EXIT_MARKERS


def test_cli_probe_json_is_stable_and_its_exit_status_says_whether_markers_work():
    outs = [run_cli("probe", "--json") for _ in range(3)]
    docs = [json.loads(o.stdout) for o in outs]
    assert all(d == docs[0] for d in docs)
    want = 0 if HAS_GUARDS else 1
    assert [o.returncode for o in outs] == [want] * 3 and not outs[0].stderr
    doc = docs[0]
    assert doc["schema"] == "sparsemm.probe/1" and doc["exit_status"] == want
    assert doc["guard_mode"] == ("markers" if HAS_GUARDS else "prot_none")
    assert set(doc) == {"schema", "kernel", "guard_regions", "pagemap_guard_bit", "smaps_gu",
                        "file_guards", "guard_mode", "exit_status", "model_core"}
    assert doc["model_core"] in ("compiled", "pure-python", "mixed")
    text = run_cli("probe")
    assert text.returncode == want and "guard regions" in text.stdout


def test_cli_probe_exit_1_without_markers_and_2_when_it_cannot_probe(monkeypatch, capsys):
    monkeypatch.setattr(probe, "features",
                        lambda: probe.Features("6.1.0", False, False, False, False))
    assert cli.main(["probe"]) == probe.EXIT_FALLBACK
    assert "PROT_NONE fallback" in capsys.readouterr().out
    assert cli.main(["probe", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["guard_mode"] == "prot_none"

    def broken():
        raise OSError(errno.ENOMEM, "mmap: Cannot allocate memory")

    monkeypatch.setattr(probe, "features", broken)
    assert cli.main(["probe"]) == probe.EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "probe" in captured.err


def test_vma_at_finds_the_covering_vma_and_none_in_a_hole():
    base = libc.mmap(0, 3 * P, RW, abi.MAP_PRIVATE | abi.MAP_ANONYMOUS)
    try:
        libc.mprotect(base + P, P, abi.PROT_READ)
        assert procfs.vma_at(base + P + 7) == (base + P, base + 2 * P, "r--p")
        libc.munmap(base + 2 * P, P)
        assert procfs.vma_at(base + 2 * P) is None
    finally:
        libc.munmap(base, 2 * P)


@pytest.mark.parametrize("pid", ["self"])
def test_count_vmas_matches_the_maps_file(pid):
    assert abs(procfs.count_vmas(pid) - len(procfs.read_maps(pid))) <= 2
