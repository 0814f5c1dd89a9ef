"""Replication lag: from ``record`` on a writer Node to the count being visible globally.

Two Nodes (writer and reader) share one Redis. The writer records fresh IPv4 addresses
(+1 each) at a low Poisson rate (50 events/s), so its batches are triggered by max_delay,
the worst case. A watcher on the reader's side waits on the object's pub/sub channel (and
polls every 2 ms besides) and reads the pending addresses' counts in the global view with
one pipelined HMGET of their leaf buckets; the lag of a sample is the time from its record
to the first read that shows it. Target: p99 <= max_delay + 50 ms, for the default
(max_delay = 1.0, max_pending = 100) and the baseline run in the same process with
max_delay = 0.05, which shows that the lag follows max_delay.

    /work/venv/bin/python benchmarks/lag.py [--quick] [--strict]
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time

import redis.asyncio
from _redis import RedisServer, start_redis, watchdog
from _report import Report, machine, make_parser, percentile

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects import cidrtree
from mcluster.store.keys import ClusterKeys

OBJ = "inbound_cidr"
RATE = 50.0
SLACK = 0.050
POLL = 0.002


class Watcher:
    """Finds when each pending address first shows a count in the global view."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str) -> None:
        self.client = client
        self.okeys = ClusterKeys(namespace).object(OBJ)
        self.pending: dict[str, tuple[float, str, bytes]] = {}
        self.lags: list[float] = []
        self.done = asyncio.Event()
        self.expected = 0

    def add(self, address: str, recorded_at: float) -> None:
        packed = ipaddress.IPv4Address(address).packed
        leaf = cidrtree.bucket_key(self.okeys, "g", packed[:3], 4)
        self.pending[address] = (recorded_at, leaf, packed[3:])

    async def check(self) -> None:
        if not self.pending:
            return
        waiting = list(self.pending.items())
        async with self.client.pipeline(transaction=False) as pipe:
            for _, (_, leaf, field) in waiting:
                pipe.hget(leaf, field)
            values = await pipe.execute()
        now = time.perf_counter()
        for (address, (recorded_at, _, _)), value in zip(waiting, values, strict=True):
            if value is not None and int(value) > 0:
                self.lags.append(now - recorded_at)
                del self.pending[address]
        if len(self.lags) >= self.expected:
            self.done.set()

    async def run(self) -> None:
        async with self.client.pubsub() as pubsub:
            await pubsub.subscribe(self.okeys.channel)
            while not self.done.is_set():
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL)
                await self.check()


async def measure(server: RedisServer, max_delay: float | None, samples: int, ns: str) -> Report:
    option = "" if max_delay is None else f"max_delay = {max_delay}"
    cfg = parse_config(f'cluster {{ Replicate "{OBJ}" {{ {option} }} }}')
    obj = cfg.objects[0]
    rng = random.Random(11)
    addresses = [str(ipaddress.IPv4Address(0x0A000000 + 7 * i + 1)) for i in range(samples)]
    async with (
        Node(cfg, "writer", server.url, namespace=ns) as writer,
        Node(cfg, "reader", server.url, namespace=ns) as reader,
    ):
        watch_client = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
        watcher = Watcher(watch_client, ns)
        watcher.expected = samples
        task = asyncio.create_task(watcher.run())
        await asyncio.sleep(0.05)  # subscribed before the first sample
        started = due = time.perf_counter()
        for address in addresses:
            due += rng.expovariate(RATE)  # Poisson arrivals on an absolute schedule
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            watcher.add(address, time.perf_counter())
            writer.record(OBJ, address, 1)
        sent = time.perf_counter() - started
        try:
            await asyncio.wait_for(watcher.done.wait(), timeout=obj.max_delay * 3 + 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await watch_client.aclose()
        seen_by_reader = await reader.count(OBJ, addresses[-1], view="global")
        total = await reader.count(OBJ, "10.0.0.0/8", view="global")
        batches = writer.stats()[OBJ]["batches"]

    lags = watcher.lags
    label = f"max_delay = {obj.max_delay:g} s, max_pending = {obj.max_pending}"
    report = Report(label)
    p50, p99, worst = (percentile(lags, q) for q in (50, 99, 100))
    report.figure("samples", f"{len(lags)} / {samples}", f"{samples / sent:.0f} events/s")
    report.figure("batches shipped", str(batches), f"{samples / max(1, batches):.1f} events each")
    report.figure("lag p50", f"{p50 * 1000:.1f} ms")
    report.figure("lag p99", f"{p99 * 1000:.1f} ms")
    report.figure("lag max", f"{worst * 1000:.1f} ms")
    report.figure("reader: count of last / 10.0.0.0/8", f"{seen_by_reader} / {total}")
    bound = obj.max_delay + SLACK
    report.target(
        f"lag p99 ({label})",
        len(lags) == samples and p99 <= bound,
        f"{p99 * 1000:.1f} ms <= {bound * 1000:.0f} ms, {len(lags)}/{samples} seen",
    )
    report.target("reader sees every sample", total == samples, f"{total} == {samples}")
    return report


async def run(server: RedisServer, quick: bool) -> list[Report]:
    samples = 50 if quick else 300
    default = await measure(server, None, samples, "lagdefault")
    baseline = await measure(server, 0.05, samples, "lagbaseline")
    default.title = f"lag, default: {default.title} - {machine()}"
    baseline.title = f"lag, baseline: {baseline.title}"
    return [default, baseline]


def main() -> None:
    args = make_parser("Replication lag from record to the global view.").parse_args()
    server = start_redis()
    timer = watchdog(server, 120 if args.quick else 300)
    try:
        reports = asyncio.run(run(server, args.quick))
    finally:
        timer.cancel()
        server.stop()
    for report in reports:
        report.print()
    for report in reports:
        report.exit(args.strict)


if __name__ == "__main__":
    main()
