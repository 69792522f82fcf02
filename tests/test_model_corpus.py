"""Scenario tier: every conformance script's recorded kernel records must come out of the model.

Each file under ``tests/conformance/`` carries an ``expect`` list recorded on Linux 6.18
(``sparsemm record``); the model must reproduce it exactly, with ``AddressSpace.check()``
passing after every op. Scripts still diverging are listed in ``DIVERGENT`` with the
reason, each documented in docs/divergences.md (the list is empty: aim to keep it so).
Scripts without ``expect`` yet are compared with a live kernel run instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsemm.native import libc
from sparsemm.opscript.compare import describe_difference
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import load_script

CORPUS = Path(__file__).resolve().parent / "conformance"
SCRIPTS = sorted(CORPUS.rglob("*.json"))

#: corpus path (relative to tests/conformance) -> reason, mirrored in docs/divergences.md.
DIVERGENT: dict[str, str] = {}


def _params():
    for path in SCRIPTS:
        rel = str(path.relative_to(CORPUS))
        marks = [pytest.mark.xfail(reason=DIVERGENT[rel], strict=True)] if rel in DIVERGENT else []
        yield pytest.param(path, id=rel, marks=marks)


@pytest.mark.parametrize("path", list(_params()))
def test_model_reproduces_corpus(path):
    script = load_script(str(path))
    got = run_model(script, check=True)
    if script.expect is None:
        if not libc.guard_regions_supported():
            pytest.skip("no recorded records and no guard-capable kernel to compare with")
        from sparsemm.opscript.kernel import run_kernel

        want = run_kernel(script)
    else:
        want = script.expect
    assert got == want, f"{path.name}: {script.note}\n" + describe_difference(got, want)


def test_divergent_list_is_documented():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "divergences.md").read_text()
    for rel in DIVERGENT:
        assert rel in doc, f"{rel} is xfailed but not documented in docs/divergences.md"


MODEL_SCRIPTS = sorted((CORPUS / "model").glob("*.json"))


@pytest.mark.kernel
@pytest.mark.skipif(not libc.guard_regions_supported(),
                    reason="needs the running kernel's guard regions (Linux >= 6.13)")
@pytest.mark.parametrize("path", MODEL_SCRIPTS, ids=[p.name for p in MODEL_SCRIPTS])
def test_model_scenarios_match_live_kernel(path):
    """The model's own scenario scripts, re-run on this machine's kernel (not just the record)."""
    from sparsemm.opscript.kernel import run_kernel

    script = load_script(str(path))
    got = run_model(script, check=True)
    for _ in range(3):  # a THP allocation can fall back to base pages under fragmentation
        want = run_kernel(script)
        if got == want:
            break
    assert got == want, f"{path.name}: {script.note}\n" + describe_difference(got, want)
