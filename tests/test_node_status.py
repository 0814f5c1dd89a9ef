"""What nodes report with their heartbeat (store/node_status, heartbeat.lua's ARGV[6]),
on Redis 7 and 6.2, and the agent side that makes the figures (agent/status)."""

from __future__ import annotations

import time

from mcluster.agent import membership
from mcluster.agent.caches import Replica
from mcluster.agent.outbox import Outbox
from mcluster.agent.status import StatusReporter
from mcluster.config import parse_config
from mcluster.objects.cache import CacheKeys
from mcluster.objects.kinds import GAUGE_TABLE
from mcluster.store import members, node_status
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts
from tests.redis_servers import RedisServer


async def test_the_heartbeat_stores_the_status_with_redis_time(
    any_redis: RedisServer, namespace: str
) -> None:
    client = make_async_client(any_redis.url)
    keys = ClusterKeys(namespace)
    scripts = Scripts(client)
    try:
        member = members.new_member("relay-0-1", 1, 4123, "0.1.0", None)
        incarnation = await membership.take_lease(scripts, keys, member, 3.0)
        await membership.beat(scripts, keys, member, 3.0, incarnation, 2.0)  # no status
        assert await node_status.read_all(client, keys) == {}
        before = await members.server_time_ms(client)
        status = node_status.NodeStatus("relay-0-1", 0, 1234.56, "inbound_cidr", 7.04, "c")
        beat = await membership.beat(scripts, keys, member, 3.0, incarnation, 2.0, status.to_json())
        assert beat.lease
        after = await members.server_time_ms(client)
        (found,) = (await node_status.read_all(client, keys)).values()
        assert before <= found.at_ms <= after
        assert (found.node, found.lag_ms, found.lag_object) == ("relay-0-1", 1234.6, "inbound_cidr")
        assert (found.staleness_ms, found.staleness_cache) == (7.0, "c")
        # a lost lease stores nothing
        await client.delete(keys.lease("relay-0-1"))
        gone = node_status.NodeStatus("relay-0-1", 0, 1.0)
        beat = await membership.beat(scripts, keys, member, 3.0, incarnation, 2.0, gone.to_json())
        assert not beat.lease
        assert (await node_status.read_all(client, keys))["relay-0-1"].lag_ms == 1234.6
        # garbage in the hash is left out, the others are read
        await client.hset(keys.status, mapping={"bad": "x {", "worse": "12 [1]", "empty": "1"})
        assert list(await node_status.read_all(client, keys)) == ["relay-0-1"]
        await members.leave(client, keys, member)
        assert await client.hexists(keys.status, "relay-0-1") == 0  # leaving removes it
    finally:
        await client.aclose()


def test_the_reporter_takes_the_worst_lag_and_staleness() -> None:
    keys = ClusterKeys("mc")
    a = Outbox("a", GAUGE_TABLE, keys.object("a"), "v", 100, 1.0)
    b = Outbox("b", GAUGE_TABLE, keys.object("b"), "v", 100, 1.0)
    now = time.monotonic()
    a.worst_lag = 0.25  # a batch of a shipped 250 ms after its first delta
    b.add(b"k", 1)
    b.pending_since = now - 0.75  # a delta of b has waited 750 ms
    config = parse_config('Datasource "c" {}\ncluster { Replicate "c" { type = "cache" } }')
    (obj,) = config.of_type("cache")
    replica = Replica(obj, CacheKeys(keys.object("c")), "relay-0-1")
    reporter = StatusReporter()
    status = reporter.report("relay-0-1", {"a": a, "b": b}, {"c": replica})
    assert status.lag_object == "b" and 750 <= status.lag_ms < 1000
    assert status.staleness_ms is None  # no sample yet
    b.buffer.clear()
    replica.staleness_ms.extend(float(ms) for ms in range(1, 101))
    replica.stats.changes += 100
    again = reporter.report("relay-0-1", {"a": a, "b": b}, {"c": replica})
    assert (again.lag_ms, again.lag_object) == (0.0, "a")  # taken: a's 250 ms was reported
    assert (again.staleness_ms, again.staleness_cache) == (99.0, "c")
