"""RangeMap: a map from disjoint half-open integer ranges to values.

Owns nothing of the mm: the ``vma`` guard design keeps the protection each
guarded range had in one, and ``sparsemm.workloads`` tracks a script's
protections with another. Equal neighbours coalesce.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any


class RangeMap:
    """Sorted disjoint ``[start, end) -> value`` ranges (any unit; callers say which).

    ``get`` and ``pieces`` are O(log n + k); ``set`` is O(log n + k) plus a list
    splice (C-level memmove of the tail), O(1) past the last range. ``None`` is not a value: setting a range
    to ``None`` clears it.
    """

    __slots__ = ("starts", "ends", "values")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.values: list[Any] = []

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        return iter(zip(self.starts, self.ends, self.values))

    def copy(self) -> "RangeMap":
        new = RangeMap()
        new.starts, new.ends, new.values = self.starts[:], self.ends[:], self.values[:]
        return new

    def get(self, point: int, default: Any = None) -> Any:
        i = bisect_right(self.starts, point) - 1
        if i >= 0 and point < self.ends[i]:
            return self.values[i]
        return default

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect_right(self.starts, start) - 1
        if i >= 0 and self.ends[i] > start:
            return True
        j = bisect_left(self.starts, start)
        return j < len(self.starts) and self.starts[j] < end

    def pieces(self, start: int, end: int) -> list[tuple[int, int, Any]]:
        """The stored parts of ``[start, end)``, clipped, in order."""
        out = []
        i = max(bisect_right(self.starts, start) - 1, 0)
        starts, ends, values = self.starts, self.ends, self.values
        while i < len(starts) and starts[i] < end:
            s, e = max(starts[i], start), min(ends[i], end)
            if s < e:
                out.append((s, e, values[i]))
            i += 1
        return out

    def set(self, start: int, end: int, value: Any) -> None:
        """Map ``[start, end)`` to ``value`` (``None``: unmap it)."""
        if start >= end:
            return
        starts, ends, values = self.starts, self.ends, self.values
        if not starts or start >= ends[-1]:  # past every range (ascending fills): O(1)
            if value is None:
                return
            if starts and ends[-1] == start and values[-1] == value:
                ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
                values.append(value)
            return
        # Splice one neighbour beyond each end too, so equal neighbours coalesce.
        lo = max(bisect_right(starts, start) - 2, 0)
        hi = min(bisect_left(starts, end) + 1, len(starts))
        keep: list[tuple[int, int, Any]] = []
        for i in range(lo, hi):
            s, e, v = starts[i], ends[i], values[i]
            if e <= start or s >= end:
                keep.append((s, e, v))
                continue
            if s < start:
                keep.append((s, start, v))
            if e > end:
                keep.append((end, e, v))
        if value is not None:
            keep.append((start, end, value))
        keep.sort(key=lambda t: t[0])
        merged: list[tuple[int, int, Any]] = []
        for k in keep:
            if merged and merged[-1][1] == k[0] and merged[-1][2] == k[2]:
                merged[-1] = (merged[-1][0], k[1], k[2])
            else:
                merged.append(k)
        starts[lo:hi] = [k[0] for k in merged]
        ends[lo:hi] = [k[1] for k in merged]
        values[lo:hi] = [k[2] for k in merged]

    def check(self) -> None:
        """Ranges sorted, non-empty, disjoint, equal neighbours coalesced. O(n)."""
        for i, (s, e, v) in enumerate(self):
            assert s < e and v is not None, f"bad range {i}: [{s}, {e}) -> {v!r}"
            if i:
                pe, pv = self.ends[i - 1], self.values[i - 1]
                assert pe <= s, f"ranges {i - 1} and {i} overlap"
                assert not (pe == s and pv == v), f"ranges {i - 1} and {i} not coalesced"
