"""A throttle family's own connection (ScriptLink) and the single-limit script throttle_one:
the same answers as the general path, through SCRIPT FLUSH, cancellations and lost links."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from mcluster.store.connect.urls import decision_client, make_async_client
from mcluster.store.script_link import ScriptLink
from mcluster.store.scripts import Scripts
from tests.redis_servers import RedisServer


async def test_runs_scripts_and_reloads_after_script_flush(redis_server: RedisServer) -> None:
    client = decision_client(make_async_client(redis_server.url))
    scripts = Scripts(client)
    try:
        assert ScriptLink.usable(scripts)
        link = ScriptLink(scripts)
        w = ["{ln}:w", "{ln}:n"]
        first = await link.run("throttle_one", w, [10, 1000, 100, 3, 0])
        assert first[1:] == [1, 0, 7]
        await client.script_flush()
        again = await link.run("throttle_one", w, [10, 1000, 100, 3, 0])
        assert again[1:] == [1, 0, 4]  # reloaded on NOSCRIPT, counted once
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await client.set("{ln}:s", "x")
            await link.run("throttle_one", ["{ln}:s", "{ln}:n"], [10, 1000, 100, 1, 0])
        assert (await link.run("throttle_one", w, [10, 1000, 100, 1, 0]))[1:] == [1, 0, 3]
    finally:
        await client.aclose()


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[ScriptLink]:
    client = decision_client(make_async_client(redis_server.url))
    yield ScriptLink(Scripts(client))
    await client.aclose()


async def test_a_cancelled_call_leaves_no_stale_reply(
    link: ScriptLink, redis_server: RedisServer
) -> None:
    """A deadline that cancels a call mid-read drops the connection: the next call gets
    its own reply, never the late one of the cancelled call."""
    client = link.scripts.client
    with redis_server.client() as admin:
        w = ["{lc}:w", "{lc}:n"]
        await link.run("throttle_one", w, [0, 1000, 100, 1, 0])
        # a slow script holds the server for ~300 ms while the call is cancelled
        slow = (
            "local t = redis.call('TIME') local e = t[1] * 1e6 + t[2] + 300000 "
            "while true do local n = redis.call('TIME') if n[1] * 1e6 + n[2] > e then "
            "break end end return 'late'"
        )
        scripts = link.scripts
        scripts._bound["slow"] = client.register_script(slow)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await link.run("slow", [], [])
        reply = await link.run("throttle_one", w, [0, 1000, 100, 2, 0])
        assert reply[1:] == [1, 0, -1], reply  # unlimited: allowed, remaining -1
        assert admin.hget("{lc}:w", "s") == b"3"


async def test_reconnects_after_the_connection_is_killed(
    link: ScriptLink, redis_server: RedisServer
) -> None:
    with redis_server.client() as admin:
        w = ["{lk}:w", "{lk}:n"]
        await link.run("throttle_one", w, [100, 1000, 100, 1, 0])
        admin.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(redis.ConnectionError):
            await link.run("throttle_one", w, [100, 1000, 100, 1, 0])
        assert (await link.run("throttle_one", w, [100, 1000, 100, 1, 0]))[1] == 1
        assert admin.hget("{lk}:w", "s") == b"2"  # the failed call counted nothing


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_throttle_one_answers_as_throttle_acquire(any_redis: RedisServer, seed: int) -> None:
    """Twin windows, the same random costs (forced ones too) through both scripts, on
    Redis 7 and 6.2: the same allowed, retry_after and remaining, decision by decision."""
    rng = random.Random(seed)
    client = make_async_client(any_redis.url)
    scripts = Scripts(client)
    n, period, bucket = 20, 300, 30
    resyncs = 0
    try:
        for _ in range(150):
            cost, force = rng.choice([0, 1, 1, 2, 5, 25]), int(rng.random() < 0.1)
            one = await scripts.run(
                "throttle_one", ["{tw}:a", "{tw}:an"], [n, period, bucket, cost, force]
            )
            general = await scripts.run(
                "throttle_acquire",
                ["{tw}:b", "{tw}:bn"],
                [1, n, period, bucket, force, 1, 1, cost],
            )
            # the two calls run microseconds apart: when a bucket edge falls between them
            # they counted in different buckets, and each window holds a bucket until a
            # period after its own last count, so when that moment falls between them one
            # window has let its oldest bucket go and the other not yet: start both afresh
            a_at, a_allowed, a_retry, *a_left = one
            b_at, b_allowed, b_retry, *b_left = general
            if a_at // bucket != b_at // bucket or (a_allowed, a_left) != (b_allowed, b_left):
                resyncs += 1
                await client.delete("{tw}:a", "{tw}:an", "{tw}:b", "{tw}:bn")
                continue
            # retry_after as a Redis time: a bucket's last count differs by the ms between
            # the twin calls that made it, so the two may differ by that much
            if a_retry > 0 and b_retry > 0:
                assert abs((a_retry + a_at) - (b_retry + b_at)) <= 5, (cost, force, one, general)
            else:
                assert a_retry == b_retry, (cost, force, one, general)
            if rng.random() < 0.2:
                await asyncio.sleep(bucket / 1000)
        assert resyncs < 30, f"{resyncs} of 150 decisions needed the twins started afresh"
        raw_a = await client.hgetall("{tw}:a")
        raw_b = await client.hgetall("{tw}:b")
        assert raw_a.get(b"s") == raw_b.get(b"s")
        assert {k for k in raw_a if not k.startswith(b"m")} == {
            k for k in raw_b if not k.startswith(b"m")
        }
    finally:
        await client.aclose()
