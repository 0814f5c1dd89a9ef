"""CIDR tree at scale: load rate, memory per address, prefix-count latency, listing.

Loads N distinct IPv4 addresses (1M; --quick 100k), drawn uniformly over 1.0.0.0-223.255.
255.255 (the worst case for the tree: nearly every address alone in its /24), through the
real write path (``node.record`` +1 each with the background flusher running, then
``flush``); and a clustered set (64 addresses in each random /24) into a second object for
the memory comparison. Reports load rate; Redis memory (INFO used_memory before/after) per
address per view (the agent writes the node view and the global view), target <= 120 bytes;
the slowest single command while loading (SLOWLOG, threshold 2 ms), target <= 5 ms; p50/p99
of prefix counts at /8 /16 /20 /24 /28 /32 through ``node.count`` and as a raw HMGET, target
p99 <= 2 ms; and the first 200 rows of the global view (``node.show``). Baseline in the same
run: a flat hash of the same addresses (what a naive store keeps) scanned with HSCAN to
count a /8 or /16.

    /work/venv/bin/python benchmarks/cidr_query.py [--quick] [--strict]
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import random
import statistics
import time

import redis
from _redis import RedisServer, run_benchmark
from _report import Report, make_parser, percentile

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects import cidrtree
from mcluster.store.keys import ClusterKeys

NS = "bench"
OBJ, DENSE = "inbound_cidr", "outbound_cidr"
LENGTHS = (8, 16, 20, 24, 28, 32)
Sets = list[tuple[str, list[int], str]]
BYTES_TARGET, SLOW_TARGET_MS, P99_TARGET_MS = 120.0, 5.0, 2.0


def uniform(n: int, rng: random.Random) -> list[int]:
    found: set[int] = set()
    while len(found) < n:
        found.add(rng.randrange(0x01000000, 0xE0000000))
    return list(found)


def clustered(n: int, rng: random.Random) -> list[int]:
    found: set[int] = set()
    while len(found) < n:
        net = rng.randrange(0x010000, 0xE00000) << 8
        found.update(net | host for host in rng.sample(range(256), 64))
    return list(found)[:n]


async def load(node: Node, obj: str, addresses: list[int]) -> float:
    """Record +1 per address, yielding every 2048 so the flusher ships meanwhile; rate/s."""
    texts = [str(ipaddress.IPv4Address(a)) for a in addresses]
    start = time.perf_counter()
    for i, text in enumerate(texts):
        node.record(obj, text, 1)
        if i % 2048 == 0:
            await asyncio.sleep(0)
    await node.flush()
    return len(texts) / (time.perf_counter() - start)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def stream_bytes(client: redis.Redis, obj: str) -> int:
    return int(client.memory_usage(ClusterKeys(NS).object(obj).stream, samples=0) or 0)


def slowest(client: redis.Redis) -> tuple[int, float, str]:
    """(commands over the threshold, slowest in ms, its name and count by name), from SLOWLOG.

    SLOWLOG's own commands are left out: a SLOWLOG RESET of thousands of entries logs itself.
    """
    names: dict[str, int] = {}
    worst, worst_name = 0.0, "-"
    for entry in client.slowlog_get(100_000):
        command = entry["command"]
        text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
        name = (text.split() or ["?"])[0].upper()
        if name != "SLOWLOG":
            names[name] = names.get(name, 0) + 1
            if entry["duration"] / 1000 > worst:
                worst, worst_name = entry["duration"] / 1000, name
    by_name = ", ".join(f"{n} {c:,}" for n, c in sorted(names.items(), key=lambda i: -i[1]))
    return sum(names.values()), worst, f"slowest {worst_name}; {by_name or '-'}"


def prefixes(addresses: list[int], plen: int, k: int, rng: random.Random) -> list[str]:
    shift = 32 - plen
    return [
        f"{ipaddress.IPv4Address(a >> shift << shift)}/{plen}" for a in rng.sample(addresses, k)
    ]


def model_count(ordered: list[int], prefix: str) -> int:
    net = ipaddress.IPv4Network(prefix)
    low, high = int(net.network_address), int(net.broadcast_address)
    return bisect.bisect_right(ordered, high) - bisect.bisect_left(ordered, low)


async def query_latency(
    node: Node, client: redis.Redis, queries: list[str], ordered: list[int]
) -> tuple[list[float], list[float], int]:
    """ms per node.count and per raw HMGET of each prefix, and how many counts were wrong."""
    okeys = ClusterKeys(NS).object(OBJ)
    api, raw, wrong = [], [], 0
    for prefix in queries:
        start = time.perf_counter()
        got = await node.count(OBJ, prefix, view="global")
        api.append((time.perf_counter() - start) * 1000)
        packed, plen = cidrtree.parse_prefix(prefix)
        bucket, fields = cidrtree.count_plan(packed, plen)
        key = cidrtree.bucket_key(okeys, "g", bucket, 4)
        start = time.perf_counter()
        values = client.hmget(key, fields)
        total = sum(int(v) for v in values if v is not None)
        raw.append((time.perf_counter() - start) * 1000)
        wrong += got != model_count(ordered, prefix) or total != got
    return api, raw, wrong


def naive_scan(client: redis.Redis, prefix: str) -> int:
    """Count a /8 or /16 by scanning the whole flat hash (octet-aligned: string prefix)."""
    net = ipaddress.IPv4Network(prefix)
    octets = str(net.network_address).split(".")[: net.prefixlen // 8]
    head = (".".join(octets) + ".").encode()
    return sum(int(v) for k, v in client.hscan_iter("naive:flat", count=1000) if k.startswith(head))


async def load_phase(node: Node, client: redis.Redis, sets: Sets, report: Report) -> None:
    client.slowlog_reset()
    client.config_resetstat()
    for obj, data, label in sets:
        before = used_memory(client)
        rate = await load(node, obj, data)
        per = (used_memory(client) - before) / len(data) / 2
        stream = stream_bytes(client, obj)
        report.figure(f"load {label}: {len(data):,} addresses", f"{rate:,.0f}/s")
        report.figure("  bytes / address / view", f"{per:,.1f}", "INFO used_memory")
        report.figure("  of which change stream", f"{stream / len(data) / 2:,.1f}", f"{stream:,} B")
        report.target(f"memory ({label})", per <= BYTES_TARGET, f"{per:,.1f} B <= 120 B")
    evalsha = client.info("commandstats").get("cmdstat_evalsha", {})
    mean_ms = float(evalsha.get("usec_per_call", 0)) / 1000
    report.figure("EVALSHA while loading", f"{evalsha.get('calls', 0):,}", f"mean {mean_ms:.1f} ms")
    over, worst_ms, names = slowest(client)
    report.figure("commands > 2 ms while loading", f"{over:,}", names)
    detail = f"{worst_ms:.1f} ms <= 5 ms; {over:,} commands over 2 ms ({names})"
    report.target("slowest command while loading", worst_ms <= SLOW_TARGET_MS, detail)
    client.slowlog_reset()


async def query_phase(
    node: Node, client: redis.Redis, addresses: list[int], k: int, report: Report
) -> dict[int, float]:
    """Prefix counts and the first rows; returns node.count p50 (ms) per prefix length."""
    rng = random.Random(9)
    ordered = sorted(addresses)
    api_p99 = raw_p99 = 0.0
    wrong_total = 0
    api_p50: dict[int, float] = {}
    for plen in LENGTHS:
        queries = prefixes(addresses, plen, k, rng)
        api, raw, wrong = await query_latency(node, client, queries, ordered)
        wrong_total += wrong
        api_p50[plen] = percentile(api, 50)
        api_p99, raw_p99 = max(api_p99, percentile(api, 99)), max(raw_p99, percentile(raw, 99))
        value = f"{api_p50[plen]:.2f} / {percentile(api, 99):.2f} ms"
        note = f"raw HMGET {percentile(raw, 50):.2f} / {percentile(raw, 99):.2f} ms"
        report.figure(f"count /{plen}, node.count p50 / p99", value, note)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        listing = await node.show(OBJ, limit=200)
        times.append((time.perf_counter() - start) * 1000)
    note = f"median of 5, first {times[0]:.0f} ms, {listing.total_rows:,} rows in all"
    report.figure(f"rows: first {len(listing.rows)}", f"{statistics.median(times):.0f} ms", note)
    over, worst_ms, cmd = slowest(client)
    report.target("count p99, node.count", api_p99 <= P99_TARGET_MS, f"{api_p99:.2f} ms <= 2 ms")
    report.target("count p99, raw HMGET", raw_p99 <= P99_TARGET_MS, f"{raw_p99:.2f} ms <= 2 ms")
    detail = f"{over} commands over 2 ms ({worst_ms:.1f} ms, {cmd})" if over else "none over 2 ms"
    report.target("no slow command while querying", over == 0, detail)
    report.target("counts exact", wrong_total == 0, f"{wrong_total} counts differ from the model")
    return api_p50


def naive_phase(
    client: redis.Redis, addresses: list[int], k: int, api_p50: dict[int, float], report: Report
) -> None:
    """The baseline: one flat hash of the addresses, a prefix counted by scanning it all."""
    rng = random.Random(13)
    ordered = sorted(addresses)
    before = used_memory(client)
    texts = [str(ipaddress.IPv4Address(a)) for a in addresses]
    for i in range(0, len(texts), 10_000):
        client.hset("naive:flat", mapping=dict.fromkeys(texts[i : i + 10_000], 1))
    flat = (used_memory(client) - before) / len(texts)
    report.figure("baseline flat hash: bytes / address", f"{flat:,.1f}", "one view")
    wrong = 0
    for plen in (8, 16):
        spent = []
        for prefix in prefixes(addresses, plen, k, rng):
            start = time.perf_counter()
            wrong += naive_scan(client, prefix) != model_count(ordered, prefix)
            spent.append((time.perf_counter() - start) * 1000)
        mean = statistics.mean(spent)
        note = f"mean of {k}; {mean / api_p50[plen]:,.0f}x node.count p50"
        report.figure(f"baseline HSCAN count /{plen}", f"{mean:,.0f} ms", note)
    report.target("baseline counts exact", wrong == 0, f"{wrong} differ from the model")


async def run(server: RedisServer, quick: bool, report: Report) -> None:
    n = 100_000 if quick else 1_000_000
    rng = random.Random(5)
    addresses, dense = uniform(n, rng), clustered(n // 5, rng)
    client = server.client()
    client.config_set("slowlog-log-slower-than", 2000)
    client.config_set("slowlog-max-len", 100_000)
    cfg = parse_config(f'cluster {{ Replicate "{OBJ}" {{}} Replicate "{DENSE}" {{}} }}')
    node = Node(cfg, "bench-1", server.url, namespace=NS)
    await node.start()
    try:
        sets = [(OBJ, addresses, "uniform"), (DENSE, dense, "64 per /24")]
        await load_phase(node, client, sets, report)
        api_p50 = await query_phase(node, client, addresses, 200 if quick else 1000, report)
        naive_phase(client, addresses, 2 if quick else 5, api_p50, report)
        rejoins = int(getattr(node, "rejoins", 0))  # a re-sync re-ships everything
        report.target("no re-sync during the run", rejoins == 0, f"node.rejoins = {rejoins}")
    finally:
        await node.stop(drain=False)  # the server is thrown away: no need to drain 1M keys


def main() -> None:
    args = make_parser("CIDR tree load, memory and prefix-count latency.").parse_args()
    run_benchmark(
        "cidr_query",
        args.strict,
        lambda server, report: run(server, args.quick, report),
        120 if args.quick else 1800,
    )


if __name__ == "__main__":
    main()
