"""Shared bits of the benchmarks: percentiles, the figures table, PASS/FAIL verdicts, and
the closed loop of callers that the throttle and outbound benchmarks drive."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(width=110, highlight=False)


def who(callers: int) -> str:
    return "1 caller" if callers == 1 else f"{callers} callers"


async def closed_loop(
    call: Callable[[], Awaitable[Any]],
    n: int,
    callers: int,
    latencies: list[float],
    ok: Callable[[Any], bool] = bool,
) -> int:
    """``callers`` tasks each making n // callers calls back to back, each call's latency
    appended to ``latencies``; returns how many answers ``ok`` called a refusal."""
    refused = 0

    async def caller() -> None:
        nonlocal refused
        clock = time.perf_counter
        for _ in range(n // callers):
            start = clock()
            result = await call()
            latencies.append(clock() - start)
            if not ok(result):
                refused += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return refused


def make_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; a script may add its own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test, < 20 s)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="the event loop of this process, as the agent's --loop (default: uvloop when "
        "installed); the scripts that pass it on say so in their report's title",
    )
    return parser


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def spawn_floor(script: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``benchmarks/SCRIPT PORT`` (a floor server: ``_dunno.py``, ``_http_floor.py``)
    on a free port, its output to ``log``; the process and the port."""
    from tests.redis_servers import free_port  # the benchmarks put the project on sys.path

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / script), str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, port


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, all) CPU ticks of the machine so far (Linux ``/proc/stat``; None elsewhere).

    Why: on a virtual machine the host may run others on our cores ("steal"); a run that
    lost several per cent of its CPU that way has the tail latencies of a busy host, not
    of the code. Every report says how much was stolen while it ran (``stolen_since``)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


def stolen_since(start: tuple[int, int] | None) -> str | None:
    """The share of the machine's CPU time the host stole since ``start`` (``cpu_ticks``)."""
    end = cpu_ticks()
    if start is None or end is None or end[1] <= start[1]:
        return None
    return f"{(end[0] - start[0]) / (end[1] - start[1]) * 100:.1f} %"


@dataclass
class Report:
    title: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    verdicts: list[tuple[str, bool, str]] = field(default_factory=list)

    def figure(self, name: str, value: str, note: str = "") -> None:
        self.rows.append((name, value, note))

    def target(self, name: str, ok: bool, detail: str) -> None:
        self.verdicts.append((name, ok, detail))

    def print(self) -> None:
        table = Table(title=self.title, title_justify="left")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("note")
        for row in self.rows:
            table.add_row(*row)
        console.print(table)
        for name, ok, detail in self.verdicts:
            mark = "[green]PASS[/]" if ok else "[red]FAIL[/]"
            console.print(f"{mark}  {name}: {detail}")

    def exit(self, strict: bool) -> None:
        missed = [name for name, ok, _ in self.verdicts if not ok]
        if strict and missed:
            sys.exit(1)
