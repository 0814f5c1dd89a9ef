"""The event loop a long-running face runs on: uvloop when it is installed, else asyncio's.

Why: the Postfix policy service and the HTTP API spend most of their CPU in the event
loop's own machinery (a selector turn, a handle per callback, a transport write per
answer). uvloop (libuv, in C) runs the same asyncio code on its own loop: measured with
``benchmarks/policy.py``, 12-15 % less agent CPU per decision, the same answers.
``--loop asyncio`` keeps the standard loop (for a platform without uvloop wheels, or to
rule it out when looking at a problem).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Literal

from mcluster.errors import Error

__all__ = ["LOOPS", "Loop", "loop_factory"]

Loop = Literal["auto", "uvloop", "asyncio"]
LOOPS: tuple[Loop, ...] = ("auto", "uvloop", "asyncio")


def loop_factory(choice: Loop = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop ``choice`` names (None: asyncio's default)."""
    if choice == "asyncio":
        return None
    if importlib.util.find_spec("uvloop") is None:
        if choice == "uvloop":
            raise Error("--loop uvloop: uvloop is not installed (pip install uvloop)")
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
