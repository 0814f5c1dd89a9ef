"""Audit metrics: events added per second, batched vs one round trip each, and the
latency of window counts over 1M addresses in 6 windows.

1. Ingest through the real path: ``node.audit.record("connect", ip)`` for N distinct IPv4
   addresses (1M; --quick 20k) drawn uniformly over 1.0.0.0-223.255.255.255, with the
   background shipper running, then ``flush``. Monitor "3600,6". Baseline in the same run:
   one ``audit_apply`` call per event (what a client without batching pays), on a sample.
   Target: ratio >= 2x on loopback (every event a new address: nothing coalesces, and
   Redis does the same increments either way; the gap grows with the network's round
   trip). Then the same number of events from 5,000 addresses (repeats coalesce).
2. The 5 older windows are filled with the same addresses through the same script (the
   test-only time offset places them 1..5 windows back), so every window holds N
   addresses; Redis memory per address per window is reported.
3. Count latency: ``inbound_audit show ip`` (all 6 windows x 3 types in one script call)
   for random /8, /16, /20, /24, /28, /32 prefixes of loaded addresses; p50/p99 per length,
   and ``ip_cluster`` (the weighted average). Target: p99 <= 5 ms at every length.

    /work/venv/bin/python benchmarks/metrics.py [--quick] [--strict]
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time

import redis
from _redis import RedisServer, run_benchmark
from _report import Report, make_parser, percentile

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects import audit
from mcluster.objects.audit import EVENT_TYPES, GLOBAL, Item
from mcluster.objects.audit_views import AuditSettings

NS = "bench"
CONF = """
cluster { Replicate "metrics" { parameters = "connect;reception;rejection" max_pending = 512 } }
inbound_audit { monitors = ("3600,6") }
"""
LENGTHS = (8, 16, 20, 24, 28, 32)
RATIO_TARGET, P99_TARGET_MS = 2.0, 5.0
SKEW_ADDRESSES = 5_000
WINDOW_MS = 3_600_000  # an hour: a run on a busy machine stays within a window or two


def addresses(n: int, rng: random.Random) -> list[str]:
    found: set[int] = set()
    while len(found) < n:
        found.add(rng.randrange(0x01000000, 0xE0000000))
    return [str(ipaddress.IPv4Address(a)) for a in found]


async def ingest(node: Node, texts: list[str]) -> float:
    """Record one connect per address, yielding every 2048 so the shipper runs; events/s."""
    start = time.perf_counter()
    for i, text in enumerate(texts):
        node.audit.record("connect", text)
        if i % 2048 == 0:
            await asyncio.sleep(0)
    await node.flush()
    return len(texts) / (time.perf_counter() - start)


async def one_per_event(node: Node, texts: list[str]) -> float:
    """The baseline: one script call (one round trip) per event; events/s."""
    okeys = audit.audit_keys(node.keys)
    targets = node.audit.settings.targets(GLOBAL)
    start = time.perf_counter()
    for i, text in enumerate(texts):
        items = {Item.address(EVENT_TYPES["connect"], text): 1}
        await audit.apply(node.scripts, okeys, "baseline", i + 1, [(targets, items)])
    return len(texts) / (time.perf_counter() - start)


async def fill_older_windows(node: Node, texts: list[str], windows: int) -> float:
    """Windows 1..windows-1 get the same addresses (placed back in time); seconds."""
    okeys = audit.audit_keys(node.keys)
    targets = node.audit.settings.targets(GLOBAL)
    start = time.perf_counter()
    seq = 0
    for back in range(1, windows):
        for i in range(0, len(texts), 128):
            seq += 1
            items = {Item.address("c", t): back + 1 for t in texts[i : i + 128]}
            offset = -back * WINDOW_MS
            await audit.apply(node.scripts, okeys, "fill", seq, [(targets, items)], offset)
    return time.perf_counter() - start


async def latencies(
    node: Node, texts: list[str], rng: random.Random, n: int
) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {length: [] for length in LENGTHS}
    for length in LENGTHS:
        for _ in range(n):
            cidr = f"{rng.choice(texts)}/{length}"
            start = time.perf_counter()
            shown = await node.audit.show_ip(cidr)
            out[length].append((time.perf_counter() - start) * 1000)
            assert len(shown["monitors"][0]["connections"]) == 6
    return out


async def run(server: RedisServer, report: Report, n: int, sample: int, queries: int) -> None:
    rng = random.Random(11)
    texts = addresses(n, rng)
    skewed = rng.choices(texts[:SKEW_ADDRESSES], k=n)  # before the node runs: no long stalls
    sync = redis.Redis.from_url(server.url)
    before = int(sync.info("memory")["used_memory"])
    async with Node(parse_config(CONF), "bench-1", server.url, namespace=NS) as node:
        rate = await ingest(node, texts)
        base = await one_per_event(node, texts[:sample])
        ratio = rate / base
        report.figure("events added/s (node.audit.record + ship)", f"{rate:,.0f}", f"{n:,} events")
        report.figure("events added/s, one round trip each", f"{base:,.0f}", f"{sample:,} events")
        report.figure("ratio", f"{ratio:,.1f}x")
        report.target("batched vs one round trip", ratio >= RATIO_TARGET, f"{ratio:,.1f}x >= 2x")
        srate = await ingest(node, skewed)
        report.figure("events added/s, skewed traffic", f"{srate:,.0f}",
                      f"{n:,} events from {SKEW_ADDRESSES:,} addresses")  # fmt: skip
        report.figure("ratio, skewed traffic", f"{srate / base:,.1f}x", "repeats coalesce")
        filled = await fill_older_windows(node, texts, 6)
        report.figure("fill 5 older windows", f"{filled:,.1f} s", f"{5 * n:,} events, 128 a call")
        used = int(sync.info("memory")["used_memory"]) - before
        report.figure("Redis memory per address per window", f"{used / (6 * n):,.1f} B")
        shown = await node.audit.show_ip("0.0.0.0/0")
        # a window boundary may pass during the run and shift the windows by one: the total
        # must hold whatever the shift (nothing lost, nothing counted twice)
        counts = shown["monitors"][0]["connections"]
        total = 2 * n + sample + sum(n * (k + 1) for k in range(1, 6))
        report.target(
            "every window holds every address",
            sum(counts) == total,
            f"/0 counts {counts}, total {sum(counts):,} == {total:,}",
        )
        lat = await latencies(node, texts, rng, queries)
        worst = 0.0
        for length in LENGTHS:
            p50, p99 = percentile(lat[length], 50), percentile(lat[length], 99)
            worst = max(worst, p99)
            report.figure(f"show ip /{length}: p50 / p99", f"{p50:.2f} / {p99:.2f} ms",
                          "6 windows x 3 types, one call")  # fmt: skip
        weighted = []
        for _ in range(queries):
            start = time.perf_counter()
            await node.audit.ip_cluster("connect", rng.choice(texts), 0, 24)
            weighted.append((time.perf_counter() - start) * 1000)
        p99w = percentile(weighted, 99)
        report.figure("ip_cluster /24 (weighted): p50 / p99",
                      f"{percentile(weighted, 50):.2f} / {p99w:.2f} ms")  # fmt: skip
        report.target("count p99 /8 to /32", worst <= P99_TARGET_MS, f"{worst:.2f} ms <= 5 ms")
    sync.close()


def main() -> None:
    parser = make_parser(__doc__ or "")
    parser.add_argument("--addresses", type=int, default=1_000_000, help="distinct addresses")
    args = parser.parse_args()
    n, sample, queries = (10_000, 500, 100) if args.quick else (args.addresses, 5_000, 1_000)
    settings = AuditSettings.from_config(parse_config(CONF))
    assert settings.monitors == ((3600, 6),)

    async def go(server: RedisServer, report: Report) -> None:
        await run(server, report, n, sample, queries)

    run_benchmark("audit metrics", args.strict, go, 120 if args.quick else 1500)


if __name__ == "__main__":
    main()
