"""How often a loop that keeps failing says so: the 1st failure, the 10th, then every 60th.

The heartbeats of nodes and managers and the console request loop retry for ever; one
line per failure would flood the log during an outage, one line only would hide how long
it lasts."""

from __future__ import annotations

__all__ = ["worth_logging"]


def worth_logging(failures: int) -> bool:
    """True for the failures (counted in a row, from 1) that get a log line."""
    return failures in (1, 10) or failures % 60 == 0
