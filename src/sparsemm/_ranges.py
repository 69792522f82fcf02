"""RangeMap: a map from disjoint half-open integer ranges to values, equal neighbours coalesced.

Owns nothing of the mm or of a mapping: the model's ``vma`` guard design keeps the
protection each guarded range had in one, ``workloads`` tracks a script's protections
with another, and ``native.Mapping`` keeps its per-page records (intended protection,
fallback guards) in two. A neutral module: it imports neither the model nor the native layer.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any, Iterator

from sparsemm._invariant import InvariantError

__all__ = ["RangeMap"]


class RangeMap:
    """Sorted disjoint ``[start, end) -> value`` runs (any integer unit; callers say which).

    Points not covered have no value; ``None`` is never a value. Invariant (``check``):
    starts strictly increasing, every run non-empty, runs disjoint, and no two touching
    runs with equal values (so the runs are the one canonical form of the map).
    n runs, k runs touched: ``get``/``overlaps`` O(log n); ``items`` O(log n + k);
    ``assign``/``clear`` O(log n + k) plus a list splice (a C-level memmove of the tail),
    and O(1) for an assign at or past the last run (ascending fills).
    """

    __slots__ = ("_starts", "_ends", "_values")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._values: list[Any] = []

    def __len__(self) -> int:
        """Number of runs. O(1)."""
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int, Any]]:
        """Every run ``(start, end, value)`` in order."""
        return iter(zip(self._starts, self._ends, self._values))

    def copy(self) -> "RangeMap":
        """An independent copy (values are shared, not copied). O(n)."""
        new = RangeMap()
        new._starts, new._ends, new._values = self._starts[:], self._ends[:], self._values[:]
        return new

    # -- queries ----------------------------------------------------------------------------

    def get(self, point: int, default: Any = None) -> Any:
        """The value at ``point``, or ``default``. O(log n)."""
        i = bisect_right(self._starts, point) - 1
        if i >= 0 and point < self._ends[i]:
            return self._values[i]
        return default

    def overlaps(self, start: int, end: int) -> bool:
        """Does any run meet ``[start, end)``? O(log n)."""
        if start >= end:
            return False
        i = bisect_right(self._starts, start) - 1
        if i >= 0 and self._ends[i] > start:
            return True
        j = i + 1
        return j < len(self._starts) and self._starts[j] < end

    def items(self, start: int, end: int) -> list[tuple[int, int, Any]]:
        """``(start, end, value)`` of the covered parts of ``[start, end)``, clipped to it, in
        order (a new list: the map may change while the caller walks it). O(log n + k)."""
        out: list[tuple[int, int, Any]] = []
        if start >= end:
            return out
        starts, ends, values = self._starts, self._ends, self._values
        i = max(bisect_right(starts, start) - 1, 0)
        n = len(starts)
        while i < n and starts[i] < end:
            if ends[i] > start:
                out.append((max(starts[i], start), min(ends[i], end), values[i]))
            i += 1
        return out

    def spans(self) -> list[tuple[int, int]]:
        """The covered ``(start, end)`` ranges, touching runs joined whatever their values. O(n)."""
        out: list[tuple[int, int]] = []
        for s, e in zip(self._starts, self._ends):
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out

    # -- updates ----------------------------------------------------------------------------

    def assign(self, start: int, end: int, value: Any) -> None:
        """Map ``[start, end)`` to ``value``, joining equal touching neighbours. ValueError
        for ``None`` (use ``clear``). An empty range changes nothing."""
        if value is None:
            raise ValueError("RangeMap.assign: None is not a value (use clear)")
        if start >= end:
            return
        starts, ends, values = self._starts, self._ends, self._values
        if not starts or start >= ends[-1]:  # at or past the last run: O(1)
            if starts and ends[-1] == start and values[-1] == value:
                ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
                values.append(value)
            return
        self.clear(start, end)
        i = bisect_left(starts, start)
        if i and ends[i - 1] == start and values[i - 1] == value:
            i -= 1
            start = starts[i]
            del starts[i], ends[i], values[i]
        if i < len(starts) and starts[i] == end and values[i] == value:
            end = ends[i]
            del starts[i], ends[i], values[i]
        starts.insert(i, start)
        ends.insert(i, end)
        values.insert(i, value)

    def clear(self, start: int, end: int) -> None:
        """Remove every value in ``[start, end)``, cutting the runs at its edges."""
        starts = self._starts
        if start >= end or not starts or start >= self._ends[-1] or end <= starts[0]:
            return
        lo = self._cut(start)
        hi = self._cut(end)
        del starts[lo:hi], self._ends[lo:hi], self._values[lo:hi]

    def _cut(self, point: int) -> int:
        """Split the run containing ``point`` there; the index of the first run at or after it."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, point) - 1
        if i < 0:
            return 0
        if starts[i] < point < ends[i]:
            starts.insert(i + 1, point)
            ends.insert(i + 1, ends[i])
            self._values.insert(i + 1, self._values[i])
            ends[i] = point
        return i + 1 if starts[i] < point else i

    # -- invariants ---------------------------------------------------------------------------

    def check(self) -> None:
        """Runs sorted, non-empty, disjoint, no None values, equal neighbours coalesced;
        ``InvariantError`` names the first broken rule. O(n)."""
        starts, ends, values = self._starts, self._ends, self._values
        if not len(starts) == len(ends) == len(values):
            raise InvariantError("RangeMap: parallel lists differ in length")
        for i, (s, e, v) in enumerate(zip(starts, ends, values)):
            if not s < e or v is None:
                raise InvariantError(f"RangeMap: bad run {i}: [{s}, {e}) -> {v!r}")
            if i:
                pe, pv = ends[i - 1], values[i - 1]
                if pe > s:
                    raise InvariantError(f"RangeMap: runs {i - 1} and {i} overlap at {s}")
                if pe == s and pv == v:
                    raise InvariantError(f"RangeMap: runs {i - 1} and {i} touch with equal values")
