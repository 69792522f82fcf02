"""The open findings in ``tests/fuzz_findings/`` are still open, and well formed.

Each directory there is a difference ``sparsemm fuzz`` found between the model and the
kernel, shrunk to a minimal script, with the kernel's records (``kernel.json``) as the
kernel gave them. The model must still differ from those records with the finding's
signature: when a model fix makes it agree, this test fails and says what to do (move
the script into the corpus, delete the finding: docs/fuzzing.md). No kernel needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsemm.fuzz.engine import Backends, Fuzzer
from sparsemm.fuzz.findings import FINDING_SCHEMA
from sparsemm.opscript.script import parse_script

FINDINGS = Path(__file__).resolve().parent / "fuzz_findings"
DIRS = sorted(p.parent for p in FINDINGS.glob("*/finding.json"))


def test_there_are_findings_or_none_is_claimed():
    readme = (FINDINGS / "README.md").read_text(encoding="utf-8")
    for path in DIRS:
        assert path.name in readme, f"{path.name} is not described in tests/fuzz_findings/README.md"


@pytest.mark.parametrize("path", DIRS, ids=[p.name for p in DIRS])
def test_open_finding_still_differs_on_the_model(path):
    meta = json.loads((path / "finding.json").read_text(encoding="utf-8"))
    assert meta["schema"] == FINDING_SCHEMA
    doc = json.loads((path / "script.json").read_text(encoding="utf-8"))
    assert "fuzz finding" in doc["note"] and "expect" not in doc
    parse_script(doc)
    if not (path / "kernel.json").exists():
        pytest.skip("a kernel-backend failure: only the kernel can recheck it "
                    "(sparsemm fuzz --recheck tests/fuzz_findings)")
    recorded = json.loads((path / "kernel.json").read_text(encoding="utf-8"))
    fz = Fuzzer(seed=0, examples=0, findings_dir="/nonexistent",
                backends=Backends(kernel=lambda script: recorded))
    run = fz.evaluate(doc)
    if run.diff is None:
        pytest.fail(f"{path.name}: the model now gives the kernel's records. Copy script.json "
                    "into tests/conformance/model/ (say what it pins in its note), run "
                    "`sparsemm record` on it, and delete this finding's directory.")
    assert run.diff.signature == meta["signature"], (
        f"{path.name}: the model still differs, but differently: {run.diff.signature}")
