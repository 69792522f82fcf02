"""Every guard design on random op scripts, with ``AddressSpace.check()`` after every op.

The scripts are the differential test's (``strategies.op_script``), longer, with more guard
advice and byte-form edge arguments, and run on the model alone: no kernel implements
``tree``, and ``vma`` is held to the kernel by
tests/test_designs_differential.py. What is asserted here is that no script makes a design
break a model invariant or raise anything but a syscall's ``OSError``.
``SPARSEMM_DESIGN_EXAMPLES`` sets the examples per design (default 15):
``SPARSEMM_DESIGN_EXAMPLES=3000 python -m pytest tests/test_designs_random.py`` runs thousands.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from sparsemm.model import designs
from sparsemm.opscript.model_backend import run_model
from sparsemm.opscript.script import parse_script

from strategies import op_script

EXAMPLES = int(os.environ.get("SPARSEMM_DESIGN_EXAMPLES", "15"))
#: Top-level ops per script (forks add up to six more each): long enough for guards,
#: splits and merges to pile up as in the scripts of a few hundred ops that found bugs.
MIN_OPS, MAX_OPS = 100, 300


def run_checked(doc: dict, design: str) -> None:
    try:
        run_model(parse_script(doc), design, check=True)
    except Exception as exc:
        raise AssertionError(f"--design {design}: {type(exc).__name__}: {exc}\nscript: "
                             + json.dumps(doc)) from exc


@pytest.mark.parametrize("design", designs.names())  # every registered design, tree and vma included
def test_design_keeps_the_model_invariants_on_random_scripts(design):
    # No shrinking: a list of at least MIN_OPS ops cannot shrink far, and tries for minutes;
    # the failure names the whole script (tests/conformance/model/ keeps minimal ones).
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(op_script(min_ops=MIN_OPS, max_ops=MAX_OPS, guards=True, edges=True))
    def run(doc):
        run_checked(doc, design)

    run()
