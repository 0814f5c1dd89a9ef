"""Replicated caches: local-replica ``get`` rate against a Redis GET per read, and staleness.

One process, one redis-server, two nodes (a writer and a reader) of a config with one
cache ``c`` (no snapshot, unbounded):

- the writer sets ``--keys`` pairs (10k; --quick 2k), the reader's replica receives them
  through the change stream;
- **get rate**: ``await reader.caches.get("c", key)`` over those keys (all hits), 500k reads
  (--quick 50k); baseline in the same run: one Redis ``GET`` round trip per read of the
  same keys stored as plain strings, with the redis.asyncio client the agent uses and with
  the sync redis-py client (the faster naive), 20k reads each (--quick 2k); the cases run
  in 5 interleaved rounds and each rate is the median of its rounds (robust to other work
  on the machine). Target: hits >= 100x the faster baseline;
- **staleness**: the writer sets a fresh value every 5 ms (500 samples; --quick 100); the
  time from calling ``set`` on the writer to the value being in the reader's replica
  (the reader is polled on every turn of the event loop), and the agent's own measure
  (Redis time of the write to the replica applying it, ``stats()["replica"]
  ["staleness_ms"]``). Target: p99 <= 50 ms. Baseline: one Redis round trip (PING).

    /work/venv/bin/python benchmarks/cache.py [--quick] [--strict] [--keys N]
"""

from __future__ import annotations

import asyncio
import statistics
import time

import redis
import redis.asyncio
from _redis import RedisServer, run_benchmark
from _report import Report, make_parser, percentile

from mcluster.agent.caches import CacheReplicaStats
from mcluster.agent.node import Node
from mcluster.config import parse_config

CONFIG = 'Datasource "c" {}\ncluster { Replicate "c" { type = "cache" } }\n'
GAP = 0.005
ROUNDS = 5


async def hit_round(reader: Node, keys: list[str], reads: int) -> tuple[float, int]:
    """``await reader.caches.get`` over ``keys`` until ``reads`` reads: (reads/s, hits)."""
    get = reader.caches.get
    stats = reader.caches.replicas["c"].stats
    before = stats.hits
    rounds = max(1, reads // len(keys))
    start = time.perf_counter()
    for _ in range(rounds):
        for key in keys:
            await get("c", key)
    elapsed = time.perf_counter() - start
    return rounds * len(keys) / elapsed, stats.hits - before


async def async_get_round(client: redis.asyncio.Redis, plain: list[str], reads: int) -> float:
    """One GET round trip per read with redis.asyncio: reads/s."""
    start = time.perf_counter()
    for i in range(reads):
        await client.get(plain[i % len(plain)])
    return reads / (time.perf_counter() - start)


def sync_get_round(client: redis.Redis, plain: list[str], reads: int) -> float:
    """One GET round trip per read with the sync client: reads/s."""
    start = time.perf_counter()
    for i in range(reads):
        client.get(plain[i % len(plain)])
    return reads / (time.perf_counter() - start)


async def get_rates(
    server: RedisServer, reader: Node, keys: list[str], reads: int, naive: int
) -> tuple[float, float, float, int]:
    """Interleaved rounds (robust to other work on the machine); medians of each case."""
    aclient = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
    sclient = redis.Redis(host="127.0.0.1", port=server.port)
    plain = [f"plain:{k}" for k in keys]
    sclient.mset({p: f"value of {p}" for p in plain})
    hits, asyncs, syncs = [], [], []
    local = 0
    try:
        for _ in range(ROUNDS):
            rate, found = await hit_round(reader, keys, reads // ROUNDS)
            hits.append(rate)
            local += found
            asyncs.append(await async_get_round(aclient, plain, naive // ROUNDS))
            syncs.append(sync_get_round(sclient, plain, naive // ROUNDS))
            await asyncio.sleep(0.05)  # let the heartbeats run between rounds
    finally:
        await aclient.aclose()
        sclient.close()
    median = statistics.median
    return median(hits), median(asyncs), median(syncs), local


async def staleness(writer: Node, reader: Node, samples: int) -> list[float]:
    """Seconds from ``set`` on the writer to the value held by the reader's replica."""
    lags = []
    for i in range(samples):
        value = f"v{i}"
        started = time.perf_counter()
        await writer.caches.set("c", "hot", value)
        while reader.caches.peek("c", "hot") != value:
            await asyncio.sleep(0)
            if time.perf_counter() - started > 5:
                raise RuntimeError(f"sample {i} not replicated within 5 s")
        lags.append(time.perf_counter() - started)
        await asyncio.sleep(GAP)
    return lags


async def round_trips(server: RedisServer, samples: int) -> list[float]:
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
    try:
        out = []
        for _ in range(samples):
            started = time.perf_counter()
            await client.ping()
            out.append(time.perf_counter() - started)
            await asyncio.sleep(GAP)
        return out
    finally:
        await client.aclose()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def run(server: RedisServer, report: Report, quick: bool, nkeys: int) -> None:
    cfg = parse_config(CONFIG, "bench.conf")
    reads, naive_reads, samples = (50_000, 2_000, 100) if quick else (500_000, 20_000, 500)
    keys = [f"user:{i}" for i in range(nkeys)]
    async with (
        Node(cfg, "writer", server.url, namespace="bench") as writer,
        Node(cfg, "reader", server.url, namespace="bench") as reader,
    ):
        loaded = time.perf_counter()
        for key in keys:
            await writer.caches.set("c", key, f"value of {key}")
        set_rate = nkeys / (time.perf_counter() - loaded)
        deadline = time.perf_counter() + 30
        replica = reader.caches.replicas["c"]
        while len(replica.entries) < nkeys and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        report.figure("pairs set (writer, one script call each)", f"{nkeys}", f"{set_rate:,.0f}/s")
        report.figure("held by the reader's replica", f"{len(replica.entries)}")

        hit_rate, async_rate, sync_rate, local = await get_rates(
            server, reader, keys, reads, naive_reads
        )
        reads = reads // ROUNDS // nkeys * nkeys * ROUNDS
        naive = max(async_rate, sync_rate)
        report.figure("get, replica hits", f"{hit_rate:,.0f}/s", f"{local}/{reads} from replica")
        report.figure("baseline: GET per read, redis.asyncio", f"{async_rate:,.0f}/s")
        report.figure("baseline: GET per read, sync redis-py", f"{sync_rate:,.0f}/s")
        ratio = hit_rate / naive
        report.figure("hits / faster baseline", f"{ratio:,.1f}x", f"{hit_rate / async_rate:,.1f}x "
                      "against redis.asyncio")  # fmt: skip
        report.target("get rate", ratio >= 100 and local == reads, f"{ratio:,.1f}x >= 100x")

        replica.staleness_ms.clear()  # the agent's figure over the same samples
        lags = await staleness(writer, reader, samples)
        agent = CacheReplicaStats.of(reader.caches.replicas["c"])["staleness_ms"]
        rtt = await round_trips(server, samples)
    p50, p99, worst = (percentile(lags, q) for q in (50, 99, 100))
    report.figure("staleness, set -> reader's replica", f"p50 {ms(p50)}, p99 {ms(p99)}",
                  f"max {ms(worst)}, {samples} samples")  # fmt: skip
    own = f"p50 {agent['p50']:.2f} ms, p99 {agent['p99']:.2f} ms"
    report.figure("staleness, agent's own measure", own, f"{agent['samples']} samples (Redis time)")
    report.figure("baseline: one round trip (PING)",
                  f"p50 {ms(percentile(rtt, 50))}, p99 {ms(percentile(rtt, 99))}")  # fmt: skip
    report.target("staleness p99", p99 <= 0.050, f"{ms(p99)} <= 50 ms")


def main() -> None:
    parser = make_parser("Replicated cache reads and staleness.")
    parser.add_argument("--keys", type=int, default=0, help="pairs in the cache")
    args = parser.parse_args()
    nkeys = args.keys or (2_000 if args.quick else 10_000)

    async def go(server: RedisServer, report: Report) -> None:
        await run(server, report, args.quick, nkeys)

    run_benchmark("cache", args.strict, go, 120 if args.quick else 600)


if __name__ == "__main__":
    main()
