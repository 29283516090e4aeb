"""How long something took, counted into fixed buckets: a histogram without a library.

The actors keep the timings only they can take (the ledger's commits) in one of these;
``gateway.metrics`` reads it at scrape time and exposes it as a Prometheus histogram.
Observing is two additions and a short scan of the bounds, cheap enough for every commit.
"""

from __future__ import annotations

import bisect

import attrs


@attrs.define
class Durations:
    bounds: tuple[float, ...]  # upper bounds in seconds, ascending; +Inf is implied
    counts: list[int] = attrs.field()  # one per bound, then the overflow
    total_s: float = 0.0

    @counts.default
    def _zeros(self) -> list[int]:
        return [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), the last bound being +Inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            running += n
            out.append((bound, running))
        return out


#: a commit of the meter's ledger: a thread hop (~0.2 ms) and an fsync-free WAL write
LEDGER_COMMIT_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
