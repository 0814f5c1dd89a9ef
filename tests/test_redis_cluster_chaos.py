"""Redis Cluster under load: a slot moves (resharding), a master is killed (failover).

Three in-process nodes record steadily (tests/cluster_load.py) while the Cluster changes
under them; afterwards every view is exact again: global == sum of the node views == what
the nodes recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mcluster.objects import shards
from mcluster.objects.kinds import CIDRTREE
from mcluster.store.keys import ClusterKeys
from tests.cluster_load import SHARDED_CONFIG, under_load
from tests.redis_cluster import RedisCluster


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
    await kill_master_under_load(redis_cluster, namespace, key)


async def kill_master_under_load(
    redis_cluster: RedisCluster, namespace: str, key: str, **load: Any
) -> None:
    """kill -9 the master of ``key`` under load; views exact after the failover."""
    victim = redis_cluster.node_of(key)
    try:
        async with under_load(redis_cluster.url, namespace, **load):
            redis_cluster.kill(victim)
            await asyncio.to_thread(redis_cluster.wait_failover, key, victim)
    finally:
        redis_cluster.restart(victim)  # it comes back as a replica of the new master
        await asyncio.to_thread(redis_cluster.wait_ok, 60.0)
        await asyncio.to_thread(redis_cluster.wait_replicas, 60.0)


async def test_master_of_one_shard_killed(redis_cluster: RedisCluster, namespace: str) -> None:
    """Sharded objects (4 shards each) under load: kill -9 the master of the shard of
    10.0.0.0/8 of inbound_cidr; its replica takes over and every view, gathered over the
    shards on several masters, is exact again."""
    blocks = (10, 11, 64, 172, 200)
    parts = shards.shard_keys(ClusterKeys(namespace), "inbound_cidr", 4)
    owner = shards.shard_of(bytes([10, 0, 0, 1]), 4, CIDRTREE.name)
    assert len({shards.shard_of(bytes([b, 0, 0, 1]), 4, CIDRTREE.name) for b in blocks}) > 1
    assert len({redis_cluster.node_of(p.views).port for p in parts}) > 1
    await kill_master_under_load(
        redis_cluster, namespace, parts[owner].views, config=SHARDED_CONFIG, blocks=blocks
    )
