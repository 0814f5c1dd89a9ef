"""Gauge tables split into shards (``shards = N``): exact views gathered across hash slots."""

from __future__ import annotations

import random

import pytest

from mcluster.agent.node import Node
from mcluster.config import ConfigError, parse_config
from mcluster.objects import shards
from mcluster.objects.kinds import GAUGE_TABLE
from mcluster.store.keys import ClusterKeys
from tests.helpers import Model, crash, until
from tests.redis_cluster import AnyRedis, RedisCluster

CONFIG = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.8
  Replicate "outbound_domains" { shards = 4 }
  Replicate "inbound_cidr" {}
}
"""
OBJ = "outbound_domains"
DOMAINS = [f"d{i}.example" for i in range(40)] + ["ünï.example", "aol.com"]


async def check(node: Node, model: Model, nodes: int) -> None:
    listing = await node.show(OBJ, limit=None)
    expected = model.global_view(OBJ, nodes)
    assert listing.rows == GAUGE_TABLE.model_rows(expected)
    assert listing.distinct_keys == listing.total_rows == len(expected)
    for i in range(nodes):
        mine = await node.show(OBJ, f"relay-0-{i + 1}", limit=None)
        assert mine.rows == GAUGE_TABLE.model_rows(model.node_view(i, OBJ))
    for domain in DOMAINS[::7]:
        assert await node.count(OBJ, domain) == expected.get(domain, 0)
        assert await node.count(OBJ, domain, "relay-0-2") == model.node_view(1, OBJ).get(domain, 0)
    first = await node.show(OBJ, limit=5)
    assert first.rows == listing.rows[:5] and first.omitted == max(0, len(expected) - 5)


async def test_sharded_gauge_table_is_exact(shared_redis: AnyRedis, namespace: str) -> None:
    cfg = parse_config(CONFIG)
    rng = random.Random(3)
    model = Model()
    async with (
        Node(cfg, "relay-0-1", shared_redis.url, namespace=namespace) as a,
        Node(cfg, "relay-0-2", shared_redis.url, namespace=namespace) as b,
    ):
        for _ in range(400):
            i = rng.randrange(2)
            domain, delta = rng.choice(DOMAINS), rng.choice([1, 1, 2, -1])
            (a, b)[i].record(OBJ, domain, delta)
            model.record(i, OBJ, domain, delta)
        await a.flush()
        await b.flush()
        model.flush()
        await check(a, model, 2)
        # every shard holds part of the keys, under its own hash tag
        parts = shards.shard_keys(ClusterKeys(namespace), OBJ, 4)
        assert len({p.base for p in parts}) == 4
        assert all(shared_redis.client().hlen(p.data("g")) > 0 for p in parts)
        assert {n for n in a.stats() if n.startswith(OBJ)} == {
            shards.box_name(OBJ, k) for k in range(4)
        }
        # a crashed node's share leaves every shard (reaping)
        await crash(b)

        async def reaped() -> bool:
            listing = await a.show(OBJ, limit=None)
            return listing.rows == GAUGE_TABLE.model_rows(model.node_view(0, OBJ))

        await until(reaped, 10.0, "the crashed node's share reaped from every shard")


async def test_shards_spread_over_masters(redis_cluster: RedisCluster, namespace: str) -> None:
    parts = shards.shard_keys(ClusterKeys(namespace), OBJ, 8)
    assert len({redis_cluster.node_of(p.views).port for p in parts}) > 1


@pytest.mark.parametrize(
    ("stanza", "message"),
    [
        ('Replicate "inbound_cidr" { shards = 4 }', "gauge tables only"),
        ('Replicate "outbound_domains" { shards = 0 }', "an integer from 1 to 256"),
        ('Replicate "outbound_domains" { shards = "x" }', "an integer from 1 to 256"),
    ],
)
def test_bad_shards_is_a_config_error(stanza: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(f"cluster {{\n  {stanza}\n}}\n", "s.conf")
    assert "s.conf:2" in str(info.value)


def test_shard_of_is_stable_and_spread() -> None:
    keys = [d.encode() for d in DOMAINS]
    assert [shards.shard_of(k, 4) for k in keys] == [shards.shard_of(k, 4) for k in keys]
    assert len({shards.shard_of(k, 4) for k in keys}) == 4
    assert {shards.shard_of(k, 1) for k in keys} == {0}
