"""A map from page index to a small int, stored as runs: cost grows with the number of
runs, never with the number of pages (a 1 TiB guest_memfd costs memory only for the pages
it touches; the ``rss_1tib_mib`` figure of docs/bench.md measures it)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator


class RangeMap:
    """Values over ``[0, limit)``; run ``i`` covers ``[starts[i], starts[i+1])``."""

    __slots__ = ("limit", "starts", "values")

    def __init__(self, limit: int, value: int = 0) -> None:
        self.limit = limit
        self.starts: list[int] = [0]
        self.values: list[int] = [value]

    def copy(self) -> RangeMap:
        other = RangeMap.__new__(RangeMap)
        other.limit = self.limit
        other.starts = self.starts.copy()
        other.values = self.values.copy()
        return other

    def __getitem__(self, index: int) -> int:
        return self.values[bisect_right(self.starts, index) - 1]

    def runs(self, lo: int = 0, hi: int | None = None) -> Iterator[tuple[int, int, int]]:
        """``(start, end, value)`` for each run clipped to ``[lo, hi)``."""
        hi = self.limit if hi is None else hi
        i = bisect_right(self.starts, lo) - 1
        n = len(self.starts)
        while i < n and self.starts[i] < hi:
            a = max(lo, self.starts[i])
            b = min(hi, self.starts[i + 1] if i + 1 < n else self.limit)
            if a < b:
                yield a, b, self.values[i]
            i += 1

    def first_not(self, lo: int, hi: int, value: int) -> int | None:
        """The first index in ``[lo, hi)`` whose value is not ``value``, or None."""
        starts, values = self.starts, self.values
        lo, hi = max(lo, 0), min(hi, self.limit)
        if lo >= hi:
            return None
        i = bisect_right(starts, lo) - 1
        n = len(starts)
        while i < n and starts[i] < hi:
            if values[i] != value:
                return max(lo, starts[i])
            i += 1
        return None

    def set(self, lo: int, hi: int, value: int) -> None:
        """Give every index in ``[lo, hi)`` the value ``value``; runs stay merged."""
        if lo >= hi:
            return
        starts, values, limit = self.starts, self.values, self.limit
        i = bisect_right(starts, lo) - 1
        if i >= 0 and values[i] == value and (i + 1 == len(starts) or starts[i + 1] >= hi):
            return  # already one run with this value: nothing changes
        end = bisect_right(starts, hi) if hi < limit else len(starts)
        seg_s = [lo]
        seg_v = [value]
        if starts[i] < lo:
            seg_s.insert(0, starts[i])
            seg_v.insert(0, values[i])
        if hi < limit and (end == len(starts) or starts[end] != hi):
            seg_s.append(hi)
            seg_v.append(values[end - 1])
        # widen by one neighbour on each side so merging stays local
        a = i - 1 if i > 0 else i
        b = end + 1 if end < len(starts) else end
        seg_s = starts[a:i] + seg_s + starts[end:b]
        seg_v = values[a:i] + seg_v + values[end:b]
        out_s: list[int] = []
        out_v: list[int] = []
        for s_, v_ in zip(seg_s, seg_v, strict=True):
            if out_v and out_v[-1] == v_:
                continue
            out_s.append(s_)
            out_v.append(v_)
        starts[a:b] = out_s
        values[a:b] = out_v

    def key(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """A hashable, canonical form (runs are always merged)."""
        return tuple(self.starts), tuple(self.values)

    def __repr__(self) -> str:
        return f"RangeMap({list(self.runs())})"

    # --- snapshots (the checker's restore-apply-snapshot loop; no behaviour change) -------
    def restore(self, key: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        """Set the runs back to a :meth:`key` taken earlier."""
        self.starts = list(key[0])
        self.values = list(key[1])

    def expand(self) -> list[int]:
        """Every index's value, in order (for small maps: the checker's per-page rows)."""
        out: list[int] = []
        starts, values = self.starts, self.values
        for i, value in enumerate(values):
            end = starts[i + 1] if i + 1 < len(starts) else self.limit
            out += [value] * (end - starts[i])
        return out

    def assign(self, values: list[int]) -> None:
        """Set every index's value from ``values`` (one per index), runs merged."""
        assert len(values) == self.limit, "one value per index"
        starts: list[int] = []
        runs: list[int] = []
        for i, value in enumerate(values):
            if not runs or runs[-1] != value:
                starts.append(i)
                runs.append(value)
        self.starts, self.values = starts, runs
