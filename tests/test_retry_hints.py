"""Retry hints never exceed the window, and are true: a property test of the throttle
scripts on a real Redis, over random rates and random histories of counts.

A window's history is written straight into its hash (counts per bucket and each bucket's
last count time, relative to Redis TIME), then throttle_one decides one request; when it is
refused, its ``retry_after_ms`` must be at most the period and the request must fit at
that moment by the window's own rule (a count is held for exactly one period)."""

from __future__ import annotations

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcluster.objects.rates import Rate
from mcluster.store.scripts import script_source
from tests.redis_servers import RedisServer

Event = tuple[int, int]  # (ms before now, count)


def live_count(buckets: dict[int, int], times: dict[int, int], rate: Rate, at: int) -> int:
    """What the window holds at ``at``: buckets from the one the window's start falls in,
    that one only while its last count is less than a period old."""
    p, w = rate.period_ms, rate.bucket_ms
    oldest = (at - p) // w
    return sum(c for b, c in buckets.items() if b > oldest or (b == oldest and times[b] + p > at))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(1, 40),
    period_ms=st.sampled_from([100, 1000, 2500, 10_000, 60_000, 120_000, 3_600_000]),
    history=st.lists(st.tuples(st.floats(0, 1.1), st.integers(1, 10)), max_size=30),
    cost=st.integers(1, 5),
)
def test_a_refusal_says_when_to_retry_within_the_window(
    redis_server: RedisServer, n: int, period_ms: int, history: list[tuple[float, int]], cost: int
) -> None:
    rate = Rate(n, period_ms / 1000)
    assert rate.period_ms == period_ms
    client = redis.Redis.from_url(redis_server.url)
    key = "retry-hints:window"
    try:
        client.delete(key)
        seconds, micros = client.time()
        now = int(seconds) * 1000 + int(micros) // 1000
        buckets: dict[int, int] = {}
        times: dict[int, int] = {}
        for ago, count in history:
            at = now - int(ago * period_ms)
            b = at // rate.bucket_ms
            buckets[b] = buckets.get(b, 0) + count
            times[b] = max(times.get(b, 0), at)
        if buckets:
            fields = {str(b): c for b, c in buckets.items()}
            fields |= {f"m{b}": t for b, t in times.items()}
            client.hset(key, mapping=fields)  # no running sum: the script adds it up
        one = client.register_script(script_source("throttle_one"))
        at, allowed, retry, _ = one(
            keys=[key, key + ":share"], args=[n, period_ms, rate.bucket_ms, cost, 0]
        )
        if allowed:
            assert live_count(buckets, times, rate, at) + cost <= n
            return
        if cost > n:
            assert retry == -1
            return
        assert 1 <= retry <= period_ms, (retry, period_ms)
        assert live_count(buckets, times, rate, at) + cost > n  # refused for a reason
        assert live_count(buckets, times, rate, at + retry) + cost <= n  # and the hint is true
    finally:
        client.delete(key, key + ":share")
        client.close()


def test_five_in_one_bucket_then_retry_after_at_most_the_period(redis_server: RedisServer) -> None:
    """The issue's case: 5 per 60 s used at once; the refusal waits at most 60 s."""
    client = redis.Redis.from_url(redis_server.url)
    one = client.register_script(script_source("throttle_one"))
    keys = ["retry-hints:five", "retry-hints:five:share"]
    try:
        for _ in range(5):
            assert one(keys=keys, args=[5, 60_000, 6000, 1, 0])[1] == 1
        _, allowed, retry, left = one(keys=keys, args=[5, 60_000, 6000, 1, 0])
        assert (allowed, left) == (0, 0)
        assert 59_000 <= retry <= 60_000
    finally:
        client.delete(*keys)
        client.close()
