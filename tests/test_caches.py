"""Replicated caches on real Redis: replicas on every node, snapshots, max_size, ttl."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster.agent.caches import BLOCK_MS, UnknownCache
from mcluster.agent.node import Node
from mcluster.agent.outbox import stop_if_cancelled
from mcluster.config import ConfigError, parse_config
from mcluster.faces.http.app import make_app
from mcluster.objects import cache
from mcluster.objects.cache import CacheKeys
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts
from tests.helpers import crash, until
from tests.redis_cluster import AnyRedis
from tests.redis_servers import RedisServer

CONFIG = """
Datasource "c1" { uri = ("odbc:DSN=sqlserver;UID=user;PWD=pass") serialized = true }
Datasource "snap" {}
Datasource "small" {}
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.8
  Replicate "c1" { type = "cache" }
  Replicate "snap" { type = "cache" parameters = "snapshot" }
  Replicate "small" { type = "cache" max_size = 100 }
}
"""


def node(server: AnyRedis, namespace: str, name: str) -> Node:
    return Node(parse_config(CONFIG, "caches.conf"), name, server.url, namespace=namespace)


@pytest.fixture
async def nodes(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        started = []
        for name in ("a", "b", "c"):
            started.append(await stack.enter_async_context(node(shared_redis, namespace, name)))
        yield started


async def test_set_on_a_is_visible_on_b_and_c(nodes: list[Node]) -> None:
    a, b, c = nodes
    written = await a.caches.set("c1", "user:1", "alice", "5M")
    assert written.stamp >= 1
    assert a.caches.peek("c1", "user:1") == "alice"  # the writer's replica at once
    for other in (b, c):
        await _holds(other, "c1", "user:1", "alice")
        hit = await other.caches.get("c1", "user:1")
        assert hit is not None and (hit.value, hit.source) == ("alice", "replica")
    await b.caches.set("c1", "user:1", "bob", 0)
    await _holds(a, "c1", "user:1", "bob")
    await _holds(c, "c1", "user:1", "bob")
    stats = await c.caches.stats("c1")
    assert stats["redis"]["size"] == 1 and stats["redis"]["sets"] == 2
    staleness = stats["replica"]["staleness_ms"]
    assert staleness["samples"] == 2 and 0 <= staleness["p50"] <= staleness["p99"] < 5000


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Wait until a condition on local memory holds (a replica caught up)."""

    async def holds() -> bool:
        return check()

    await until(holds, timeout, what=what)


async def _holds(n: Node, name: str, key: str, value: str) -> None:
    await eventually(lambda: n.caches.peek(name, key) == value, f"{n.name} holds {key}={value}")


async def test_snapshot_loads_every_pair_before_ready(
    redis_server: RedisServer, namespace: str
) -> None:
    async with node(redis_server, namespace, "a") as a:
        pairs = {f"k{i}": f"v{i}" for i in range(700)}  # more than one read page
        for key, value in pairs.items():
            await a.caches.set("snap", key, value)
            await a.caches.set("c1", key, value)
        await a.caches.set("snap", "short", "gone soon", 1)
        late = node(redis_server, namespace, "late")
        await late.start()
        try:
            # Straight after start returns: every pair of the snapshot cache is local.
            held = {k: late.caches.peek("snap", k) for k in pairs}
            assert held == pairs
            assert late.caches.replicas["snap"].stats.misses == 0
            # Without snapshot the replica fills as keys are read: one read through, then hits.
            assert late.caches.peek("c1", "k1") is None
            first = await late.caches.get("c1", "k1")
            assert first is not None and (first.value, first.source) == ("v1", "redis")
            again = await late.caches.get("c1", "k1")
            assert again is not None and (again.value, again.source) == ("v1", "replica")
            assert late.caches.replicas["c1"].stats.misses == 1
            assert await late.caches.get("c1", "nope") is None
            assert await late.caches.get("c1", "nope") is None  # known absent: no second read
            assert late.caches.replicas["c1"].stats.misses == 2
            # ...and an update written elsewhere reaches it through the stream.
            await a.caches.set("c1", "k2", "v2'")
            await _holds(late, "c1", "k2", "v2'")
        finally:
            await late.stop()


async def test_max_size_keeps_the_most_recently_written(nodes: list[Node]) -> None:
    a, b, _ = nodes
    for i in range(1000):
        await (a if i % 2 else b).caches.set("small", f"k{i}", str(i))
    await a.caches.set("small", "k900", "rewritten")  # the oldest becomes the newest...
    await b.caches.set("small", "new", "n")  # ...so a new key evicts k901, not k900
    expected = {f"k{i}" for i in range(902, 1000)} | {"k900", "new"}
    keys = CacheKeys(a.keys.object("small"))
    in_redis = {k.decode() for k in await a.client.hkeys(keys.values)}
    assert in_redis == expected
    figures = await cache.meta(a.scripts, keys)
    assert figures["size"] == 100 and figures["evicted"] == 901
    for n in (a, b):
        replica = n.caches.replicas["small"]
        await eventually(lambda r=replica: set(r.entries) == expected, f"{n.name} replica")
    assert await b.caches.get("small", "k0") is None
    stats = await b.caches.stats("small")
    assert stats["redis"]["evicted"] == 901 and stats["replica"]["replica_size"] == 100
    assert b.stats()["small"]["evicted"] == 901  # seen on the stream, as in /v1/stats


async def test_ttl_minutes_never_and_expiry(nodes: list[Node]) -> None:
    a, b, _ = nodes
    await a.caches.set("c1", "minute", "m", "1M")
    await a.caches.set("c1", "forever", "f", "0")
    await a.caches.set("c1", "second", "s", 1)
    keys = CacheKeys(a.keys.object("c1"))
    _, _, pairs = await cache.read_pairs(a.scripts, keys, ["minute", "forever", "second"])
    ttls = {p.key: p.ttl_ms for p in pairs}
    assert 58_000 < ttls["minute"] <= 60_000
    assert ttls["forever"] == 0 and 0 < ttls["second"] <= 1000
    await _holds(b, "c1", "second", "s")
    await until(_gone(b, "second"), 5, what="the 1 s pair expires on b")
    _, _, (gone,) = await cache.read_pairs(a.scripts, keys, ["second"])
    assert gone.value is None
    for key, value in (("minute", "m"), ("forever", "f")):
        hit = await b.caches.get("c1", key)
        assert hit is not None and hit.value == value


def _gone(n: Node, key: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return n.caches.peek("c1", key) is None and await n.caches.get("c1", key) is None

    return check


@pytest.mark.parametrize(
    ("ttl", "seconds"), [(0, 0), ("0", 0), ("90", 90), (" 5M", 300), ("2H", 7200), ("2h", 7200)]
)
def test_parse_ttl(ttl: str | int, seconds: int) -> None:
    assert cache.parse_ttl(ttl) == seconds


@pytest.mark.parametrize("ttl", ["5X", "", "-1", "M", "1.5M", "5 MM", -3, 2.5])
def test_bad_ttl_is_a_clear_error(ttl: object) -> None:
    with pytest.raises(ValueError, match="bad ttl"):
        cache.parse_ttl(ttl)  # type: ignore[arg-type]


async def test_bad_input_changes_nothing(nodes: list[Node]) -> None:
    a = nodes[0]
    with pytest.raises(ValueError, match=r"bad ttl '5X'.*\"5M\""):
        await a.caches.set("c1", "k", "v", "5X")
    with pytest.raises(ValueError, match="key must not be empty"):
        await a.caches.set("c1", "", "v")
    with pytest.raises(ValueError, match="limit"):
        await a.caches.set("c1", "k", "x" * (cache.MAX_VALUE_BYTES + 1))
    with pytest.raises(UnknownCache, match="unknown cache 'nope'; caches of this config: c1"):
        await a.caches.get("nope", "k")
    assert (await cache.meta(a.scripts, CacheKeys(a.keys.object("c1"))))["size"] == 0


async def test_loader_fills_a_miss_cluster_wide(nodes: list[Node]) -> None:
    a, b, _ = nodes
    asked: list[str] = []

    async def load(key: str) -> str | None:
        asked.append(key)
        return None if key == "none" else f"loaded {key}"

    a.caches.set_loader("c1", load, "1H")
    hit = await a.caches.get("c1", "x")
    assert hit is not None and (hit.value, hit.source) == ("loaded x", "loader")
    assert await a.caches.get("c1", "none") is None
    hit = await a.caches.get("c1", "x")
    assert hit is not None and hit.source == "replica"
    assert asked == ["x", "none"]
    await _holds(b, "c1", "x", "loaded x")


async def test_values_stay_when_their_writer_dies(nodes: list[Node], namespace: str) -> None:
    a, b, _ = nodes
    for i in range(20):
        await a.caches.set("snap", f"k{i}", f"v{i}")
    await crash(a)
    cluster = ClusterKeys(namespace)
    await until(lambda: _lease_gone(b, cluster), 5, what="a's lease expires and a is reaped")
    for i in range(20):
        hit = await b.caches.get("snap", f"k{i}")
        assert hit is not None and hit.value == f"v{i}"
    figures = await cache.meta(b.scripts, CacheKeys(b.keys.object("snap")))
    assert figures["size"] == 20


async def _lease_gone(n: Node, keys: ClusterKeys) -> bool:
    return not await n.client.exists(keys.lease("a")) and not await n.client.hexists(
        keys.members, "a"
    )


async def test_http_put_and_get(redis_server: RedisServer, namespace: str) -> None:
    async with node(redis_server, namespace, "a") as a, node(redis_server, namespace, "b") as b:
        api_a = await _client(a)
        api_b = await _client(b)
        try:
            resp = await api_a.put("/v1/caches/c1/user/1", json={"value": "alice", "ttl": "5M"})
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["key"] == "user/1"
            got = await (await api_a.get("/v1/caches/c1/user/1")).json()
            assert got == {"value": "alice", "source": "replica"}
            await _holds(b, "c1", "user/1", "alice")
            got = await (await api_b.get("/v1/caches/c1/user/1")).json()
            assert got == {"value": "alice", "source": "replica"}
            b.caches.replicas["c1"].entries.clear()  # as if b had never seen it
            got = await (await api_b.get("/v1/caches/c1/user/1")).json()
            assert got == {"value": "alice", "source": "redis"}
            missing = await api_b.get("/v1/caches/c1/nobody")
            assert missing.status == 404 and "nobody" in (await missing.json())["error"]
            for path, body, status, message in [
                ("/v1/caches/c1/k", {"value": "v", "ttl": "5X"}, 400, "bad ttl '5X'"),
                ("/v1/caches/c1/k", {"ttl": "5M"}, 400, "body must be"),
                ("/v1/caches/c1/k", {"value": 3}, 400, "value must be a string"),
                ("/v1/caches/c1/k", {"value": "v", "tll": 1}, 400, "unknown field(s): tll"),
                ("/v1/caches/nope/k", {"value": "v"}, 404, "unknown cache 'nope'"),
            ]:
                resp = await api_a.put(path, json=body)
                assert resp.status == status
                assert message in (await resp.json())["error"]
            stats = await (await api_b.get("/v1/caches/c1")).json()
            assert stats["redis"]["size"] == 1 and stats["replica"]["misses"] == 2
            assert (await (await api_b.get("/v1/caches")).json())["caches"] == [
                "c1",
                "snap",
                "small",
            ]
        finally:
            await api_a.close()
            await api_b.close()


async def _client(n: Node) -> TestClient:
    client = TestClient(TestServer(make_app(n)))
    await client.start_server()
    return client


def test_cache_without_datasource_is_a_config_error(tmp_path: Path) -> None:
    text = 'cluster {\n  Replicate "mycache" { type = "cache" }\n}\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x.conf")
    assert 'Replicate "mycache" has type "cache" but no Datasource "mycache"' in str(err.value)
    path = tmp_path / "x.conf"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert f'{path}:2:3: Replicate "mycache" has type "cache" but no Datasource' in result.stderr


async def test_cache_scripts_on_every_redis(any_redis: RedisServer, namespace: str) -> None:
    client = make_async_client(any_redis.url)
    try:
        scripts = Scripts(client)
        keys = CacheKeys(ClusterKeys(namespace).object("c"))
        for i in range(5):
            await cache.write_pair(scripts, keys, f"k{i}", f"v{i}", 0, 3, "n1")
        written = await cache.write_pair(scripts, keys, "k1", "again", 60, 3, "n1")
        assert (written.stamp, written.evicted) == (6, 1)  # k0, k1, then k2 evicted
        wseq, last_id, pairs = await cache.read_pairs(scripts, keys, ["k0", "k1", "k3", "k4"])
        assert wseq == 6 and last_id != "0-0"
        assert [(p.value, p.stamp) for p in pairs] == [
            (None, 0),
            ("again", 6),
            ("v3", 4),
            ("v4", 5),
        ]
        entries = await client.xrange(keys.stream)
        ops = [(f[b"op"], f[b"k"]) for _, f in entries]
        assert ops.count((b"d", b"k0")) == 1 and ops.count((b"d", b"k2")) == 1
        assert ops[-2:] == [(b"s", b"k1"), (b"d", b"k2")]
    finally:
        await client.aclose()


async def test_replica_reloads_after_a_gap_in_the_stream(nodes: list[Node]) -> None:
    a, b, _ = nodes
    await a.caches.set("snap", "k0", "v0")
    await _holds(b, "snap", "k0", "v0")
    follower = next(t for t in b.caches._tasks if t.get_name() == "cache:snap")
    follower.cancel()  # b stops reading the stream: as if it fell far behind
    await asyncio.wait([follower], timeout=BLOCK_MS / 1000 + 2)  # ends after its read
    assert follower.done(), "the cancelled follower still reads the stream"
    for i in range(1, 40):
        await a.caches.set("snap", f"k{i}", f"v{i}")
    replica = b.caches.replicas["snap"]
    await b.client.xtrim(replica.keys.stream, maxlen=0, approximate=False)
    b.caches._tasks.append(asyncio.create_task(replica.follow(b.scripts)))
    await a.caches.set("snap", "last", "x")  # its stamp shows b that it missed 39 sets
    await eventually(lambda: replica.stats.reloads == 1, "b reloads")
    held = {k: b.caches.peek("snap", k) for k in [f"k{i}" for i in range(40)] + ["last"]}
    assert held == {f"k{i}": f"v{i}" for i in range(40)} | {"last": "x"}


async def test_a_malformed_stream_entry_does_not_stop_the_replica(nodes: list[Node]) -> None:
    a, b, _ = nodes
    replica = b.caches.replicas["c1"]
    await b.client.xadd(replica.keys.stream, {"op": "s", "k": "junk"})  # no stamp, no value
    await a.caches.set("c1", "after", "fine")
    await _holds(b, "c1", "after", "fine")


async def test_concurrent_misses_share_one_read(nodes: list[Node]) -> None:
    a, b, _ = nodes
    await a.caches.set("c1", "k", "v")
    await _holds(b, "c1", "k", "v")
    b.caches.replicas["c1"].entries.clear()  # as if b had never seen it
    hits = await asyncio.gather(*(b.caches.get("c1", "k") for _ in range(10)))
    assert {(h.value, h.source) for h in hits if h is not None} == {("v", "redis")}
    assert b.caches.replicas["c1"].stats.misses == 1


async def test_a_follower_stops_even_when_a_cancel_was_swallowed() -> None:
    """Python 3.11's ``wait_for`` (redis-py writes through it) may swallow a cancel that
    arrives as the write ends; the follow loops still stop at their next turn."""
    turns = 0

    async def swallowing_read() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as wait_for does then
            await asyncio.sleep(10)

    async def follow() -> None:
        nonlocal turns
        while True:
            stop_if_cancelled()
            turns += 1
            await swallowing_read()

    async def reading() -> bool:
        return turns == 1

    task = asyncio.create_task(follow())
    await until(reading, 1.0, "the loop reads")
    task.cancel()
    await asyncio.wait([task], timeout=1.0)
    assert task.cancelled() and turns == 1


async def test_caches_are_listed_by_cluster_shared_list(
    redis_server: RedisServer, namespace: str
) -> None:
    """Published by the agent (a console without the config sees them), from the config
    otherwise; beside the view objects, in name order, in text and JSON."""
    from mcluster.console import ConsoleContext, run_command
    from mcluster.console.ops_views import plain_text
    from mcluster.objects.views import NotFound

    text = CONFIG.replace("cluster {", 'cluster {\n  Replicate "inbound_cidr" {}')
    config = parse_config(text, "caches.conf")
    client = make_async_client(redis_server.url)
    keys = ClusterKeys(namespace)
    expected = [
        ("c1", "lazy, cache"),
        ("inbound_cidr", "lazy, cidrtree w/ snapshots"),
        ("small", "lazy, cache"),
        ("snap", "lazy, cache w/ snapshots"),
    ]
    try:
        configured = [(o.name, o.type) for o in config.objects]
        offline = ConsoleContext(client, keys, configured=configured, config=config)
        result = await run_command(offline, "cluster shared list")  # nothing in Redis yet
        assert isinstance(result.data, dict)
        assert [(o["name"], o["description"]) for o in result.data["objects"]] == expected
        async with Node(config, "a", redis_server.url, namespace=namespace):
            result = await run_command(ConsoleContext(client, keys), "shared list")
        assert isinstance(result.data, dict)
        assert [(o["name"], o["description"]) for o in result.data["objects"]] == expected
        snap = next(o for o in result.data["objects"] if o["name"] == "snap")
        assert (snap["type"], snap["snapshot"]) == ("cache", True)
        lines = plain_text(result.renderable).splitlines()
        assert lines[0] == "Currently managed objects:"
        assert [line.strip() for line in lines[1:]] == [f"{n} [{d}]" for n, d in expected]
        assert lines[4] == f"{'snap':>30} [lazy, cache w/ snapshots]"
        with pytest.raises(NotFound, match="'snap' is a replicated cache: it has no views"):
            await run_command(ConsoleContext(client, keys), "shared show snap")
    finally:
        await client.aclose()
