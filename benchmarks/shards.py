"""A CIDR tree split into shards against the same tree in one slot (the baseline), on a
standalone Redis and on a local Redis Cluster of 3 masters + 3 replicas, in one run.

For each Redis and each layout (``shards = 1``, ``shards = 8``), 3 rounds (--quick: 1),
interleaved, median reported (the machine is shared):

(1) ingest: one Node records N fresh IPv4 addresses (spread over every /8 from 1 to 223)
    into ``inbound_cidr``, yielding every 256 events, then flushes: applied events/s;
(2) listing: ``cluster shared show inbound_cidr`` of every row (the gathered walk for
    the sharded layout): seconds, and whether the rows equal the model's exactly;
(3) ``/0`` count: one prefix count shorter than the block (one HMGET per shard): ms.

    /work/venv/bin/python benchmarks/shards.py [--quick] [--strict]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid

from _redis import RedisServer
from _report import Report, make_parser
from cluster import on_both

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects.kinds import CIDRTREE
from tests.redis_cluster import RedisCluster

OBJ = "inbound_cidr"
LAYOUTS = (1, 8)


def addresses(n: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    found: set[str] = set()
    while len(found) < n:
        found.add(".".join(str(b) for b in (rng.randrange(1, 224), *rng.randbytes(3))))
    return sorted(found)


async def one_round(url: str, shards: int, addrs: list[str]) -> tuple[float, float, float, bool]:
    """(events/s, listing seconds, /0 count ms, listing exact) for one layout."""
    config = parse_config(f'cluster {{\n  Replicate "{OBJ}" {{ shards = {shards} }}\n}}\n')
    namespace = "b" + uuid.uuid4().hex[:8]
    async with Node(config, "bench-1", url, namespace=namespace) as node:
        start = time.perf_counter()
        for i, address in enumerate(addrs):
            node.record(OBJ, address, 1)
            if i % 256 == 0:
                await asyncio.sleep(0)
        await node.flush()
        rate = len(addrs) / (time.perf_counter() - start)
        start = time.perf_counter()
        listing = await node.show(OBJ, limit=None)
        list_s = time.perf_counter() - start
        start = time.perf_counter()
        total = await node.count(OBJ, "0.0.0.0/0")
        count_ms = (time.perf_counter() - start) * 1000
        exact = total == len(addrs) and listing.rows == CIDRTREE.model_rows(dict.fromkeys(addrs, 1))
    return rate, list_s, count_ms, exact


async def run(urls: dict[str, str], quick: bool, report: Report) -> None:
    n = 10_000 if quick else 100_000
    rounds = 1 if quick else 3
    addrs = addresses(n)
    report.figure("addresses", f"{n:,}", f"IPv4 over the /8s 1..223; {rounds} round(s), median")
    found: dict[tuple[str, int], list[tuple[float, float, float, bool]]] = {}
    for _ in range(rounds):
        for where, url in urls.items():
            for shards in LAYOUTS:
                found.setdefault((where, shards), []).append(await one_round(url, shards, addrs))
    exact = all(r[3] for results in found.values() for r in results)
    for where in urls:
        base = found[(where, 1)]
        for shards in LAYOUTS:
            results = found[(where, shards)]
            rate = statistics.median(r[0] for r in results)
            list_s = statistics.median(r[1] for r in results)
            count_ms = statistics.median(r[2] for r in results)
            ratio = rate / statistics.median(r[0] for r in base)
            list_ratio = list_s / statistics.median(r[1] for r in base)
            report.figure(
                f"{where}, shards = {shards}",
                f"{rate:,.0f} events/s",
                f"x{ratio:.2f} of shards = 1; listing {list_s:.2f} s (x{list_ratio:.2f}); "
                f"/0 count {count_ms:.1f} ms",
            )
    report.target("listings and /0 counts exact", exact, "every round, layout and Redis")


def main() -> None:
    args = make_parser("A sharded CIDR tree vs one slot, standalone and Cluster.").parse_args()

    async def body(server: RedisServer, cluster: RedisCluster, report: Report) -> None:
        await run({"standalone": server.url, "Cluster": cluster.url}, args.quick, report)

    on_both("shards", args.quick, args.strict, body)


if __name__ == "__main__":
    main()
