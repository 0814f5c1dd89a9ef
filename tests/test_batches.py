"""Exactly-once batches: a lost reply, SCRIPT FLUSH, a stale view, clamping at zero."""

from __future__ import annotations

import pytest
import redis

from mcluster.agent import reaper
from mcluster.agent.node import Node
from mcluster.store.scripts import script_source, scripts_dir
from tests.agents import RedisProxy
from tests.helpers import config
from tests.redis_cluster import AnyRedis
from tests.redis_servers import RedisServer


async def test_lost_reply_is_retried_without_double_count(
    redis_server: RedisServer, namespace: str
) -> None:
    proxy = RedisProxy(redis_server.port)
    await proxy.start()
    try:
        url = proxy.url
        async with Node(config(), "relay-0-1", url, namespace=namespace) as node:
            node.record("inbound_cidr", "10.0.0.180", 5)
            node.record("outbound_domains", "aol.com", 2)
            await node.flush()
            proxy.drop_reply_to = b"EVALSHA"  # Redis runs the next batch; its reply is lost
            node.record("inbound_cidr", "10.0.0.180", 3)
            node.record("inbound_cidr", "2001:db8::1", 1)
            await node.flush()
            assert proxy.dropped == 1
            stats = node.stats()["inbound_cidr"]
            assert stats["repeats"] == 1, stats  # the retry found its seq already applied
            assert await node.count("inbound_cidr", "10.0.0.180") == 8
            assert await node.count("inbound_cidr", "::/0") == 1
            assert await node.count("inbound_cidr", "10.0.0.180", "relay-0-1") == 8
            assert await node.count("outbound_domains", "aol.com") == 2
    finally:
        await proxy.stop()


async def test_script_flush_between_batches(shared_redis: AnyRedis, namespace: str) -> None:
    async with Node(config(), "relay-0-1", shared_redis.url, namespace=namespace) as node:
        node.record("inbound_cidr", "10.1.2.3", 1)
        await node.flush()
        shared_redis.client().script_flush()
        node.record("inbound_cidr", "10.1.2.3", 1)
        node.record("outbound_domains", "yahoo.com", 1)
        await node.flush()
        assert await node.count("inbound_cidr", "10.1.2.0/24") == 2
        assert await node.count("outbound_domains", "yahoo.com") == 1


async def test_stale_view_is_refused_and_resynced(shared_redis: AnyRedis, namespace: str) -> None:
    """A batch from a retired view (stale epoch) is refused; the node re-syncs and its
    events are counted exactly once, through the snapshot."""
    async with Node(config(), "relay-0-1", shared_redis.url, namespace=namespace) as node:
        node.record("inbound_cidr", "10.0.0.1", 1)
        await node.flush()
        box = node.outboxes["inbound_cidr"]
        old = box.view
        await reaper.retire(node.scripts, box.keys, old, "relay-0-1")  # as if reaped
        node.record("inbound_cidr", "10.0.0.1", 1)
        await node.flush()  # refused with STALE, then returns after the re-sync
        assert node.rejoins == 1 and box.view != old
        assert await node.count("inbound_cidr", "10.0.0.1") == 2
        assert await node.count("inbound_cidr", "10.0.0.1", "relay-0-1") == 2
        assert node.stats()["inbound_cidr"]["repeats"] == 0


async def test_decrement_below_zero_is_clamped_and_counted(
    shared_redis: AnyRedis, namespace: str
) -> None:
    cfg = config()
    async with (
        Node(cfg, "relay-0-1", shared_redis.url, namespace=namespace) as a,
        Node(cfg, "relay-0-2", shared_redis.url, namespace=namespace) as b,
    ):
        a.record("inbound_cidr", "10.0.0.1", 2)
        b.record("inbound_cidr", "10.0.0.1", 1)
        await a.flush()
        await b.flush()
        b.record("inbound_cidr", "10.0.0.1", -3)  # b only had 1: clamp at 0, anomaly 2
        await b.flush()
        assert await a.count("inbound_cidr", "10.0.0.1") == 2
        assert await a.count("inbound_cidr", "10.0.0.1", "relay-0-2") == 0
        listing = await a.show("inbound_cidr", "relay-0-2")
        assert listing.anomalies == 2
        assert (await a.show("inbound_cidr", "relay-0-1")).anomalies == 0
        assert (await a.show("inbound_cidr")).anomalies == 2


async def test_bad_keys_and_deltas_are_refused(shared_redis: AnyRedis, namespace: str) -> None:
    async with Node(config(), "relay-0-1", shared_redis.url, namespace=namespace) as node:
        with pytest.raises(ValueError, match="not a valid IPv4 or IPv6 address"):
            node.record("inbound_cidr", "10.0.0.300", 1)
        with pytest.raises(ValueError, match="CIDR block"):
            node.record("inbound_cidr", "10.0.0.0/24", 1)
        with pytest.raises(KeyError, match="unknown object 'nope'"):
            node.record("nope", "10.0.0.1", 1)
        with pytest.raises(TypeError, match="delta must be an integer"):
            node.record("inbound_cidr", "10.0.0.1", 1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="1024"):
            node.record("outbound_domains", "x" * 1025, 1)
        with pytest.raises(ValueError, match="not a valid IP address or CIDR block"):
            await node.count("inbound_cidr", "10.0.0.0/33")
        assert node.stats()["inbound_cidr"]["recorded"] == 0


def test_every_script_opens_with_its_contract() -> None:
    for path in scripts_dir().glob("*.lua"):
        head = path.read_text()[:1500]
        for word in ("KEYS", "ARGV", "Return", "Cost"):
            assert word in head, f"{path.name} does not state its {word}"


def test_every_script_loads(shared_redis: AnyRedis) -> None:
    client = shared_redis.client()
    for path in scripts_dir().glob("*.lua"):
        if not path.name.startswith("_"):
            assert client.script_load(script_source(path.stem))
    with pytest.raises(KeyError, match="no Lua script named"):
        script_source("nope")
    with pytest.raises(redis.ResponseError):
        client.evalsha("0" * 40, 0)


@pytest.mark.parametrize("pause", [0.0, 0.005, 0.02])
async def test_stop_loses_nothing_and_never_hangs(
    shared_redis: AnyRedis, namespace: str, pause: float
) -> None:
    """Stopping while a large flush is in flight ships all of it, then leaves (no hang on
    Python 3.11, where wait_for may swallow a cancellation)."""
    import asyncio

    node = Node(config(), "relay-0-1", shared_redis.url, namespace=namespace)
    await node.start()
    for i in range(5000):
        node.record("inbound_cidr", f"10.{i // 256 % 256}.{i % 256}.{i % 7}", 1)
    await asyncio.sleep(pause)
    async with asyncio.timeout(30):
        await node.stop(drain=False)
    async with Node(config(), "observer", shared_redis.url, namespace=namespace) as observer:
        assert await observer.count("inbound_cidr", "0.0.0.0/0") == 5000
