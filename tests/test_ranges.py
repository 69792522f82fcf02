"""``sparsemm._ranges.RangeMap`` (the vma design's saved protections, ``workloads``'
protection tracking, ``native.Mapping``'s records) against a plain dict of points."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from sparsemm._invariant import InvariantError
from sparsemm._ranges import RangeMap

LIMIT = 48  # points 0..LIMIT-1: small, so that ranges touch, overlap and coalesce
points = st.integers(0, LIMIT)
values = st.sampled_from(["r", "rw", "none", 1, 2])


class RangeMapMachine(RuleBasedStateMachine):
    """Every update applied to a RangeMap and to a dict point -> value; after each step
    every query must agree with the dict and ``check()`` must pass."""

    @initialize()
    def start(self):
        self.ranges = RangeMap()
        self.model: dict[int, object] = {}

    @rule(a=points, b=points, value=values)
    def assign(self, a, b, value):
        start, end = min(a, b), max(a, b)
        self.ranges.assign(start, end, value)
        self.model.update((p, value) for p in range(start, end))

    @rule(a=points, n=st.integers(1, 8), value=values)
    def append(self, a, n, value):
        """Ascending fills take the O(1) path: at or past the last run."""
        start = max([a] + [e for _, e, _ in self.ranges][-1:])
        self.ranges.assign(start, start + n, value)
        self.model.update((p, value) for p in range(start, start + n))

    @rule(a=points, b=points)
    def clear(self, a, b):
        start, end = min(a, b), max(a, b)
        self.ranges.clear(start, end)
        for p in range(start, end):
            self.model.pop(p, None)

    @precondition(lambda self: len(self.ranges))
    @rule()
    def copy_is_independent(self):
        twin = self.ranges.copy()
        s, e, _ = next(iter(self.ranges))
        twin.clear(s, e)
        assert self.ranges.get(s) == self.model[s]
        self.ranges = twin
        for p in range(s, e):
            self.model.pop(p, None)

    @rule(a=points, b=points)
    def queries_agree(self, a, b):
        lo, hi = min(a, b), max(a, b)
        want = {p: v for p, v in self.model.items() if lo <= p < hi}
        got = {p: v for s, e, v in self.ranges.items(lo, hi) for p in range(s, e)}
        assert got == want
        assert all(lo <= s < e <= hi for s, e, _ in self.ranges.items(lo, hi))
        assert self.ranges.overlaps(lo, hi) == bool(want)

    @invariant()
    def agrees_with_the_dict(self):
        self.ranges.check()
        horizon = max(self.model, default=0) + 2
        assert {p: self.ranges.get(p) for p in range(horizon)
                if self.ranges.get(p) is not None} == self.model
        assert {p: v for s, e, v in self.ranges for p in range(s, e)} == self.model
        runs = []
        for p in sorted(self.model):  # the canonical runs: equal touching values joined
            if runs and runs[-1][1] == p and runs[-1][2] == self.model[p]:
                runs[-1][1] = p + 1
            else:
                runs.append([p, p + 1, self.model[p]])
        assert [list(r) for r in self.ranges] == runs
        spans = []
        for s, e, _ in runs:
            if spans and spans[-1][1] == s:
                spans[-1] = (spans[-1][0], e)
            else:
                spans.append((s, e))
        assert self.ranges.spans() == spans


TestRangeMap = RangeMapMachine.TestCase
TestRangeMap.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)


def test_none_is_not_a_value_and_check_names_the_broken_rule():
    r = RangeMap()
    with pytest.raises(ValueError, match="None"):
        r.assign(0, 4, None)
    r.assign(0, 4, 1)
    r.assign(4, 8, 2)
    r._values[1] = 1  # two touching runs with equal values: not canonical
    with pytest.raises(InvariantError, match="equal values"):
        r.check()
