"""A page-interval map: sorted, non-overlapping runs ``[start, end) -> value``.

Owns the bookkeeping ``Mapping`` keeps per page (intended protection, fallback
guards) without one entry per page, so a 1 TiB reservation costs one run.
Units are pages. Adjacent runs with equal values are merged on every update.
"""

from __future__ import annotations

import bisect
from typing import Iterator


class RunMap:
    """Runs ``[start, end) -> value``; pages not covered have no value.

    Invariant (``_check``): ``_starts`` strictly increasing, every run non-empty,
    runs non-overlapping, and no two touching runs carry equal values.
    """

    __slots__ = ("_starts", "_ends", "_values")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._values: list[object] = []

    def __len__(self) -> int:
        """Number of runs. O(1)."""
        return len(self._starts)

    def _cut(self, page: int) -> int:
        """Split the run containing ``page`` at it; return the index of the first run >= page."""
        i = bisect.bisect_right(self._starts, page) - 1
        if i >= 0 and self._starts[i] < page < self._ends[i]:
            self._starts.insert(i + 1, page)
            self._ends.insert(i + 1, self._ends[i])
            self._values.insert(i + 1, self._values[i])
            self._ends[i] = page
            return i + 1
        return i + 1 if i >= 0 and self._ends[i] <= page else max(i, 0)

    def clear(self, start: int, end: int) -> None:
        """Remove every value in ``[start, end)``. O(log n + runs touched), plus list moves."""
        if start >= end:
            return
        lo = self._cut(start)
        hi = self._cut(end)
        del self._starts[lo:hi], self._ends[lo:hi], self._values[lo:hi]

    def assign(self, start: int, end: int, value: object) -> None:
        """Set ``[start, end)`` to ``value``, merging with equal neighbours."""
        if start >= end:
            return
        self.clear(start, end)
        i = bisect.bisect_left(self._starts, start)
        if i > 0 and self._ends[i - 1] == start and self._values[i - 1] == value:
            i -= 1
            start = self._starts[i]
            del self._starts[i], self._ends[i], self._values[i]
        if i < len(self._starts) and self._starts[i] == end and self._values[i] == value:
            end = self._ends[i]
            del self._starts[i], self._ends[i], self._values[i]
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        self._values.insert(i, value)

    def items(self, start: int, end: int) -> Iterator[tuple[int, int, object]]:
        """``(start, end, value)`` for the covered parts of ``[start, end)``, clipped, in order."""
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        starts, ends, values = self._starts, self._ends, self._values
        while i < len(starts) and starts[i] < end:
            if ends[i] > start:
                yield max(starts[i], start), min(ends[i], end), values[i]
            i += 1

    def get(self, page: int, default: object = None) -> object:
        """The value at ``page``. O(log n)."""
        i = bisect.bisect_right(self._starts, page) - 1
        if i >= 0 and page < self._ends[i]:
            return self._values[i]
        return default

    def spans(self) -> list[tuple[int, int]]:
        """Covered ``(start, end)`` page ranges with touching runs merged regardless of value."""
        out: list[tuple[int, int]] = []
        for s, e in zip(self._starts, self._ends):
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out

    def _check(self) -> None:
        for i, (s, e) in enumerate(zip(self._starts, self._ends)):
            assert s < e, (s, e)
            if i:
                assert self._ends[i - 1] <= s
                assert not (self._ends[i - 1] == s and self._values[i - 1] == self._values[i])
