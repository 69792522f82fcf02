"""``RunMap``, the page-interval map behind ``Mapping``'s records, against a dict model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sparsemm.native._runs import RunMap

_op = st.tuples(st.sampled_from(["assign", "clear"]), st.integers(0, 40), st.integers(0, 40),
                st.sampled_from([1, 2, 3]))


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=40))
def test_runmap_matches_a_per_page_model(ops):
    runs, model = RunMap(), {}
    for name, a, b, value in ops:
        start, end = min(a, b), max(a, b)
        if name == "assign":
            runs.assign(start, end, value)
            model.update({page: value for page in range(start, end)})
        else:
            runs.clear(start, end)
            for page in range(start, end):
                model.pop(page, None)
        runs._check()  # sorted, non-empty, disjoint, equal neighbours merged
        assert {p: runs.get(p) for p in range(45) if runs.get(p) is not None} == model
        assert {p: v for s, e, v in runs.items(0, 45) for p in range(s, e)} == model
        lo, hi = sorted((a, b))
        assert {p: v for s, e, v in runs.items(lo, hi) for p in range(s, e)} == {
            p: v for p, v in model.items() if lo <= p < hi}
        covered = sorted(model)
        merged = []
        for p in covered:
            if merged and merged[-1][1] == p:
                merged[-1][1] = p + 1
            else:
                merged.append([p, p + 1])
        assert runs.spans() == [tuple(m) for m in merged]
