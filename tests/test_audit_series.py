"""Named audit series: define/add/count, window ranges, and who sees what (replicate none,
cluster, manager = eccmgr_metrics: the manager's aggregate only, read by the console)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.console.commands import ConsoleContext, UsageError, run_command
from mcluster.faces.http.app import make_app
from mcluster.objects import audit
from mcluster.objects.audit import Item
from mcluster.objects.audit_views import AuditError, get_series, series_count
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts
from tests.redis_cluster import RedisCluster
from tests.redis_servers import RedisServer
from tests.test_audit import mid_window_offset

CONF = """
cluster {
  Replicate "metrics" { parameters = "audit_series" }
  Replicate "eccmgr_metrics" {}
}
"""


@asynccontextmanager
async def nodes(url: str, namespace: str, conf: str = CONF) -> AsyncIterator[tuple[Node, Node]]:
    async with (
        Node(parse_config(conf), "a", url, namespace=namespace) as a,
        Node(parse_config(conf), "b", url, namespace=namespace) as b,
    ):
        yield a, b


async def console_count(node: Node, command: str) -> int:
    result = await run_command(ConsoleContext(node.client, node.keys), command)
    assert isinstance(result.data, dict)
    return int(result.data["count"])


async def test_replicate_scopes(redis_server: RedisServer, namespace: str) -> None:
    async with nodes(redis_server.url, namespace) as (a, b):
        for replicate in ("none", "cluster", "manager"):
            for node in (a, b):
                await node.audit.define(f"s_{replicate}", "cidr", 60, 5, replicate)
            a.audit.series_add(f"s_{replicate}", "10.1.2.3", 5)
            a.audit.series_add(f"s_{replicate}", "10.1.9.9")
            b.audit.series_add(f"s_{replicate}", "10.1.2.4", 2)
        await a.flush()
        await b.flush()
        # cluster: every node sees every add
        # windows 0..1: the adds are in window 0, or 1 if a window boundary passed since
        assert await a.audit.count("s_cluster", "10.1.0.0/16", 0, 1) == 8
        assert await b.audit.count("s_cluster", "10.1.2.3", 0, 1) == 5
        assert await console_count(a, "audit_series count s_cluster 10.0.0.0/8 0 1") == 8
        # manager: a node sees its own adds only; the console reads the manager's aggregate
        assert await a.audit.count("s_manager", "10.1.0.0/16", 0, 1) == 6
        assert await b.audit.count("s_manager", "10.1.0.0/16", 0, 1) == 2
        assert await b.audit.count("s_manager", "10.1.2.3", 0, 4) == 0  # a's never reached b
        assert await console_count(a, "audit_series count s_manager 10.1.0.0/16 0 1") == 8
        assert await console_count(a, "audit_series count s_manager 10.1.2.3/32 0 1") == 5
        # none: each node its own; the console needs 'from NODE'
        assert await b.audit.count("s_none", "10.1.0.0/16", 0, 1) == 2
        assert await console_count(a, "audit_series count s_none 10.1.0.0/16 0 1 from a") == 6
        with pytest.raises(UsageError, match="not replicated"):
            await console_count(a, "audit_series count s_none 10.1.0.0/16")
        listing = await run_command(ConsoleContext(a.client, a.keys), "audit_series list")
        assert isinstance(listing.data, dict)
        assert [s["name"] for s in listing.data["series"]] == ["s_cluster", "s_manager", "s_none"]
        # no node-side read of the manager aggregate exists
        keys = audit.audit_keys(a.keys)
        manager_keys = [k async for k in a.client.scan_iter(f"{keys.base}:m:*")]
        assert manager_keys and all(b":S:s_manager:" in k for k in manager_keys)


async def test_string_series_and_window_ranges(redis_server: RedisServer, namespace: str) -> None:
    keys = ClusterKeys(namespace)
    async with nodes(redis_server.url, namespace) as (a, _):
        sdef = await a.audit.define("senders", "string", 60, 4, "cluster")
    client = Redis.from_url(redis_server.url)
    scripts = Scripts(client)
    now = await mid_window_offset(client, 60_000)
    okeys = audit.audit_keys(keys)
    target = sdef.target(audit.GLOBAL)
    for k in range(6):  # window k back gets 10 ** k adds of "bob@x"
        items = {Item.string(audit.SERIES_FIELD, "bob@x"): 10**k}
        await audit.apply(scripts, okeys, "t", k + 1, [([target], items)], now - k * 60_000)
    stored = await get_series(client, keys, "senders")
    assert stored == sdef

    async def count(start: int, end: int | None = None) -> int:
        return await series_count(scripts, keys, sdef, "bob@x", start, end, offset_ms=now)

    assert await count(0) == 1
    assert await count(2) == 100
    assert await count(0, 3) == 1111
    assert await count(1, 9) == 1110  # windows 4, 5 are past the span of 4: zero
    assert await count(4, 5) == 0
    assert await series_count(scripts, keys, sdef, "alice@x", 0, 3, offset_ms=now) == 0
    with pytest.raises(ValueError, match="bad window range"):
        await count(3, 1)
    await client.aclose()


async def test_bad_definitions_and_adds(redis_server: RedisServer, namespace: str) -> None:
    only_cluster = 'cluster { Replicate "metrics" { parameters = "audit_series" } }'
    async with nodes(redis_server.url, namespace, only_cluster) as (a, b):
        await a.audit.define("s4", "cidr", 60, 5, 1)  # Sieve's replicate=1: cluster
        with pytest.raises(AuditError, match="already defined"):
            await b.audit.define("s4", "cidr", 30, 5, "cluster")
        with pytest.raises(AuditError, match='Replicate "eccmgr_metrics"'):
            await a.audit.define("m", "cidr", 60, 5, "manager")
        with pytest.raises(AuditError, match="type"):
            await a.audit.define("x", "ipv4", 60, 5)
        with pytest.raises(AuditError, match="interval"):
            await a.audit.define("x", "cidr", 0, 5)
        with pytest.raises(AuditError, match="define it first"):
            b.audit.series_add("s4", "10.0.0.1")
        with pytest.raises(AuditError, match="is cidr"):
            a.audit.series_add("s4", "2001:db8::1")
        with pytest.raises(ValueError, match="CIDR block"):
            a.audit.series_add("s4", "10.0.0.0/8")
        with pytest.raises(AuditError, match="is cidr"):
            await a.audit.count("s4", "2001:db8::/32")
        assert a.stats()["audit"]["recorded"] == 0


async def test_series_over_http(redis_server: RedisServer, namespace: str) -> None:
    node = Node(parse_config(CONF), "relay-0-1", redis_server.url, namespace=namespace)
    async with TestClient(TestServer(make_app(node))) as api:
        await node.start()
        definition = {"name": "v6", "type": "cidr_ipv6", "interval": 300, "num_windows": 6,
                      "replicate": "cluster"}  # fmt: skip
        resp = await api.post("/v1/series", json=definition)
        assert (resp.status, await resp.json()) == (200, definition)
        adds = [{"key": "2001:db8::1", "count": 3}, {"key": "2001:db8:1::1"}]
        resp = await api.post("/v1/series/v6/add", json={"adds": adds})
        assert (resp.status, await resp.json()) == (202, {"accepted": 2})
        bad = await api.post("/v1/series/v6/add", json={"adds": [adds[0], {"key": "10.0.0.1"}]})
        assert bad.status == 400 and (await bad.json())["error"].startswith("adds[1]: series")
        await api.post("/v1/flush")
        query = {"key": "2001:db8::/32", "end": "1"}  # window 0 (or 1 after a boundary)
        resp = await api.get("/v1/series/v6/count", params=query)
        assert await resp.json() == {"count": 4}  # the refused request counted nothing
        resp = await api.get("/v1/series/v6/count", params={"key": "2001:db8::/48", "end": "5"})
        assert await resp.json() == {"count": 3}
        listed = await (await api.get("/v1/series")).json()
        assert listed == {"series": [definition]}
        missing = await api.get("/v1/series/nope/count", params={"key": "x"})
        assert missing.status == 400 and "nope" in (await missing.json())["error"]
        await node.stop()


async def test_event_types_for_the_manager_only(redis_server: RedisServer, namespace: str) -> None:
    """Types in ``Replicate "eccmgr_metrics" { parameters }`` go to the manager's aggregate:
    nodes cannot read them, the console (which reads the manager's) can."""
    conf = """cluster {
      Replicate "metrics" { parameters = "reception" }
      Replicate "eccmgr_metrics" { parameters = "connect" }
    }"""
    async with nodes(redis_server.url, namespace, conf) as (a, b):
        a.audit.record("connect", "10.1.2.3", count=4)
        a.audit.record("reception", "10.1.2.3")
        b.audit.record("connect", "10.1.2.4")
        await a.flush()
        await b.flush()
        with pytest.raises(AuditError, match="manager only"):
            await b.audit.ip_cluster("connect", "10.1.2.3")
        assert await b.audit.ip_cluster("reception", "10.1.2.3") > 0
        result = await run_command(
            ConsoleContext(a.client, a.keys), "inbound_audit show ip 10.1.2.0/24"
        )
        assert isinstance(result.data, dict)
        monitor = result.data["monitors"][0]  # the default monitor: 300,6
        assert (monitor["window"], monitor["windows"]) == (300, 6)
        assert sum(monitor["connections"]) == 5 and sum(monitor["receptions"]) == 1
        okeys = audit.audit_keys(a.keys)
        assert [k async for k in a.client.scan_iter(f"{okeys.base}:g:*:t:4:0a01")]
        manager = [k async for k in a.client.scan_iter(f"{okeys.base}:m:*:t:4:0a01")]
        assert manager  # connects: in the manager's aggregate only
        for key in manager:
            fields = await a.client.hkeys(key)
            assert fields and all(f.startswith(b"c") for f in fields)


async def test_audit_as_the_documented_acl_user(redis_server: RedisServer, namespace: str) -> None:
    """Everything the audit metrics run in Redis is allowed to README's ACL user."""
    from tests.test_redis_access import documented_acl

    rules = [r.replace("~mc:", f"~{namespace}:").replace("&mc:", f"&{namespace}:")
             for r in documented_acl()[1:]]  # fmt: skip
    rules = [">pw-Secret-1" if r.startswith(">") else r for r in rules]
    admin = redis_server.client()
    user = f"audit-{namespace}"
    admin.execute_command("ACL", "SETUSER", user, "reset", *rules)
    url = f"redis://{user}:pw-Secret-1@127.0.0.1:{redis_server.port}/0"
    conf = CONF.replace('"audit_series"', '"connect;audit_series"')
    try:
        async with nodes(url, namespace, conf) as (a, _):
            await a.audit.define("acl", "string", 60, 2, "manager")
            a.audit.series_add("acl", "bob", 3)
            a.audit.record("connect", "10.9.8.7")
            await a.flush()
            assert await a.audit.count("acl", "bob", 0, 1) == 3
            assert await a.audit.ip_cluster("connect", "10.9.8.7") > 0
            assert a.audit.stats.dropped == 0 and a.audit.stats.applied == 2
    finally:
        admin.execute_command("ACL", "DELUSER", user)


async def test_audit_on_redis_cluster(redis_cluster: RedisCluster, namespace: str) -> None:
    """Every audit key shares the slot of {audit}: the scripts run on a real Cluster."""
    conf = CONF.replace('"audit_series"', '"connect;reception;audit_series"')
    async with nodes(redis_cluster.url, namespace, conf) as (a, b):
        await a.audit.define("rc", "cidr", 60, 3, "cluster")
        a.audit.series_add("rc", "10.1.2.3", 2)
        b.audit.record("connect", "10.1.2.3", count=5)
        a.audit.record("reception", "10.1.2.4")
        await a.flush()
        await b.flush()
        assert await b.audit.count("rc", "10.1.0.0/16", 0, 1) == 2
        shown = await a.audit.show_ip("10.1.2.0/24")
        monitor = shown["monitors"][0]
        assert sum(monitor["connections"]) == 5 and sum(monitor["receptions"]) == 1
        assert a.audit.stats.dropped == b.audit.stats.dropped == 0
