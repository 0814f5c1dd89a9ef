"""Sentinel failover: how long until a plain Sentinel client writes again, and how long
until mcluster's views are exact again, after the master is killed under load.

Each run starts a master, a replica (through a proxy that holds replication back, so the
failover loses acknowledged writes) and three sentinels (down-after-milliseconds 1000),
two ``mcluster agent`` processes on the ``redis+sentinel://`` URL under steady load,
then SIGKILLs the master. Figures per run, from the kill:

- promoted: the sentinels name the replica master and it answers as one;
- baseline, first write: a redis-py Sentinel client (what any application sees) gets a
  SET through to the new master;
- mcluster exact: every agent has noticed the loss and re-synced, and the global view ==
  the sum of the node views == what the agents recorded (Farm.verdict).

Target: exact within down-after-milliseconds + 2 s of the promotion.

    /work/venv/bin/python benchmarks/sentinel.py [--quick] [--runs 5] [--strict]
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import _redis  # noqa: F401  (puts the project on sys.path)
import redis.asyncio
from _report import Report, machine, make_parser

from mcluster.store.connect.urls import make_async_client
from tests.agents import Load, until
from tests.sentinels import SentinelGroup, UrlFarm

DOWN_AFTER_MS = 1000


async def first_write(url: str, since: float, timeout: float = 30.0) -> float:
    """Seconds from ``since`` until a Sentinel client's SET reaches a master."""
    client = make_async_client(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                await client.set("bench:{probe}:w", "1")
                return time.monotonic() - since
            except (redis.RedisError, OSError):
                await asyncio.sleep(0.01)
        return float("inf")
    finally:
        await client.aclose()


async def one_run(workdir: Path) -> tuple[float, float, float, int]:
    """(promoted, first write, exact) seconds after the kill, and bytes replication lost."""
    group = await SentinelGroup.start(down_after_ms=DOWN_AFTER_MS)
    farm = UrlFarm(workdir, redis_server=group.master, heartbeat=0.5, lease_ttl=1.5)
    farm.client_url = group.url
    try:
        await farm.start("n1", "n2", redis_url=group.url, timeout=60)
        async with Load(farm):
            await until(farm.verdict, 30, what="exact before the failover")
            group.proxy.cut = True
            await asyncio.sleep(0.5)
            await farm.flush_all()  # applied on the master only
            killed = group.kill_master()
            writer = asyncio.create_task(first_write(group.url, killed))
            promoted = await group.wait_promoted(30)
            write = await writer
        await until(farm.verdict, 30, what="exact after the failover")
        return promoted, write, time.monotonic() - killed, group.proxy.dropped
    finally:
        await farm.close()
        await group.stop()


async def run(report: Report, runs: int) -> None:
    promoted, writes, exact = [], [], []
    lost = 0
    for i in range(runs):
        workdir = Path(tempfile.mkdtemp(prefix=f"mcluster-sentinel-{i}-"))
        p, w, e, dropped = await one_run(workdir)
        promoted.append(p)
        writes.append(w)
        exact.append(e)
        lost += dropped
        print(f"run {i + 1}: promoted {p:.2f} s, first write {w:.2f} s, exact {e:.2f} s")

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s (max {max(values):.2f})"

    report.figure("runs", str(runs), f"replication held back: {lost} bytes lost in all")
    report.figure("promoted after kill", spread(promoted), "Sentinel's own failover")
    report.figure("baseline: first write after kill", spread(writes), "redis-py Sentinel client")
    report.figure("mcluster exact after kill", spread(exact), "every view exact again")
    after = [e - p for e, p in zip(exact, promoted, strict=True)]
    report.figure("mcluster exact after promotion", spread(after), "re-sync + checking")
    over = [e - w for e, w in zip(exact, writes, strict=True)]
    report.figure("mcluster exact - baseline", spread(over), "what mcluster adds")
    limit = DOWN_AFTER_MS / 1000 + 2
    report.target(
        "views exact within down-after + 2 s of the promotion",
        max(after) <= limit,
        f"max {max(after):.2f} s <= {limit:.1f} s",
    )


def main() -> None:
    parser = make_parser("Sentinel failover: first write and exact views after a kill -9.")
    parser.add_argument("--runs", type=int, default=5, help="failovers to time (default 5)")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    logging.getLogger("mcluster").setLevel(logging.ERROR)
    report = Report(f"sentinel failover - {machine()} - down-after {DOWN_AFTER_MS} ms")
    timer = threading.Timer(120.0 * runs, hung)
    timer.daemon = True
    timer.start()
    try:
        asyncio.run(run(report, runs))
    finally:
        timer.cancel()
    report.print()
    report.exit(args.strict)


def hung() -> None:
    print("benchmark did not finish in time: hung?", file=sys.stderr)
    os._exit(2)


if __name__ == "__main__":
    main()
