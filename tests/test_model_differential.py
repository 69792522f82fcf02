"""Differential test: random op scripts on the model and on the running kernel must agree.

Hypothesis draws scripts (mmap of every kind, munmap, mprotect, madvise incl. guards,
mremap in place / fixed / dontunmap, mlock/munlock, touches, forks with small child
lists, snapshots) on a small arena so that ops collide. ``SPARSEMM_DIFF_EXAMPLES``
sets the number of examples (default 100); ``SPARSEMM_DIFF_EXAMPLES=5000 make test``
or ``SPARSEMM_DIFF_EXAMPLES=5000 pytest -k differential`` runs thousands.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsemm.native import libc
from sparsemm.opscript.compare import describe_difference
from sparsemm.opscript.kernel import run_kernel
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import parse_script

from strategies import THP_ARENA, op_script, thp_op

EXAMPLES = int(os.environ.get("SPARSEMM_DIFF_EXAMPLES", "100"))

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not libc.guard_regions_supported(),
                       reason="the running kernel has no guard regions (needs Linux >= 6.13 with MADV_GUARD_INSTALL)"),
]


def assert_same(doc: dict) -> None:
    script = parse_script(doc)
    model = run_model(script, check=True)
    for _ in range(3):  # the kernel may fall back from a THP to base pages under fragmentation
        kernel = run_kernel(script)
        if model == kernel:
            return
    raise AssertionError("model and kernel disagree\nscript: " + json.dumps(doc) + "\n"
                         + describe_difference(model, kernel, limit=1 << 20))


@pytest.mark.slow  # tens of seconds (make test's slowest 20)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(op_script())
def test_model_matches_kernel_on_random_scripts(doc):
    assert_same(doc)


@settings(max_examples=max(10, EXAMPLES // 4), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(thp_op(), min_size=1, max_size=16))
def test_model_matches_kernel_at_thp_scale(ops):
    assert_same({"arena_pages": THP_ARENA, "ops": ops + [{"op": "snapshot"}]})
