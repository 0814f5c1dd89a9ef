"""Redis Cluster under load: a slot moves (resharding), a master is killed (failover).

Three in-process nodes record steadily into a CIDR tree and a gauge table while the
Cluster changes under them; afterwards every view is exact again: global == sum of the
node views == what the nodes recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects.kinds import CIDRTREE, GAUGE_TABLE
from mcluster.store.keys import ClusterKeys
from tests.helpers import Model, until
from tests.redis_cluster import RedisCluster

CONFIG = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 5
  Replicate "inbound_cidr" { max_delay = 0.05 }
  Replicate "outbound_domains" { max_delay = 0.05 }
}
"""
NODES = 3
DOMAINS = ["aol.com", "gmail.com", "yahoo.com", "omniti.com"]


@contextlib.asynccontextmanager
async def under_load(url: str, namespace: str) -> AsyncIterator[tuple[list[Node], Model]]:
    """Three nodes recording about 1,000 events/s until the block ends, then flushed."""
    cfg = parse_config(CONFIG)
    nodes = [Node(cfg, f"relay-0-{i + 1}", url, namespace=namespace) for i in range(NODES)]
    model = Model()
    stop = asyncio.Event()

    async def drive() -> None:
        rng = random.Random(7)
        while not stop.is_set():
            i = rng.randrange(NODES)
            addr = f"10.{rng.randrange(3)}.{rng.randrange(256)}.{rng.randrange(256)}"
            for obj, key in (("inbound_cidr", addr), ("outbound_domains", rng.choice(DOMAINS))):
                nodes[i].record(obj, key, 1)
                model.record(i, obj, key, 1)
            await asyncio.sleep(0.001)

    for node in nodes:
        await node.start()
    driver = asyncio.create_task(drive())
    try:
        await asyncio.sleep(0.5)  # batches are flowing before the Cluster changes
        yield nodes, model
    finally:
        stop.set()
        await driver
        try:
            await check_exact(nodes, model)
        finally:
            for node in nodes:
                await node.stop()


async def check_exact(nodes: list[Node], model: Model) -> None:
    model.flush()

    async def exact() -> bool:
        await asyncio.gather(*(n.flush() for n in nodes))
        for obj, kind in (("inbound_cidr", CIDRTREE), ("outbound_domains", GAUGE_TABLE)):
            expected = [("global", model.global_view(obj, NODES))]
            expected += [(f"relay-0-{i + 1}", model.node_view(i, obj)) for i in range(NODES)]
            for view, counts in expected:
                listing = await nodes[0].show(obj, view, limit=None)
                if listing.rows != kind.model_rows(counts):
                    return False
        return True

    await until(exact, 60.0, "every view exact again after the Cluster changed")


async def test_slot_moves_under_load(redis_cluster: RedisCluster, namespace: str) -> None:
    """The slot of {inbound_cidr} migrates key by key to another master while batches flow."""
    key = ClusterKeys(namespace).object("inbound_cidr").views
    source = redis_cluster.node_of(key)
    target = next(n for n in redis_cluster.masters() if n.port != source.port)
    async with under_load(redis_cluster.url, namespace):
        moved = await asyncio.to_thread(redis_cluster.move_slot, key, target)
        assert moved > 0  # the slot held keys of this test's namespace
    assert redis_cluster.node_of(key).port == target.port


async def test_master_killed_replica_takes_over(
    redis_cluster: RedisCluster, namespace: str
) -> None:
    """kill -9 the master of {inbound_cidr}: its replica takes over, the agents re-sync."""
    key = ClusterKeys(namespace).object("inbound_cidr").views
    victim = redis_cluster.node_of(key)
    try:
        async with under_load(redis_cluster.url, namespace):
            redis_cluster.kill(victim)
            await asyncio.to_thread(redis_cluster.wait_failover, key, victim)
    finally:
        redis_cluster.restart(victim)  # it comes back as a replica of the new master
        await asyncio.to_thread(redis_cluster.wait_ok, 60.0)
        await asyncio.to_thread(redis_cluster.wait_replicas, 60.0)
