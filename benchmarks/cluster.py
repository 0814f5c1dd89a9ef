"""Redis Cluster against a standalone Redis: ingest and throttle throughput, failover times.

In one run, on this machine: a standalone redis-server (the baseline) and a local Redis
Cluster of 3 masters + 3 replicas (tests/redis_cluster.py, cluster-node-timeout 1000 ms).

Throughput cases run 3 rounds (--quick: 1), standalone and Cluster interleaved; the rate
is the median (the machine is shared: single rounds swing by 2x or more).

(1) ingest: one Node records 100k fresh keys into 4 objects (2 CIDR trees, 2 gauge tables,
    which the Cluster spreads over its masters), yielding every 256 events, then flushes:
    applied events/s on each, and the ratio Cluster / standalone. Totals must be exact.
(2) throttles: exact-mode ``acquire`` of one throttle and of 3 throttles at once (all-or-
    nothing: one script, the family shares one slot), 50 concurrent callers: decisions/s
    on each, and the ratio.
(3) failover, 5 runs (--quick: 1): three nodes under steady load, kill -9 the master of
    ``{inbound_cidr}``; the seconds until a replica serves the slot, and until every view is
    exact again (global == sum of node views == what was recorded). The killed node is
    restarted (it rejoins as a replica) before the next run.
    Sentinel failover times are measured by benchmarks/sentinel.py; ``FAILOVERS`` below
    takes more cases of this shape.

    /work/venv/bin/python benchmarks/cluster.py [--quick] [--strict] [--runs 5]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from _redis import RedisServer, start_redis, watchdog
from _report import Report, machine, make_parser, percentile

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.store.keys import ClusterKeys
from tests.cluster_load import Load
from tests.redis_cluster import RedisCluster, start_cluster

INGEST_OBJECTS = (
    "inbound_cidr", "outbound_cidr", "outbound_domains", "outbound_binding_domains",
)  # fmt: skip
INGEST_CONFIG = "cluster {\n" + "".join(f'  Replicate "{o}" {{}}\n' for o in INGEST_OBJECTS)
INGEST_CONFIG += "}\n"
RATE = "1000000000/10"
THROTTLE_CONFIG = f"""cluster {{
  Replicate "shared_named_throttles" {{}}
  Shared_Throttle "a" {{ rate = "{RATE}" deadline_ms = 5000 }}
  Shared_Throttle "b" {{ rate = "{RATE}" deadline_ms = 5000 }}
  Shared_Throttle "c" {{ rate = "{RATE}" deadline_ms = 5000 }}
}}"""
CALLERS = 50
FAILOVER_TARGET_S = 10.0  # node timeout 1 s + promotion + the agents' re-sync

Failover = Callable[[RedisCluster, int, Report], Awaitable[list[float]]]


def events(n: int, seed: int = 7) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    domains = [f"d{i}.example" for i in range(500)]
    out = []
    for _ in range(n):
        obj = rng.choice(INGEST_OBJECTS)
        if obj.endswith("cidr"):
            out.append((obj, ".".join(str(rng.randrange(1, 224)) for _ in range(4))))
        else:
            out.append((obj, rng.choice(domains)))
    return out


async def ingest(url: str, evs: list[tuple[str, str]]) -> tuple[float, bool]:
    """Applied events/s of one node over every object, and whether the totals are exact."""
    namespace = "b" + uuid.uuid4().hex[:8]
    async with Node(parse_config(INGEST_CONFIG), "bench-1", url, namespace=namespace) as node:
        start = time.perf_counter()
        for i, (obj, key) in enumerate(evs):
            node.record(obj, key, 1)
            if i % 256 == 0:
                await asyncio.sleep(0)
        await node.flush()
        rate = len(evs) / (time.perf_counter() - start)
        total = 0
        for obj in INGEST_OBJECTS:
            if obj.endswith("cidr"):
                total += await node.count(obj, "0.0.0.0/0")
            else:
                total += sum(r.count for r in (await node.show(obj, limit=None)).rows)
    return rate, total == len(evs)


async def throttles(url: str, n: int, limits: list[tuple[str, int]]) -> float:
    """Exact-mode decisions/s with CALLERS concurrent callers (every decision allowed)."""
    namespace = "b" + uuid.uuid4().hex[:8]
    async with Node(parse_config(THROTTLE_CONFIG), "bench-1", url, namespace=namespace) as node:
        acquire = node.throttles.acquire
        left = n

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await acquire(limits)

        await acquire(limits)  # scripts loaded, connections open
        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        return n / (time.perf_counter() - start)


async def cluster_failover(cluster: RedisCluster, runs: int, report: Report) -> list[float]:
    """kill -9 the master of {inbound_cidr} under load; seconds until the views are exact."""
    exact_s, promoted_s = [], []
    for run in range(runs):
        namespace = f"fo{run}" + uuid.uuid4().hex[:6]
        key = ClusterKeys(namespace).object("inbound_cidr").views
        victim = cluster.node_of(key)
        load = Load(cluster.url, namespace)
        await load.start()
        try:
            await asyncio.sleep(1.0)
            killed = time.monotonic()
            cluster.kill(victim)
            await asyncio.to_thread(cluster.wait_failover, key, victim)
            promoted_s.append(time.monotonic() - killed)
            await load.wait_exact(60.0)
            exact_s.append(time.monotonic() - killed)
            rejoins = sum(n.rejoins for n in load.nodes)
        finally:
            await load.close()
            cluster.restart(victim)
            await asyncio.to_thread(cluster.wait_ok, 60.0)
            await asyncio.to_thread(cluster.wait_replicas, 60.0)
        report.figure(
            f"  run {run + 1}",
            f"{exact_s[-1]:.2f} s",
            f"replica promoted after {promoted_s[-1]:.2f} s; {rejoins} re-syncs",
        )
    report.figure("  replica promoted, median", f"{statistics.median(promoted_s):.2f} s")
    return exact_s


# Failover cases of this benchmark: name -> coroutine(cluster, runs, report) -> seconds.
# (Sentinel failover: benchmarks/sentinel.py.)
FAILOVERS: dict[str, Failover] = {"Cluster (kill -9 a master)": cluster_failover}


def compare(report: Report, solo: list[float], clu: list[float]) -> None:
    a, b = statistics.median(solo), statistics.median(clu)
    report.figure("  standalone", f"{a:,.0f}/s", f"rounds {min(solo):,.0f}..{max(solo):,.0f}")
    spread = f"rounds {min(clu):,.0f}..{max(clu):,.0f}"
    report.figure("  Cluster", f"{b:,.0f}/s", f"ratio {b / a:.2f}x; {spread}")


async def run(
    server: RedisServer, cluster: RedisCluster, quick: bool, runs: int, report: Report
) -> None:
    n = 20_000 if quick else 100_000
    n_dec = 2_000 if quick else 20_000
    rounds = 1 if quick else 3
    evs = events(n)
    report.figure("Cluster", "3 masters", "+ 3 replicas, cluster-node-timeout 1000 ms")

    report.figure("rounds", str(rounds), "standalone and Cluster interleaved; rate = median")
    report.figure(
        "(1) ingest, applied events/s", "", f"{n:,} events, {len(INGEST_OBJECTS)} objects"
    )
    solo, clu, exact = [], [], True
    for _ in range(rounds):
        for url, rates in ((server.url, solo), (cluster.url, clu)):
            rate, ok = await ingest(url, evs)
            rates.append(rate)
            exact = exact and ok
    compare(report, solo, clu)
    report.target("ingest totals exact", exact, "every round, standalone and Cluster")

    three = [("a", 1), ("b", 1), ("c", 1)]
    for label, limits in (("1 throttle", [("a", 1)]), ("3 throttles", three)):
        report.figure(f"(2) acquire {label}, decisions/s", "", f"{CALLERS} callers, {n_dec:,}")
        solo, clu = [], []
        for _ in range(rounds):
            solo.append(await throttles(server.url, n_dec, limits))
            clu.append(await throttles(cluster.url, n_dec, limits))
        compare(report, solo, clu)

    for name, failover in FAILOVERS.items():
        report.figure(f"(3) failover: {name}", "", f"{runs} runs, kill -> views exact")
        times = await failover(cluster, runs, report)
        report.figure(
            "  median / max", f"{statistics.median(times):.2f} s", f"max {max(times):.2f} s"
        )
        worst = percentile(times, 100)
        report.target(
            f"{name} failover",
            worst <= FAILOVER_TARGET_S,
            f"max {worst:.2f} s <= {FAILOVER_TARGET_S} s",
        )


def on_both(
    name: str,
    quick: bool,
    strict: bool,
    body: Callable[[RedisServer, RedisCluster, Report], Awaitable[None]],
) -> None:
    """Run ``body`` on a fresh standalone server and a fresh local Cluster, print its report
    (also used by benchmarks/shards.py)."""
    server = start_redis()
    cluster = start_cluster()
    timer = watchdog(server, 300 if quick else 1200)
    report = Report(f"{name} - redis {server.version()} - {machine()}")
    try:
        asyncio.run(body(server, cluster, report))
    finally:
        timer.cancel()
        cluster.stop()
        server.stop()
    report.print()
    report.exit(strict)


def main() -> None:
    parser = make_parser("Redis Cluster vs standalone: throughput and failover.")
    parser.add_argument("--runs", type=int, default=5, help="failover runs (--quick: 1)")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs

    async def body(server: RedisServer, cluster: RedisCluster, report: Report) -> None:
        await run(server, cluster, args.quick, runs, report)

    on_both("cluster", args.quick, args.strict, body)


if __name__ == "__main__":
    main()
