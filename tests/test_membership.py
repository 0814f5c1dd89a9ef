"""Leases, leader, reaping and re-sync, in-process (fast settings: beat 0.2 s, lease 0.6 s)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

import pytest
import redis.exceptions

from mcluster.agent import membership
from mcluster.agent.node import Node
from mcluster.agent.outbox import Outbox
from mcluster.config import parse_config
from mcluster.store import members
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts
from tests.helpers import crash, redis_pids, until, until_running
from tests.redis_cluster import AnyRedis

FAST = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.6
  Replicate "inbound_cidr" {}
  Replicate "outbound_domains" {}
}
"""


@contextlib.asynccontextmanager
async def two_nodes(server: AnyRedis, namespace: str) -> AsyncIterator[tuple[Node, Node]]:
    """Two started nodes with the fast settings; both leave at the end (a crashed one too)."""
    cfg = parse_config(FAST)
    async with (
        Node(cfg, "relay-0-1", server.url, namespace=namespace) as a,
        Node(cfg, "relay-0-2", server.url, namespace=namespace) as b,
    ):
        yield a, b


async def test_dead_node_is_reaped(shared_redis: AnyRedis, namespace: str) -> None:
    async with two_nodes(shared_redis, namespace) as (a, b):
        for i in range(300):
            a.record("inbound_cidr", f"10.0.{i % 3}.{i % 250}", 1)
            b.record("inbound_cidr", f"10.9.{i % 5}.{i % 200}", 1)
        b.record("outbound_domains", "aol.com", 7)
        await a.flush()
        await b.flush()
        assert await a.count("inbound_cidr", "0.0.0.0/0") == 600
        await crash(b)

        async def exact() -> bool:
            return (
                await a.count("inbound_cidr", "0.0.0.0/0") == 300
                and await a.count("outbound_domains", "aol.com") == 0
            )

        pids = redis_pids(shared_redis)  # the bound counts lease time, not CPU waits
        await until_running(exact, 0.6 + 1.0, "dead node's counts leave the global views", pids)
        keys = ClusterKeys(namespace)

        async def gone() -> bool:
            live = await members.all_members(a.client, keys)
            return [m.node for m in live] == ["relay-0-1"]

        await until(gone, 1.0, "the dead node leaves the membership")


async def test_leader_moves_when_leader_dies(shared_redis: AnyRedis, namespace: str) -> None:
    cfg = parse_config(FAST)
    nodes = [Node(cfg, f"relay-0-{i}", shared_redis.url, namespace=namespace) for i in (1, 2, 3)]
    for node in nodes:
        await node.start()
    keys = ClusterKeys(namespace)
    try:

        async def has_leader() -> bool:
            return await members.leader(nodes[0].client, keys) is not None

        await until(has_leader, 1.0, "a leader is elected")
        first = await members.leader(nodes[0].client, keys)
        assert first is not None
        dead = next(n for n in nodes if n.private_name == first[0])
        dead.record("inbound_cidr", "192.168.7.1", 5)
        await dead.flush()
        live = [n for n in nodes if n is not dead]
        await crash(dead)

        async def new_leader() -> bool:
            now = await members.leader(live[0].client, keys)
            return now is not None and now[0] != first[0] and now[1] > first[1]

        pids = redis_pids(shared_redis)  # the bounds count lease time, not CPU waits
        await until_running(new_leader, 0.6 + 0.1, "a new leader within one lease TTL", pids)

        async def reaped() -> bool:
            return await live[0].count("inbound_cidr", "192.168.7.0/24") == 0

        await until_running(reaped, 1.6, "the new leader reaps the old one", pids)
    finally:
        for node in nodes:
            await node.stop()


async def test_flushall_resyncs_everyone(shared_redis: AnyRedis, namespace: str) -> None:
    async with two_nodes(shared_redis, namespace) as (a, b):
        a.record("inbound_cidr", "10.0.0.1", 3)
        b.record("inbound_cidr", "10.0.0.1", 2)
        b.record("inbound_cidr", "2001:db8::7", 1)
        b.record("outbound_domains", "gmail.com", 4)
        await a.flush()
        await b.flush()
        epochs = (a.member.epoch if a.member else 0, b.member.epoch if b.member else 0)
        shared_redis.client().flushall()
        a.record("inbound_cidr", "10.0.0.1", 1)  # recorded while the data is gone

        async def exact() -> bool:
            await a.flush()
            return (
                await a.count("inbound_cidr", "10.0.0.1") == 6
                and await a.count("inbound_cidr", "::/0") == 1
                and await a.count("outbound_domains", "gmail.com") == 4
                and await a.count("inbound_cidr", "10.0.0.1", "relay-0-1") == 4
            )

        await until(exact, 2.0, "views exact again after FLUSHALL")
        assert a.rejoins >= 1 and b.rejoins >= 1
        assert a.member is not None and a.member.epoch > epochs[0]
        assert b.member is not None and b.member.epoch > epochs[1]


async def test_retired_view_rejoins_with_snapshot(shared_redis: AnyRedis, namespace: str) -> None:
    """A node whose view was retired (as after a long pause) re-publishes its state once."""
    cfg = parse_config(FAST)
    async with Node(cfg, "relay-0-1", shared_redis.url, namespace=namespace) as a:
        a.record("inbound_cidr", "10.1.2.3", 2)
        await a.flush()
        old = a.private_name
        client = shared_redis.client()
        client.delete(ClusterKeys(namespace).lease("relay-0-1"))  # the lease ran out
        a.record("inbound_cidr", "10.1.2.3", 1)

        async def rejoined() -> bool:
            return a.member is not None and a.private_name != old and a.rejoins == 1

        await until(rejoined, 2.0, "the node rejoins with a new epoch")
        await a.flush()

        async def exact() -> bool:
            return (
                await a.count("inbound_cidr", "10.1.2.3") == 3
                and await a.count("inbound_cidr", "10.1.2.3", "relay-0-1") == 3
            )

        await until(exact, 2.0, "counted exactly once after the re-sync")


async def test_heartbeat_outlives_a_redis_error_after_the_beat(
    shared_redis: AnyRedis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis going away between the beat and the lost-batches check (as in back-to-back
    Redis restarts) once ended the heartbeat task for good: the node never re-synced."""
    cfg = parse_config(FAST)
    failed = asyncio.Event()
    real = membership.lost_batches

    async def lost_once(scripts: Scripts, boxes: Iterable[Outbox]) -> str | None:
        if not failed.is_set():
            failed.set()
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return await real(scripts, boxes)

    monkeypatch.setattr(membership, "lost_batches", lost_once)
    async with Node(cfg, "relay-0-1", shared_redis.url, namespace=namespace) as a:
        a.record("inbound_cidr", "10.1.2.3", 2)
        await a.flush()
        await asyncio.wait_for(failed.wait(), 2.0)
        old = a.private_name
        shared_redis.client().delete(ClusterKeys(namespace).incarnation)  # Redis lost data

        async def rejoined() -> bool:
            return a.member is not None and a.private_name != old and a.rejoins == 1

        await until(rejoined, 2.0, "the node still beats, and re-syncs")
        assert await a.count("inbound_cidr", "10.1.2.3", "relay-0-1") == 2
