"""Rates as Momentum writes them: ``"N"`` (N per second) or ``"N/S"`` (N per S seconds).

``0`` or an unset rate means unlimited. A throttle admits at most N in ANY sliding window
of S seconds, judged by Redis server time. It counts in ``BUCKETS`` buckets of S/BUCKETS
seconds and, when deciding, counts the oldest bucket that overlaps the window in full:
so it may under-admit by up to one bucket's worth near the window's edge, and it never
over-admits. Memory per throttle key is at most BUCKETS + 1 counters, whatever N is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcluster.errors import InvalidValue

BUCKETS = 10
MAX_COUNT = 10**12
MAX_PERIOD = 86400 * 366
_RATE = re.compile(r"^\s*(\d+)\s*(?:/\s*(\d+(?:\.\d+)?)\s*)?$")


@dataclass(frozen=True)
class Rate:
    """At most ``count`` per ``period`` seconds; ``count == 0`` is unlimited."""

    count: int
    period: float = 1.0

    @property
    def unlimited(self) -> bool:
        return self.count == 0

    @property
    def period_ms(self) -> int:
        return max(BUCKETS, round(self.period * 1000))

    @property
    def bucket_ms(self) -> int:
        return self.period_ms // BUCKETS

    def __str__(self) -> str:
        period = f"{self.period:g}"
        return str(self.count) if period == "1" else f"{self.count}/{period}"


def parse_rate(text: str | int) -> Rate:
    """``"1000/10"`` -> Rate(1000, 10.0); ValueError names what is wrong."""
    if isinstance(text, bool):
        raise InvalidValue(f'bad rate {text!r}: expected "N" or "N/S", e.g. "1000/10"')
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        raise InvalidValue(f'bad rate {text!r}: expected a string such as "1000/10"')
    match = _RATE.match(text)
    if not match:
        raise InvalidValue(
            f'bad rate {text!r}: expected "N" (per second) or "N/S" (N per S seconds), '
            'N and S positive numbers, e.g. "1000/10"'
        )
    count = int(match.group(1))
    period = float(match.group(2)) if match.group(2) is not None else 1.0
    if count > MAX_COUNT:
        raise InvalidValue(f"bad rate {text!r}: N must be at most {MAX_COUNT}")
    if period <= 0:
        raise InvalidValue(f"bad rate {text!r}: the period S must be more than 0 seconds")
    if period > MAX_PERIOD or period * 1000 < BUCKETS:
        raise InvalidValue(f"bad rate {text!r}: the period must be between 0.01 s and a year")
    return Rate(count, period)
