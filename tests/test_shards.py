"""Gauge tables and CIDR trees split into shards (``shards = N``): exact views gathered
across hash slots."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcluster.agent import reaper
from mcluster.agent.node import Node, UnknownObject
from mcluster.agent.reload import reload_config
from mcluster.config import ConfigError, load_config, parse_config
from mcluster.console.snapshot import read_snapshot
from mcluster.objects import cidr_shards, shards
from mcluster.objects.cidrtree import bucket_key
from mcluster.objects.kinds import CIDRTREE, GAUGE_TABLE
from mcluster.store.keys import ClusterKeys
from tests.helpers import Model, crash, until
from tests.redis_cluster import AnyRedis, RedisCluster
from tests.redis_servers import RedisServer

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


@contextlib.asynccontextmanager
async def two_nodes(text: str, url: str, namespace: str) -> AsyncIterator[tuple[Node, Node]]:
    cfg = parse_config(text)
    async with (
        Node(cfg, "relay-0-1", url, namespace=namespace) as a,
        Node(cfg, "relay-0-2", url, namespace=namespace) as b,
    ):
        yield a, b


async def load(
    nodes: tuple[Node, ...], model: Model, obj: str, keys: list[str], rng: random.Random, n: int
) -> None:
    """``n`` random events (increments, some decrements) over the nodes, all flushed."""
    for _ in range(n):
        i = rng.randrange(len(nodes))
        key, delta = rng.choice(keys), rng.choice([1, 1, 2, -1])
        nodes[i].record(obj, key, delta)
        model.record(i, obj, key, delta)
    for node in nodes:
        await node.flush()
    model.flush()


async def test_sharded_gauge_table_is_exact(shared_redis: AnyRedis, namespace: str) -> None:
    rng = random.Random(3)
    model = Model()
    async with two_nodes(CONFIG, shared_redis.url, namespace) as (a, b):
        await load((a, b), model, OBJ, DOMAINS, rng, 400)
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
        ('Replicate "c" { type = "cache" shards = 4 }', "gauge tables and CIDR trees only"),
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


CIDR = "inbound_cidr"
CIDR_CONFIG = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.8
  Replicate "inbound_cidr" { shards = 5 }
}
"""
ADDRESSES = (
    [
        f"{a}.{b}.{c}.{d}"
        for a in (10, 11, 64, 127, 128, 200, 255)
        for b, c, d in ((0, 0, 1), (0, 0, 2), (0, 1, 1), (7, 9, 200), (255, 255, 255))
    ]
    + ["0.0.0.0", "1.2.3.4"]
    + [f"2001:db8:{n:x}::{h:x}" for n in (0, 1, 0x8000) for h in (1, 2, 0x100)]
    + ["2a00:1450::1", "2a00:1451::1", "2600::5", "::1", "fe80::1", "ffff::1"]
)
PREFIXES = [
    "0.0.0.0/0",
    "0.0.0.0/1",
    "10.0.0.0/7",
    "64.0.0.0/2",
    "10.0.0.0/8",
    "10.0.0.0/16",
    "10.0.0.0/24",
    "10.0.0.1",
    "128.0.0.0/1",
    "::/0",
    "2000::/3",
    "2001:db8::/32",
    "2001:db8::/31",
    "2001:db8:1::/48",
    "2001:db8::1",
    "2a00::/15",
    "fe80::/10",
]


async def check_cidr(node: Node, model: Model, nodes: int) -> None:
    listing = await node.show(CIDR, limit=None)
    expected = model.global_view(CIDR, nodes)
    rows = CIDRTREE.model_rows(expected)
    assert listing.rows == rows
    assert listing.total_rows == len(rows) and listing.distinct_keys == len(expected)
    for i in range(nodes):
        mine = await node.show(CIDR, f"relay-0-{i + 1}", limit=None)
        assert mine.rows == CIDRTREE.model_rows(model.node_view(i, CIDR))
        assert mine.total_rows == len(mine.rows)
    by_key = {row.key: row.count for row in rows}
    for prefix in PREFIXES:
        want = by_key.get(prefix if "/" in prefix else f"{prefix}/{32 if '.' in prefix else 128}")
        got = await node.count(CIDR, prefix)
        assert want is None or got == want, prefix
        assert got == sum(c for a, c in expected.items() if _under(a, prefix)), prefix
    first = await node.show(CIDR, limit=7)
    assert first.rows == rows[:7] and first.omitted == max(0, len(rows) - 7)


def _under(address: str, prefix: str) -> bool:
    net = ipaddress.ip_network(prefix, strict=False)
    ip = ipaddress.ip_address(address)
    return ip.version == net.version and ip in net


async def test_sharded_cidr_tree_is_exact(shared_redis: AnyRedis, namespace: str) -> None:
    """A CIDR tree over 5 shards: listings (rows, order, limit, figures), prefix counts
    below and above the block, node views, and a crashed node reaped from every shard."""
    rng = random.Random(8)
    model = Model()
    async with two_nodes(CIDR_CONFIG, shared_redis.url, namespace) as (a, b):
        for round_ in range(3):
            await load((a, b), model, CIDR, ADDRESSES, rng, 300)
            await check_cidr((a, b)[round_ % 2], model, 2)
        # a re-sync (a's view retired in one shard, as if reaped) re-publishes every shard
        owner = shards.shard_of(ipaddress.ip_address("10.0.0.1").packed, 5, CIDRTREE.name)
        box = a.outboxes[shards.box_name(CIDR, owner)]
        await reaper.retire(a.scripts, box.keys, box.view, "relay-0-1")
        a.record(CIDR, "10.0.0.1", 2)
        model.record(0, CIDR, "10.0.0.1", 2)
        await a.flush()  # refused with STALE, then returns after the re-sync
        model.flush()
        assert a.rejoins == 1
        await check_cidr(b, model, 2)
        snapshot = await read_snapshot(a.client, ClusterKeys(namespace))  # the dashboard
        (top,) = [o for o in snapshot.objects if o.name == CIDR]
        expected = model.global_view(CIDR, 2)
        assert len(top.rows) > 1
        for row in top.rows:
            assert row.global_count == sum(c for x, c in expected.items() if _under(x, row.key))
        parts = shards.shard_keys(ClusterKeys(namespace), CIDR, 5)
        client = shared_redis.client()
        roots = [client.hlen(bucket_key(p, "g", b"", 4)) for p in parts]
        assert all(roots) and sum(roots) == len({a.split(".")[0] for a in ADDRESSES if "." in a})
        for address in ("10.0.0.1", "2001:db8::1"):  # a block lives in one shard only
            packed = ipaddress.ip_address(address).packed
            owner = shards.shard_of(packed, 5, CIDRTREE.name)
            assert owner == cidr_shards.block_shard(packed, len(packed), 5)
        await crash(b)

        async def reaped() -> bool:
            listing = await a.show(CIDR, limit=None)
            return listing.rows == CIDRTREE.model_rows(model.node_view(0, CIDR))

        await until(reaped, 20.0, "the crashed node's addresses reaped from every shard")
        for okeys in parts:  # every shard's global view is node a's share of it alone
            assert {v.decode() for v in client.hvals(okeys.views)} == {"relay-0-1"}
        await check_cidr(a, _only(model, 0), 1)


def _only(model: Model, node: int) -> Model:
    alone = Model()
    alone.counts[(0, CIDR)] = dict(model.counts[(node, CIDR)])
    return alone


async def test_cidr_shards_spread_over_masters(redis_cluster: RedisCluster, namespace: str) -> None:
    parts = shards.shard_keys(ClusterKeys(namespace), CIDR, 8)
    assert len({redis_cluster.node_of(p.views).port for p in parts}) > 1


async def test_reload_drains_every_shard_and_keeps_the_layout(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """A removed sharded object is drained from every shard; a changed shard count or a
    new sharded object waits for a restart (the keys' layout never changes under a node)."""
    path = tmp_path / "mc.conf"
    path.write_text(CIDR_CONFIG.replace("}\n}", '}\n  Replicate "outbound_domains" {}\n}'))
    async with Node(load_config(str(path)), "relay-0-1", redis_server.url,
                    namespace=namespace) as node:  # fmt: skip
        for address in ADDRESSES:
            node.record(CIDR, address, 2)
        node.record(OBJ, "aol.com", 1)
        await node.flush()
        assert await node.count(CIDR, "0.0.0.0/0") == 2 * sum("." in a for a in ADDRESSES)
        path.write_text(
            'cluster {\n  Replicate "outbound_domains" { shards = 2 }\n'
            '  Replicate "outbound_cidr" { shards = 3 }\n}\n'
        )
        result = await reload_config(node)
        assert result["removed"] == [CIDR] and result["added"] == []
        assert "object outbound_domains: shards 1 -> 2" in result["needs_restart"]
        assert "object outbound_cidr: new, with shards = 3" in result["needs_restart"]
        client = redis_server.client()
        for okeys in shards.shard_keys(ClusterKeys(namespace), CIDR, 5):
            assert client.hlen(okeys.views) == 0  # this node's view left every shard
            assert client.hlen(bucket_key(okeys, "g", b"", 4)) == 0  # and its counts too
        assert not any(name.startswith(CIDR) for name in node.outboxes)
        with pytest.raises(UnknownObject):
            node.record(CIDR, "10.0.0.1")
        node.record(OBJ, "aol.com", 1)  # unchanged: still one slot, still recording
        await node.flush()
        assert await node.count(OBJ, "aol.com") == 2


async def test_nodes_with_different_shards_are_told(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A node joining with another shard count than a live node's is logged as an error
    naming the object and both counts; the same count is not."""
    same, other = parse_config(CONFIG), parse_config('cluster { Replicate "outbound_domains" {} }')
    with caplog.at_level(logging.ERROR, logger="mcluster.agent"):
        async with (
            Node(same, "relay-0-1", redis_server.url, namespace=namespace),
            Node(same, "relay-0-2", redis_server.url, namespace=namespace),
        ):
            assert not [r for r in caplog.records if "shards" in r.getMessage()]
            async with Node(other, "relay-0-3", redis_server.url, namespace=namespace):
                pass
    (line,) = [r.getMessage() for r in caplog.records if "shards" in r.getMessage()]
    assert "object 'outbound_domains': shards = 1 here, 4 in Redis" in line
