"""Shared named throttles: rates, the sliding-window guarantee, all-or-nothing, Redis away."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster import Node, parse_config
from mcluster.faces.http.app import make_app
from mcluster.objects import throttle
from mcluster.objects.rates import Rate, parse_rate
from mcluster.objects.throttle import ThrottleConflict, ThrottleDef, ThrottleError
from tests.helpers import cpu_wait
from tests.redis_cluster import AnyRedis
from tests.redis_servers import RedisServer, start_redis

CONF = """
cluster {
  Replicate "shared_named_throttles" {}
  Shared_Throttle "t1" { rate = "1000/10" }
  Shared_Throttle "strict" { rate = "5/60" on_error = "deny" deadline_ms = 30 }
}
"""


@pytest.mark.parametrize(
    ("text", "rate"),
    [("1000/10", Rate(1000, 10)), ("5", Rate(5, 1)), ("0", Rate(0, 1)), ("60/3", Rate(60, 3)),
     (" 7 / 0.5 ", Rate(7, 0.5)), (12, Rate(12, 1))],
)  # fmt: skip
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("text", "message"),
    [("10/0", "more than 0 seconds"), ("-1", "expected \"N\""), ("abc", "expected \"N\""),
     ("", "expected"), ("1/-5", "expected"), ("5/0.001", "between 0.01 s"), (True, "bad rate")],
)  # fmt: skip
def test_bad_rates(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


def test_bad_shared_throttle_in_config_names_the_place() -> None:
    bad = (
        'cluster {\n  Replicate "shared_named_throttles" {}\n'
        '  Shared_Throttle "x" { rate = "10/0" }\n}'
    )
    with pytest.raises(Exception, match=r"<string>:3:3: Shared_Throttle 'x'.*more than 0"):
        throttle.config_throttles(parse_config(bad))


@pytest.fixture
async def node(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[Node]:
    async with Node(parse_config(CONF), "relay-0-1", shared_redis.url, namespace=namespace) as n:
        yield n


async def test_create_is_idempotent_and_conflicts(node: Node) -> None:
    assert await node.throttles.create(ThrottleDef(name="t2", rate="50/5")) is True
    assert await node.throttles.create(ThrottleDef(name="t2", rate="50/5")) is False
    with pytest.raises(ThrottleConflict, match="exists with rate '50/5', not '51/5'"):
        await node.throttles.create(ThrottleDef(name="t2", rate="51/5"))
    assert await node.throttles.create(ThrottleDef(name="t1", rate="1000/10")) is False


async def test_multi_limit_refused_by_one_counts_nothing(node: Node) -> None:
    th = node.throttles
    for _ in range(5):
        assert (await th.acquire([("strict", 1)])).allowed
    decision = await th.acquire([("t1", 3), ("strict", 1)])
    assert not decision.allowed and decision.retry_after_ms > 0
    usage = {n: used for n, used, _ in await throttle.usage(node.client, th.okeys)}
    assert usage == {"t1": 0, "strict": 5}
    ok = await th.acquire([("t1", 3)])
    assert ok.allowed and ok.remaining == (("t1", 997),)


async def test_momentum_verbs(node: Node) -> None:
    th = node.throttles
    await th.create(ThrottleDef(name="v", rate="3/60"))
    for _ in range(3):
        await th.inc("v")
    assert await th.check("v") is False  # at quota, not over it
    await th.inc("v")
    assert await th.check("v") is True
    assert await th.tarpit("v", timeout=0.2) is False


async def test_bad_requests(node: Node) -> None:
    th = node.throttles
    with pytest.raises(ThrottleError, match="unknown throttle 'nope'"):
        await th.acquire([("nope", 1)])
    for cost in (0, -1, 10**9):
        with pytest.raises(ThrottleError, match="cost for 't1' must be an integer"):
            await th.acquire([("t1", cost)])
    with pytest.raises(ThrottleError, match="at least one"):
        await th.acquire([])
    # a local quota reservation never takes a bad cost (a negative one would add tokens)
    lq = ThrottleDef(name="lq", rate="1000/10", mode="local_quota", deadline_ms=5000)
    await th.create(lq)  # a long deadline: the first reservation must not be degraded
    assert (await th.acquire([("lq", 1)])).allowed
    tokens = th._quota["lq"].tokens
    assert tokens > 0, th.stats
    for cost in (0, -5, 1.5, 10**9):
        with pytest.raises(ThrottleError, match="cost for 'lq' must be an integer"):
            await th.acquire([("lq", cost)])  # type: ignore[list-item]
    assert th._quota["lq"].tokens == tokens


async def test_http_throttles(node: Node) -> None:
    async with TestClient(TestServer(make_app(node))) as api:
        resp = await api.post("/v1/throttles", json={"name": "h1", "rate": "10/10"})
        assert resp.status == 201
        resp = await api.post("/v1/throttles", json={"name": "h1", "rate": "10/10"})
        assert resp.status == 200
        resp = await api.post("/v1/throttles", json={"name": "h1", "rate": "11/10"})
        assert resp.status == 409 and "exists with rate" in (await resp.json())["error"]
        for body, message in [
            ({"name": "h2", "rate": "10/0"}, "more than 0 seconds"),
            ({"name": "h2", "rate": "-1"}, "expected"),
            ({"name": "h2", "rate": "abc"}, "expected"),
            ({"name": "h 2", "rate": "1"}, "bad throttle name"),
            ({"name": "h2", "rate": "1", "mode": "fast"}, "mode"),
            ({"name": "h2", "rate": "1", "epsilon": 1.5}, "epsilon"),
        ]:
            resp = await api.post("/v1/throttles", json=body)
            assert resp.status == 400, body
            assert message in (await resp.json())["error"], body
        resp = await api.post(
            "/v1/throttles/acquire", json={"limits": [{"name": "h1", "cost": 4}, {"name": "t1"}]}
        )
        body = await resp.json()
        assert resp.status == 200 and body["allowed"] and not body["degraded"]
        assert body["limits"] == [{"name": "h1", "remaining": 6}, {"name": "t1", "remaining": 999}]
        assert body["retry_after_ms"] == 0
        for bad, message in [
            ({"limits": [{"name": "zz"}]}, "unknown throttle 'zz'"),
            ({"limits": [{"name": "h1", "cost": 0}]}, "cost must be an integer"),
            ({"limits": [{"name": "h1", "cost": 2**40}]}, "cost must be an integer"),
            ({"limits": []}, "1 to 32"),
            ({"limit": []}, "body must be"),
        ]:
            resp = await api.post("/v1/throttles/acquire", json=bad)
            assert resp.status == 400 and message in (await resp.json())["error"], bad
        resp = await api.get("/v1/throttles")
        used = {t["name"]: t["used"] for t in (await resp.json())["throttles"]}
        assert used["h1"] == 4 and used["t1"] == 1


async def test_never_over_admits_in_any_sliding_window(
    shared_redis: AnyRedis, namespace: str
) -> None:
    """Three nodes, 50 concurrent callers each, one throttle: in every window of S seconds
    (by Redis time) at most N admissions; the total admitted is close to the maximum."""
    await hammer(shared_redis, namespace, 300, 1.5, 4.5)


@pytest.mark.slow
async def test_1000_per_10_s_for_30_s(redis_server: RedisServer, namespace: str) -> None:
    """The issue's case as it is worded: "1000/10" hammered for 30 s (three windows)."""
    await hammer(redis_server, namespace, 1000, 10.0, 30.0)


async def hammer(
    redis_server: AnyRedis, namespace: str, n: int, period: float, seconds: float
) -> None:
    # A generous deadline: this test checks the window, not the policy when Redis is slow.
    conf = CONF.replace('"1000/10"', f'"{n}/{period:g}" deadline_ms = 5000')
    nodes = [
        Node(parse_config(conf), f"relay-0-{i}", redis_server.url, namespace=namespace)
        for i in (1, 2, 3)
    ]
    for node in nodes:
        await node.start()
    admitted: list[int] = []
    end = time.monotonic() + seconds

    async def caller(node: Node) -> None:
        while time.monotonic() < end:
            decision = await node.throttles.acquire([("t1", 1)])
            assert not decision.degraded
            if decision.allowed:
                admitted.append(decision.at_ms)
            else:
                await asyncio.sleep(min(decision.retry_after_ms, 50) / 1000)

    try:
        await asyncio.gather(*(caller(node) for node in nodes for _ in range(50)))
    finally:
        for node in nodes:
            await node.stop()
    admitted.sort()
    window = int(period * 1000)
    worst = max(
        bisect.bisect_right(admitted, t) - bisect.bisect_right(admitted, t - window)
        for t in admitted
    )
    assert worst <= n, f"{worst} admissions in one {period} s window, limit {n}"
    span = (admitted[-1] - admitted[0]) / 1000
    ideal = n * (span / period + 1)
    # Documented margin: it may under-admit by up to one bucket (N/10) per window.
    assert len(admitted) >= 0.8 * ideal, (len(admitted), ideal)


@pytest.mark.parametrize("how", ["stopped", "hung"])
async def test_redis_away_decides_by_policy_within_deadline(namespace: str, how: str) -> None:
    server = start_redis()
    try:
        async with Node(parse_config(CONF), "relay-0-1", server.url, namespace=namespace) as node:
            th = node.throttles
            assert (await th.acquire([("t1", 1)])).allowed
            if how == "stopped":
                server.proc.kill()
                server.proc.wait()
            else:
                server.proc.send_signal(__import__("signal").SIGSTOP)
            for name, allowed, deadline in (("t1", True, 0.050), ("strict", False, 0.030)):
                start, waited = time.monotonic(), cpu_wait()
                decision = await th.acquire([(name, 1)])
                took = time.monotonic() - start - (cpu_wait() - waited)  # CPU waits not ours
                assert decision.degraded and decision.allowed is allowed
                assert took <= deadline + 0.010, f"{how}: decision took {took * 1000:.1f} ms"
            assert th.stats.degraded_allow == 1 and th.stats.degraded_deny == 1
            if how == "hung":
                server.proc.send_signal(__import__("signal").SIGCONT)
    finally:
        server.stop()


async def test_a_caller_cancelled_mid_decision_is_cancelled_not_degraded(namespace: str) -> None:
    """The deadline watchdog turns only its own cancel into a degraded decision: a caller
    cancelled from outside (its SMTP session closed) sees CancelledError, and the next
    decision of the family still keeps its deadline."""
    server = start_redis()
    try:
        async with Node(parse_config(CONF), "relay-0-1", server.url, namespace=namespace) as node:
            th = node.throttles
            assert (await th.acquire([("t1", 1)])).allowed
            server.proc.send_signal(__import__("signal").SIGSTOP)
            try:
                caller = asyncio.create_task(th.acquire([("t1", 1)]))
                await asyncio.sleep(0.01)  # the call is in flight on the stopped server
                caller.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await caller
                start = time.monotonic()
                decision = await th.acquire([("strict", 1)])
                assert decision.degraded and not decision.allowed
                assert time.monotonic() - start < 1.0
                assert th.stats.degraded_deny == 1 and th.stats.degraded_allow == 0
            finally:
                server.proc.send_signal(__import__("signal").SIGCONT)
    finally:
        server.stop()


async def test_console_shows_the_throttle_table(node: Node) -> None:
    import io

    from rich.console import Console

    from mcluster.console import ConsoleContext, run_command

    await node.throttles.acquire([("t1", 12)])
    ctx = ConsoleContext(node.client, node.keys)
    listed = await run_command(ctx, "cluster shared list")
    assert {"name": "shared_named_throttles", "type": "throttle table"}.items() <= next(
        o for o in listed.data["objects"] if o["name"] == "shared_named_throttles"
    ).items()
    result = await run_command(ctx, "cluster shared show shared_named_throttles")
    assert result.data["type"] == "throttle table"
    assert result.data["rows"] == [
        {"key": "strict", "count": 0, "limit": "5/60"},
        {"key": "t1", "count": 12, "limit": "1000/10"},
    ]
    out = io.StringIO()
    Console(file=out, width=120).print(result.renderable)
    lines = out.getvalue().splitlines()
    assert lines[0] == "lazy, snapped throttle table 'shared_named_throttles', view 'global'"
    assert lines[2] == f"{'t1':>60}:{12:>13} / 1000/10"


async def test_local_quota_never_over_admits(redis_server: RedisServer, namespace: str) -> None:
    """Three nodes decide locally from reservations; one dies holding tokens; in every
    window of S seconds (server time) at most N are admitted, most decisions local."""
    n, period, seconds = 200, 1.0, 3.5
    conf = CONF.replace(
        '"1000/10"', f'"{n}/{period}" mode = "local_quota" epsilon = 0.5 deadline_ms = 5000'
    )
    nodes = [
        Node(parse_config(conf), f"relay-0-{i}", redis_server.url, namespace=namespace)
        for i in (1, 2, 3)
    ]
    for node in nodes:
        await node.start()
    seconds_, micros = redis_server.client().time()
    offset = seconds_ * 1000 + micros / 1000 - time.monotonic() * 1000  # server - local ms
    admitted: list[float] = []
    end = time.monotonic() + seconds
    dies_at = time.monotonic() + seconds / 3

    async def caller(node: Node, mortal: bool) -> None:
        while time.monotonic() < end and not (mortal and time.monotonic() > dies_at):
            decision = await node.throttles.acquire([("t1", 1)])
            assert not decision.degraded
            if decision.allowed:
                admitted.append(time.monotonic() * 1000 + offset)
            else:
                await asyncio.sleep(min(decision.retry_after_ms, 20) / 1000)
            await asyncio.sleep(0)

    try:
        await asyncio.gather(
            *(caller(node, i == 2) for i, node in enumerate(nodes) for _ in range(20))
        )
        from tests.helpers import crash

        await crash(nodes[2])  # it dies holding whatever it had reserved
        stats = [vars(node.throttles.stats) for node in nodes[:2]]
    finally:
        for node in nodes[:2]:
            await node.stop()
    admitted.sort()
    window = period * 1000 - 2  # allow for the clock offset measurement (~1 ms)
    worst = max(
        bisect.bisect_right(admitted, t) - bisect.bisect_left(admitted, t - window)
        for t in admitted
    )
    assert worst <= n, f"{worst} admissions in one {period} s window, limit {n}"
    assert len(admitted) >= 0.5 * n * seconds / period
    local = sum(s["local_decisions"] for s in stats)
    reserved = sum(s["reservations"] for s in stats)
    assert local > 5 * reserved, stats  # most decisions never touched Redis


async def test_from_node_shows_one_nodes_share(shared_redis: AnyRedis, namespace: str) -> None:
    from mcluster.console import ConsoleContext, run_command

    cfg = parse_config(CONF.replace('"5/60"', '"5/60" mode = "local_quota"'))
    async with (
        Node(cfg, "relay-0-1", shared_redis.url, namespace=namespace) as a,
        Node(cfg, "relay-0-2", shared_redis.url, namespace=namespace) as b,
    ):
        for _ in range(3):
            assert (await a.throttles.acquire([("t1", 2)])).allowed
        assert (await b.throttles.acquire([("t1", 1)])).allowed
        assert (await b.throttles.acquire([("strict", 1)])).allowed  # reserves locally
        ctx = ConsoleContext(a.client, a.keys)

        async def used(node: str) -> dict[str, int]:
            line = "cluster shared show shared_named_throttles" + (f" from {node}" if node else "")
            result = await run_command(ctx, line)
            return {r["key"]: r["count"] for r in result.data["rows"]}

        assert (await used(""))["t1"] == 7
        assert (await used("relay-0-1"))["t1"] == 6
        assert (await used("relay-0-2"))["t1"] == 1
        share = (await used("relay-0-2"))["strict"]
        assert share == (await used(""))["strict"] >= 1  # reserved tokens count as its share
        await b.throttles.release()  # unspent tokens go back, in both windows
        assert (await used("relay-0-2"))["strict"] == (await used(""))["strict"] == 1


async def test_count_of_a_throttle_by_node(shared_redis: AnyRedis, namespace: str) -> None:
    async with (
        Node(parse_config(CONF), "relay-0-1", shared_redis.url, namespace=namespace) as a,
        Node(parse_config(CONF), "relay-0-2", shared_redis.url, namespace=namespace) as b,
    ):
        await a.throttles.acquire([("t1", 3)])
        await b.throttles.acquire([("t1", 2)])
        assert await a.count("shared_named_throttles", "t1") == 5
        assert await a.count("shared_named_throttles", "t1", "relay-0-2") == 2


@pytest.mark.parametrize("server", ["redis_server", "redis_server_62"])
async def test_running_sum_stays_true_across_bucket_edges(
    server: str, request: pytest.FixtureRequest, namespace: str
) -> None:
    """The window's running sum ("s") always equals its stored buckets, and no bucket is
    stored below "o", through acquires, reservations and returns over many bucket edges."""
    redis: RedisServer = request.getfixturevalue(server)
    conf = CONF.replace('"1000/10"', '"40/0.5"')  # buckets of 50 ms
    async with Node(parse_config(conf), "relay-0-1", redis.url, namespace=namespace) as node:
        th, admin = node.throttles, node.client
        key = throttle.window_key(th.okeys, "t1")
        rate = parse_rate("40/0.5")
        end = time.monotonic() + 1.0  # 20 bucket edges
        returned = 0
        run = node.decision_scripts.run
        while time.monotonic() < end:
            await th.acquire([("t1", 1)])
            grant, _, bucket, _ = await run(
                "throttle_reserve", th._windows("t1"), [40, 500, rate.bucket_ms, 3, 0.5]
            )
            if int(grant) > 1:
                returned += int(await run("throttle_return", th._windows("t1"), [bucket, 1]))
            raw = {k.decode(): int(v) for k, v in (await admin.hgetall(key)).items()}
            if not raw:
                continue
            buckets = {int(b): c for b, c in raw.items() if b.isdigit()}
            assert raw["s"] == sum(buckets.values()), raw
            assert all(b >= raw["o"] for b in buckets), raw
            assert raw["s"] <= 40, raw  # never over the limit, reservations included
        assert returned > 0  # the return path was exercised


def test_plan_packs_each_window_once_with_its_keys_and_rate() -> None:
    """``throttle.plan`` (window keys and rate fields remembered) gives exactly the KEYS
    and ARGV spelled out from ``window_key`` and the parsed rates, for requests that
    share windows, force, and probe (a negative cost)."""
    import random

    from mcluster.store.keys import ClusterKeys

    okeys = ClusterKeys("plan-test").object(throttle.OBJECT)
    rates = ["5/60", "100/3600", "10000000/86400", "1/1"]
    defs = {f"t{i}": ThrottleDef(name=f"t{i}", rate=rates[i % len(rates)]) for i in range(12)}
    rng = random.Random(7)
    for _ in range(50):
        requests = [
            throttle.Request(
                tuple(
                    (rng.choice(sorted(defs)), rng.choice([1, 2, -3]))
                    for _ in range(rng.randint(1, 4))
                ),
                force=rng.random() < 0.2,
            )
            for _ in range(rng.randint(1, 8))
        ]
        names: list[str] = []
        tail: list[int | str] = []
        for request in requests:
            tail += [int(request.force), len(request.limits)]
            for name, cost in request.limits:
                if name not in names:
                    names.append(name)
                tail += [names.index(name) + 1, cost]
        head: list[int | str] = []
        for name in names:
            rate = parse_rate(defs[name].rate)
            head += [rate.count, rate.period_ms, rate.bucket_ms]
        keys = [throttle.window_key(okeys, n) for n in names]
        keys += [throttle.window_key(okeys, n, "relay-1") for n in names]
        assert throttle.plan(okeys, requests, defs, "relay-1") == (keys, [len(names), *head, *tail])
