"""Differential test: random op scripts on the model and on the running kernel must agree.

The scripts come from ``sparsemm fuzz``'s generator (``sparsemm.fuzz.generate``);
hypothesis draws the seeds. The "mixed" profile is the mix this test always drew
(mmap of every kind, munmap, mprotect, madvise incl. guards, mremap in place / fixed /
dontunmap, mlock/munlock, touches, forks with small child lists, file ops, snapshots on
a small arena so that ops collide); "thp" works at 2 MiB scale; "guards", "files" and
"errors" run fewer examples each. ``SPARSEMM_DIFF_EXAMPLES`` sets the number of examples
(default 100; thp a quarter, the others a tenth): ``SPARSEMM_DIFF_EXAMPLES=5000 make
test`` or ``SPARSEMM_DIFF_EXAMPLES=5000 pytest -k differential`` runs thousands.

A difference whose signature is one of the open findings in ``tests/fuzz_findings/``
(found by ``sparsemm fuzz``, waiting for a model fix) is reported as a hypothesis event,
not a failure; any other difference fails, with the script shrunk to a minimal one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings

from sparsemm.fuzz import findings
from sparsemm.fuzz.difference import classify
from sparsemm.fuzz.engine import Fuzzer
from sparsemm.native import libc
from sparsemm.opscript.kernel import run_kernel
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import parse_script

from strategies import profile_script

EXAMPLES = int(os.environ.get("SPARSEMM_DIFF_EXAMPLES", "100"))
OPEN_FINDINGS = findings.existing(Path(__file__).resolve().parent / "fuzz_findings")
#: Kernel runs of a script before a difference counts (THP fallback under fragmentation).
RUNS = 3

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not libc.guard_regions_supported(),
                       reason="the running kernel has no guard regions (needs Linux >= 6.13 with MADV_GUARD_INSTALL)"),
]

SETTINGS = dict(deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _open_finding(signature: str, doc: dict) -> bool:
    """Whether an open finding has this signature and can be its cause: one whose script
    reserves huge pages (a hugetlb finding) explains no difference in a script without."""
    path = OPEN_FINDINGS.get(signature)
    if path is None:
        return False
    needs_hugetlb = "hugetlb_pages" in json.loads((path / "script.json").read_text(encoding="utf-8"))
    return not needs_hugetlb or bool(doc.get("hugetlb_pages"))


def assert_same(seed: int, profile: str, doc: dict) -> None:
    script = parse_script(doc)
    model = run_model(script, check=True)
    for _ in range(RUNS):
        diff = classify(model, run_kernel(script))
        if diff is None:
            return
    if _open_finding(diff.signature, doc):
        event(f"open finding: {diff.signature}")
        return
    minimal, run, _ = Fuzzer(seed=seed, profiles=[profile], examples=0,
                             findings_dir="/nonexistent", shrink_tests=150).minimize(doc)
    raise AssertionError(
        f"model and kernel disagree ({profile} profile, seed {seed}): {diff.signature}\n"
        f"model : {json.dumps(diff.model)[:2000]}\nkernel: {json.dumps(diff.kernel)[:2000]}\n"
        f"minimal script ({run.diff.signature if run.diff else 'did not reproduce'}):\n"
        + json.dumps(minimal) + "\nscript as generated:\n" + json.dumps(doc))


@pytest.mark.slow  # tens of seconds (make test's slowest 20)
@settings(max_examples=EXAMPLES, **SETTINGS)
@given(profile_script("mixed"))
def test_model_matches_kernel_on_random_scripts(case):
    assert_same(case[0], "mixed", case[1])


@settings(max_examples=max(10, EXAMPLES // 4), **SETTINGS)
@given(profile_script("thp"))
def test_model_matches_kernel_at_thp_scale(case):
    assert_same(case[0], "thp", case[1])


@pytest.mark.parametrize("profile", ["guards", "files", "errors"])
def test_model_matches_kernel_on_profile(profile):
    @settings(max_examples=max(5, EXAMPLES // 10), **SETTINGS)
    @given(profile_script(profile))
    def run(case):
        assert_same(case[0], profile, case[1])

    run()
