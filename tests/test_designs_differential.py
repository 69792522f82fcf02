"""The ``vma`` design against the kernel on random scripts (hypothesis).

A script run with ``--design vma`` on the model must observe what the kernel observes
running the same script with every guard written as ``mprotect`` calls
(``workloads.to_vma_design``). Scripts stay inside mapped memory (two regions, no
munmap or mremap): that is where the rewrite is an exact equivalence (docs/divergences.md).
``SPARSEMM_DIFF_EXAMPLES`` sets the number of examples, as for the model's own test.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsemm import workloads
from sparsemm.opscript.kernel import run_kernel
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import parse_script

from conftest import needs_guards, observations

EXAMPLES = max(10, int(os.environ.get("SPARSEMM_DIFF_EXAMPLES", "100")) // 2)
REGIONS = [(0, 12, "rw"), (14, 8, "r")]  # (at, pages, prot): two mappings with a hole between

pytestmark = [pytest.mark.kernel, needs_guards]


@st.composite
def inside(draw):
    at, n, _ = draw(st.sampled_from(REGIONS))
    a = draw(st.integers(at, at + n - 1))
    return a, draw(st.integers(1, at + n - a))


@st.composite
def op(draw, depth=0):
    kind = draw(st.sampled_from(["guard_install", "guard_install", "guard_remove", "mprotect",
                                 "touch", "touch", "dontneed", "snapshot"] + (["fork"] if depth == 0 else [])))
    if kind == "fork":
        return {"op": "fork", "child": draw(st.lists(op(depth=1), max_size=4))}
    if kind == "snapshot":
        return {"op": "snapshot"}
    a, n = draw(inside())
    if kind in ("guard_install", "guard_remove", "dontneed"):
        return {"op": "madvise", "at": a, "len": n, "advice": kind}
    if kind == "mprotect":
        return {"op": "mprotect", "at": a, "len": n, "prot": draw(st.sampled_from(["r", "rw", ""]))}
    return {"op": "touch", "at": a, "len": n, "access": draw(st.sampled_from(["read", "write"]))}


@pytest.mark.slow  # tens of seconds (make test's slowest 20)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op(), min_size=1, max_size=14))
def test_vma_design_matches_the_kernel_running_mprotect(ops):
    doc = {"arena_pages": 32,
           "ops": [{"op": "mmap", "at": a, "len": n, "prot": p} for a, n, p in REGIONS]
           + ops + [{"op": "snapshot"}]}
    model = observations(run_model(parse_script(doc), "vma", check=True))
    kernel = observations(run_kernel(parse_script(workloads.to_vma_design(doc))))
    assert model == kernel, "vma design and kernel disagree\nscript: " + json.dumps(doc)
