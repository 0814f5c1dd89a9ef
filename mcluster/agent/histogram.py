"""A plain histogram accumulator (fixed buckets, count, sum) kept by the agent itself and
read at scrape time by ``GET /metrics``: no metrics library on the hot path."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: Seconds: the apply latency of one batch (an EVALSHA round trip, ~1 ms on loopback).
LATENCY_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Distinct keys in one batch (at most 64 IPv4 addresses, see outbox.BATCH_LIMIT).
SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class Histogram:
    """Observations counted in buckets ``value <= bound`` (the last bucket is +Inf)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` for every bound and ``+Inf``."""
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
