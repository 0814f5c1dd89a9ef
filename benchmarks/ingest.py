"""Ingest throughput of one Node on ``inbound_cidr``: the record hot path and applied events/s.

(a) ``node.record`` in a tight loop (no awaits), target >= 300k events/s;
(b) events applied to Redis per second with the background flusher running (default
    max_pending / max_delay): record N events, yielding to the event loop every ``--tick``
    events as an MTA would between connections, then ``await node.flush()``;
(c) the naive baseline, same events: one MULTI/EXEC round trip per event (HINCRBY of a node
    hash and of a global hash), target applied / naive >= 50x (against the faster, sync,
    naive client; the asyncio one is shown too).
Finally the global count of 0.0.0.0/0 must equal the sum of the recorded deltas.

    /work/venv/bin/python benchmarks/ingest.py [--quick] [--strict] [--tick 256]
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time

import redis.asyncio
from _redis import RedisServer, run_benchmark
from _report import Report, make_parser

from mcluster.agent.node import Node
from mcluster.config import parse_config

OBJ = "inbound_cidr"
DISTINCT = 10_000
ZIPF_S = 1.1
PLUS_SHARE = 0.7
RECORD_TARGET = 300_000
RATIO_TARGET = 50.0

Event = tuple[str, int]


def make_events(n: int, seed: int = 7) -> list[Event]:
    """Zipf-like (s = 1.1) over 10k random IPv4 addresses; -1 only where the count is > 0."""
    rng = random.Random(seed)
    pool: set[int] = set()
    while len(pool) < DISTINCT:
        pool.add(rng.getrandbits(32))
    addresses = [str(ipaddress.IPv4Address(a)) for a in sorted(pool)]
    rng.shuffle(addresses)
    weights = [1.0 / (rank + 1) ** ZIPF_S for rank in range(DISTINCT)]
    model = dict.fromkeys(addresses, 0)
    events: list[Event] = []
    for address in rng.choices(addresses, weights, k=n):
        delta = 1 if rng.random() < PLUS_SHARE or model[address] == 0 else -1
        model[address] += delta
        events.append((address, delta))
    return events


def dict_floor(events: list[Event]) -> float:
    """Events/s of the bare minimum: one dict increment per event (the floor of any agent)."""
    counts: dict[str, int] = {}
    start = time.perf_counter()
    for address, delta in events:
        counts[address] = counts.get(address, 0) + delta
    return len(events) / (time.perf_counter() - start)


def naive_sync(server: RedisServer, events: list[Event]) -> float:
    client = server.client()
    start = time.perf_counter()
    for address, delta in events:
        pipe = client.pipeline(transaction=True)
        pipe.hincrby("naive:{inbound_cidr}:n:bench-1", address, delta)
        pipe.hincrby("naive:{inbound_cidr}:g", address, delta)
        pipe.execute()
    rate = len(events) / (time.perf_counter() - start)
    client.close()
    return rate


async def naive_async(server: RedisServer, events: list[Event]) -> float:
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
    start = time.perf_counter()
    for address, delta in events:
        async with client.pipeline(transaction=True) as pipe:
            pipe.hincrby("naive:{inbound_cidr}:n:bench-1", address, delta)
            pipe.hincrby("naive:{inbound_cidr}:g", address, delta)
            await pipe.execute()
    rate = len(events) / (time.perf_counter() - start)
    await client.aclose()
    return rate


async def run(server: RedisServer, quick: bool, tick: int, report: Report) -> None:
    n = 200_000 if quick else 1_000_000
    n_naive = 3_000 if quick else 20_000
    events = make_events(n)
    expected = 2 * sum(d for _, d in events)  # (a) and (b) each record the list once
    report.figure("events per phase", f"{n:,}", f"{DISTINCT:,} addresses, Zipf s={ZIPF_S}")
    report.figure("share of -1 events", f"{sum(d < 0 for _, d in events) / n:.1%}")
    report.figure("floor: dict increment loop", f"{dict_floor(events):,.0f}/s", "reference only")

    cfg = parse_config(f'cluster {{ Replicate "{OBJ}" {{}} }}')
    async with Node(cfg, "bench-1", server.url, namespace="bench") as node:
        record = node.record
        # (a) the hot path: a tight loop, no awaits, so the flusher cannot run meanwhile.
        start = time.perf_counter()
        for address, delta in events:
            record(OBJ, address, delta)
        recorded_rate = n / (time.perf_counter() - start)
        start = time.perf_counter()
        await node.flush()
        bulk_flush = time.perf_counter() - start
        report.figure("(a) node.record, tight loop", f"{recorded_rate:,.0f}/s")
        report.figure("    then one flush of all of it", f"{bulk_flush * 1000:,.0f} ms")
        before = dict(node.stats()[OBJ])

        # (b) applied: the background flusher ships while events keep coming.
        admin = server.client()
        admin.config_resetstat()
        start = time.perf_counter()
        for i, (address, delta) in enumerate(events):
            record(OBJ, address, delta)
            if i % tick == 0:
                await asyncio.sleep(0)
        await node.flush()
        applied_rate = n / (time.perf_counter() - start)
        stats = node.stats()[OBJ]
        batches = stats["batches"] - before["batches"]
        keys_shipped = stats["applied"] - before["applied"]
        report.figure("(b) applied to Redis", f"{applied_rate:,.0f}/s", f"tick = {tick} events")
        report.figure("    batches / keys shipped", f"{batches:,} / {keys_shipped:,}")
        report.figure("    events folded per key shipped", f"{n / max(1, keys_shipped):.1f}")
        evalsha = admin.info("commandstats").get("cmdstat_evalsha", {})
        busy = float(evalsha.get("usec", 0)) / 1e6
        per_call = float(evalsha.get("usec_per_call", 0)) / 1000
        report.figure("    Redis busy in EVALSHA", f"{busy / (n / applied_rate):.0%}", "of (b)")
        report.figure("    one EVALSHA (mean)", f"{per_call:.1f} ms", f"{batches} calls")
        report.figure(
            "    one key shipped, end to end", f"{n / applied_rate / keys_shipped * 1e6:.1f} us"
        )
        admin.close()

        total = await node.count(OBJ, "0.0.0.0/0", view="global")
        mine = await node.count(OBJ, "0.0.0.0/0", view=node.private_name)
        anomalies = stats["anomalies"]
        rejoins = int(getattr(node, "rejoins", 0))  # a re-sync re-ships everything

    sync_rate = naive_sync(server, events[:n_naive])
    async_rate = await naive_async(server, events[: n_naive // 2])
    report.figure("(c) naive, sync redis-py", f"{sync_rate:,.0f}/s", f"{n_naive:,} events")
    report.figure("    naive, redis.asyncio", f"{async_rate:,.0f}/s", f"{n_naive // 2:,} events")
    ratio = applied_rate / sync_rate
    report.figure("applied / naive sync", f"{ratio:,.1f}x")
    report.figure("applied / naive asyncio", f"{applied_rate / async_rate:,.1f}x")
    report.figure("global count 0.0.0.0/0", f"{total:,}", f"node view {mine:,}")
    report.figure("sum of recorded deltas", f"{expected:,}", f"anomalies {anomalies}")

    report.target(
        "record rate", recorded_rate >= RECORD_TARGET, f"{recorded_rate:,.0f}/s >= 300,000/s"
    )
    report.target("applied vs naive", ratio >= RATIO_TARGET, f"{ratio:,.1f}x >= {RATIO_TARGET}x")
    report.target("no re-sync during the run", rejoins == 0, f"node.rejoins = {rejoins}")
    report.target(
        "global total",
        total == expected == mine and anomalies == 0,
        f"global {total:,} == node view {mine:,} == sum of deltas {expected:,}",
    )


def main() -> None:
    parser = make_parser("Ingest throughput of one Node on inbound_cidr.")
    parser.add_argument("--tick", type=int, default=256, help="events between yields in (b)")
    args = parser.parse_args()
    run_benchmark(
        "ingest",
        args.strict,
        lambda server, report: run(server, args.quick, args.tick, report),
        120 if args.quick else 600,
    )


if __name__ == "__main__":
    main()
