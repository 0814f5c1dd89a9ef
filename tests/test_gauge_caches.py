"""Gauge caches: local and replicated, maxelems, ttl from the last change, views, reaping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster.agent.gauge_caches import GaugeCacheError, LocalGaugeCache, UnknownGaugeCache
from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.console.commands import ConsoleContext, run_command
from mcluster.faces.http.app import make_app
from mcluster.objects import gauge_cache
from mcluster.objects.gauge_cache import GaugeCacheDef
from mcluster.objects.kinds import GAUGE_CACHE
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import GLOBAL, ClusterKeys
from mcluster.store.scripts import Scripts
from tests.helpers import crash, until
from tests.redis_cluster import AnyRedis
from tests.redis_servers import RedisServer

CONFIG = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.8
  Replicate "inbound_cidr" {}
  Replicate "metrics" { parameters = "gauge_cache" }
}
"""


def make_node(server: AnyRedis, namespace: str, name: str, text: str = CONFIG) -> Node:
    return Node(parse_config(text, "gc.conf"), name, server.url, namespace=namespace)


@pytest.fixture
async def pair(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[tuple[Node, Node]]:
    async with (
        make_node(shared_redis, namespace, "a") as a,
        make_node(shared_redis, namespace, "b") as b,
    ):
        yield a, b


# -- local gauge caches (in process) ----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_local_oldest_entry_dropped_beyond_maxelems() -> None:
    local = LocalGaugeCache(GaugeCacheDef("g", 3, 0, False))
    for key in ("k1", "k2", "k3"):
        local.change(key, 1)
    local.change("k1", 1)  # k1 changed last: k2 is now the oldest
    local.change("k4", 5)
    assert {k: local.get(k) for k in ("k1", "k2", "k3", "k4")} == {
        "k1": 2,
        "k2": 0,
        "k3": 1,
        "k4": 5,
    }
    assert local.evicted == 1
    assert local.change("k3", -4) == 0 and local.anomalies == 3  # clamped at zero
    assert [r.key for r in local.listing(None).rows] == ["k1", "k4"]


def test_local_ttl_counts_from_the_last_change() -> None:
    clock = Clock()
    local = LocalGaugeCache(GaugeCacheDef("g", 100, 10, False), clock=clock)
    local.change("a", 1)
    local.change("b", 1)
    clock.now += 6
    local.change("a", 1)
    clock.now += 5  # b: 11 s since its change; a: 5 s
    assert (local.get("a"), local.get("b")) == (2, 0)
    assert local.expired == 1
    clock.now += 5
    assert local.get("a") == 0 and local.expired == 2


async def test_local_gauge_cache_api(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert await a.gauge_caches.define("local", maxelems=2, ttl="1H") is True
    assert await a.gauge_caches.define("local", maxelems=2, ttl="1H") is False
    a.gauge_caches.inc("local", "x")
    a.gauge_caches.inc("local", "x", 4)
    a.gauge_caches.dec("local", "x")
    assert await a.gauge_caches.get("local", "x") == 4
    assert await a.gauge_caches.get("local", "never seen") == 0  # keys need no creating
    with pytest.raises(UnknownGaugeCache, match="unknown gauge cache 'local'; defined here: none"):
        await b.gauge_caches.get("local", "x")  # not replicated: b knows nothing of it


# -- replicated gauge caches -------------------------------------------------------------


async def test_views_per_node_and_global(pair: tuple[Node, Node], namespace: str) -> None:
    a, b = pair
    for n in (a, b):
        assert await n.gauge_caches.define("senders", 100, 0, replicate=True)
    a.gauge_caches.inc("senders", "alice", 3)
    b.gauge_caches.inc("senders", "alice", 2)
    b.gauge_caches.inc("senders", "bob")
    b.gauge_caches.dec("senders", "bob")
    b.gauge_caches.inc("senders", "carol", 7)
    await a.flush()
    await b.flush()
    assert await a.gauge_caches.get("senders", "alice") == 5
    assert await a.gauge_caches.get("senders", "alice", view="a") == 3
    assert await a.gauge_caches.get("senders", "alice", view="b") == 2
    assert await b.gauge_caches.get("senders", "bob") == 0
    listing = await a.gauge_caches.show("senders", view="b")
    assert [(r.key, r.count) for r in listing.rows] == [("alice", 2), ("carol", 7)]
    ctx = ConsoleContext(a.client, ClusterKeys(namespace))
    shared = (await run_command(ctx, "shared list")).data["objects"]
    assert {"name": "senders", "type": "gauge cache"}.items() <= _by_name(shared)["senders"].items()
    shown = (await run_command(ctx, "shared show senders")).data
    assert [(r["key"], r["count"]) for r in shown["rows"]] == [("alice", 5), ("carol", 7)]
    shown = (await run_command(ctx, "shared show senders from a")).data
    assert [(r["key"], r["count"]) for r in shown["rows"]] == [("alice", 3)]


def _by_name(objects: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {o["name"]: o for o in objects}


async def _distinct_ms(n: Node) -> None:
    """Wait for Redis time to move to a new millisecond (change times then differ)."""
    start = await n.client.time()

    async def moved() -> bool:
        now = await n.client.time()
        return (now[0], now[1] // 1000) != (start[0], start[1] // 1000)

    await until(moved, 2, what="Redis time moves on")


async def test_replicated_oldest_entry_dropped_from_every_view(pair: tuple[Node, Node]) -> None:
    a, b = pair
    for n in (a, b):
        await n.gauge_caches.define("g", 3, 0, replicate=True)
    for i, key in enumerate(("k1", "k2", "k3", "k1", "k4")):  # k1 rewritten: k2 is oldest
        (a if i % 2 else b).gauge_caches.inc("g", key)
        await a.flush()
        await b.flush()
        await _distinct_ms(a)
    rows = {r.key: r.count for r in (await a.gauge_caches.show("g")).rows}
    assert rows == {"k1": 2, "k3": 1, "k4": 1}
    for n in ("a", "b"):  # global == sum of the node views, k2 gone from both
        node_rows = {r.key: r.count for r in (await a.gauge_caches.show("g", view=n)).rows}
        assert "k2" not in node_rows
    node_sum = {}
    for n in ("a", "b"):
        for r in (await a.gauge_caches.show("g", view=n)).rows:
            node_sum[r.key] = node_sum.get(r.key, 0) + r.count
    assert node_sum == rows
    meta = await a.client.hgetall(a.outbox("g").keys.meta(GLOBAL))
    assert int(meta[b"evicted"]) == 1 and int(meta[b"n"]) == 3
    # a wrote k2; it forgets it too, so a re-sync does not bring it back
    await until(lambda: _forgot(a, b"k2"), 3, what="a forgets the dropped k2")
    assert set(a.outbox("g").state) == {b"k1"}
    await a._rejoin("test: re-publish the absolute counts")
    again = {r.key: r.count for r in (await a.gauge_caches.show("g")).rows}
    assert again == rows


async def _forgot(n: Node, key: bytes) -> bool:
    return key not in n.outbox("g").state


async def test_replicated_ttl_counts_from_the_last_change(pair: tuple[Node, Node]) -> None:
    a, b = pair
    for n in (a, b):
        await n.gauge_caches.define("g", 100, 1, replicate=True)
    a.gauge_caches.inc("g", "early")
    b.gauge_caches.inc("g", "late")
    await a.flush()
    await b.flush()
    changed = a.outbox("g").keys
    first = await a.client.zscore(gauge_cache.changed_key(changed), "late")
    assert first is not None

    async def later() -> bool:
        now = await a.client.time()
        return now[0] * 1000 + now[1] // 1000 >= first + 600

    await until(later, 3, what="0.6 s of Redis time")
    b.gauge_caches.inc("g", "late")  # its ttl starts again
    await b.flush()

    async def early_gone() -> bool:
        return await a.gauge_caches.get("g", "early") == 0

    await until(early_gone, 3, what="the early entry expires")
    assert await a.gauge_caches.get("g", "late") == 2  # changed 0.6 s later: still there

    async def all_purged() -> bool:  # the leader's purge, with no write to trigger it
        totals = [(await a.gauge_caches.show("g", view=v)).total_rows for v in ("global", "a", "b")]
        return totals == [0, 0, 0]

    await until(all_purged, 4, what="both entries purged from every view")
    meta = await a.client.hgetall(changed.meta(GLOBAL))
    assert int(meta[b"expired"]) == 2


async def test_dead_nodes_share_is_reaped(shared_redis: AnyRedis, namespace: str) -> None:
    async with AsyncExitStack() as stack:
        # The leader (first to start) has not defined the gauge cache: it reaps it from
        # the registry all the same.
        leader = await stack.enter_async_context(make_node(shared_redis, namespace, "lead"))
        await until(lambda: _is_leader(leader), 3, what="lead is the leader")
        a = make_node(shared_redis, namespace, "a")
        await a.start()
        b = await stack.enter_async_context(make_node(shared_redis, namespace, "b"))
        for n in (a, b):
            await n.gauge_caches.define("g", 100, 0, replicate=True)
        a.gauge_caches.inc("g", "x", 4)
        a.gauge_caches.inc("g", "y", 1)
        b.gauge_caches.inc("g", "x", 2)
        await a.flush()
        await b.flush()
        assert await b.gauge_caches.get("g", "x") == 6
        await crash(a)

        async def reaped() -> bool:
            rows = {r.key: r.count for r in (await b.gauge_caches.show("g")).rows}
            views = await b.client.hvals(b.outbox("g").keys.views)
            return rows == {"x": 2} and views == [b"b"]

        await until(reaped, 5, what="a's share leaves the global view")
        assert await b.gauge_caches.get("g", "y") == 0


async def _is_leader(n: Node) -> bool:
    return n.is_leader


async def test_bad_definitions(redis_server: RedisServer, namespace: str) -> None:
    plain = 'cluster { Replicate "inbound_cidr" {} }'
    async with make_node(redis_server, namespace, "a", plain) as a:
        with pytest.raises(GaugeCacheError, match='Replicate "metrics"'):
            await a.gauge_caches.define("g", 10, 0, replicate=True)
        await a.gauge_caches.define("g", 10, 0)
        with pytest.raises(GaugeCacheError, match="already defined with replicate=False"):
            await a.gauge_caches.define("g", 10, 0, replicate=True)
        for args, message in [
            (("g", 0, 0), "maxelems must be an integer"),
            (("g", "10", 0), "maxelems must be an integer"),
            (("g", 10, "5X"), "bad ttl '5X'"),
            (("g/h", 10, 0), "bad gauge cache name"),
            (("inbound_cidr", 10, 0, True), 'Replicate "metrics"'),
        ]:
            with pytest.raises(ValueError, match=message):
                await a.gauge_caches.define(*args)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="key must not be empty"):
            a.gauge_caches.inc("g", "")
        with pytest.raises(UnknownGaugeCache):
            a.gauge_caches.inc("nope", "x")


async def test_name_in_use(pair: tuple[Node, Node]) -> None:
    with pytest.raises(GaugeCacheError, match="'inbound_cidr' already names another"):
        await pair[0].gauge_caches.define("inbound_cidr", 10, 0, replicate=True)


async def test_http(pair: tuple[Node, Node]) -> None:
    a, b = pair
    async with (
        TestClient(TestServer(make_app(a))) as api,
        TestClient(TestServer(make_app(b))) as api_b,
    ):
        resp = await api.put(
            "/v1/gauge-caches/g", json={"maxelems": 5, "ttl": "5M", "replicate": True}
        )
        assert resp.status == 201, await resp.text()
        assert await resp.json() == {
            "name": "g", "maxelems": 5, "ttl": 300, "replicate": True, "created": True
        }  # fmt: skip
        again = await api.put("/v1/gauge-caches/g", json={"maxelems": 6, "replicate": True})
        assert again.status == 200 and (await again.json())["maxelems"] == 6
        assert (
            await api_b.put("/v1/gauge-caches/g", json={"maxelems": 6, "replicate": True})
        ).status == 201
        for client, verb, body in [
            (api, "inc", {"key": "a/b", "by": 5}),
            (api, "dec", {"key": "a/b"}),
            (api_b, "inc", {"key": "a/b"}),
        ]:
            resp = await client.post(f"/v1/gauge-caches/g/{verb}", json=body)
            assert resp.status == 202, await resp.text()
        assert (await api.post("/v1/flush")).status == 200
        assert (await api_b.post("/v1/flush")).status == 200
        assert await (await api.get("/v1/gauge-caches/g/a/b")).json() == {"value": 5}
        got = await api.get("/v1/gauge-caches/g/a/b", params={"view": "b"})
        assert await got.json() == {"value": 1}
        listing = await (await api.get("/v1/gauge-caches/g", params={"view": "a"})).json()
        assert listing["type"] == "gauge cache" and listing["rows"] == [{"key": "a/b", "count": 4}]
        listed = await (await api.get("/v1/gauge-caches")).json()
        assert listed == {
            "gauge_caches": [{"name": "g", "maxelems": 6, "ttl": 0, "replicate": True}]
        }
        for method, path, body, status, message in [
            ("put", "/v1/gauge-caches/h", {"ttl": 1}, 400, "maxelems is required"),
            ("put", "/v1/gauge-caches/h", {"maxelems": 1, "ttl": "5X"}, 400, "bad ttl"),
            ("put", "/v1/gauge-caches/h", {"maxelems": 1, "x": 1}, 400, "unknown field(s): x"),
            ("post", "/v1/gauge-caches/g/inc", {"key": 3}, 400, "key must be a string"),
            ("post", "/v1/gauge-caches/g/inc", {"key": "k", "by": -1}, 400, "by must be"),
            ("post", "/v1/gauge-caches/nope/inc", {"key": "k"}, 404, "unknown gauge cache"),
            ("get", "/v1/gauge-caches/nope/k", None, 404, "unknown gauge cache"),
        ]:
            resp = await getattr(api, method)(path, json=body)
            assert resp.status == status, (path, await resp.text())
            assert message in (await resp.json())["error"]


async def test_scripts_on_every_redis(any_redis: RedisServer, namespace: str) -> None:
    client = make_async_client(any_redis.url)
    try:
        scripts = Scripts(client)
        okeys = ClusterKeys(namespace).object("g")
        await gauge_cache.define(scripts, okeys, GaugeCacheDef("g", 2, 0, True))
        views = {"v1": "n1", "v2": "n2"}
        await client.hset(okeys.views, mapping=views)
        for view, key, seq in [("v1", b"a", 1), ("v2", b"a", 1), ("v2", b"b", 2)]:
            call_keys, args = GAUGE_CACHE.apply_call(okeys, view, {key: 2}, seq, "d")
            assert (await scripts.run(GAUGE_CACHE.script, call_keys, args))[0] == 1
        await client.hset(gauge_cache.conf_key(okeys), "maxelems", 1)
        assert await gauge_cache.purge(scripts, okeys) == (0, 1)  # a is older than b
        assert await client.hgetall(okeys.data(GLOBAL)) == {b"b": b"2"}
        assert await client.hgetall(okeys.data("v1")) == {}
        assert await client.hgetall(okeys.data("v2")) == {b"b": b"2"}
        assert await gauge_cache.read(scripts, okeys, b"b") == 2
        entries = await client.xrange(okeys.stream)
        assert entries[-1][1][b"mode"] == b"x" and b"a" in entries[-1][1]
    finally:
        await client.aclose()


async def test_replicated_define_waits_for_the_join(
    redis_server: RedisServer, namespace: str
) -> None:
    node = make_node(redis_server, namespace, "a")
    async with TestClient(TestServer(make_app(node))) as api:
        resp = await api.put("/v1/gauge-caches/g", json={"maxelems": 5, "replicate": True})
        assert resp.status == 503 and "not joined yet" in (await resp.json())["error"]
        local = await api.put("/v1/gauge-caches/l", json={"maxelems": 5})
        assert local.status == 201  # a local one needs no cluster
