"""Inbound audit metrics: windows by Redis time, prefix counts, the weighted average.

Time is controlled without sleeping: the scripts take an offset (ms) added to the Redis
time, and each test first reads the server's time to put its virtual "now" in the middle
of a window, then places events whole windows before it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from mcluster.agent.audit_recorder import AuditRecorder
from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects import audit
from mcluster.objects.audit import Item, Target, monitor_target
from mcluster.objects.audit_views import AuditSettings, ip_cluster, show_ip
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts
from tests.redis_servers import RedisServer

CONF = """
cluster {
  Replicate "metrics" { parameters = "connect;reception;rejection;delivery;transfail" }
}
inbound_audit { monitors = ("300,6" "1800,4") }
"""
SETTINGS = AuditSettings.from_config(parse_config(CONF))
W_MS = 300_000


@pytest.fixture
async def scripts(any_redis: RedisServer) -> AsyncIterator[Scripts]:
    client = Redis.from_url(any_redis.url)
    yield Scripts(client)
    await client.aclose()


async def server_ms(client: Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def mid_window_offset(client: Redis, window_ms: int, fraction: float = 0.5) -> int:
    """An offset that puts the virtual now at ``fraction`` of a window of ``window_ms``."""
    real = await server_ms(client)
    return (real // window_ms + 1) * window_ms + int(fraction * window_ms) - real


def recent(counts: list[int]) -> int:
    """Events recorded in real time just now: in window 0, or in window 1 if a window
    boundary passed since (the placement in windows is tested with controlled time)."""
    assert all(n == 0 for n in counts[2:]), counts
    return counts[0] + counts[1]


async def place(
    scripts: Scripts,
    keys: ClusterKeys,
    offset: int,
    events: dict[tuple[str, str], int],
    seq: int,
) -> None:
    """Apply some (type, address) -> count at a virtual time, to every monitor."""
    targets = SETTINGS.targets(audit.GLOBAL)
    items = {Item.address(audit.EVENT_TYPES[t], ip): n for (t, ip), n in events.items()}
    await audit.apply(scripts, audit.audit_keys(keys), "test", seq, [(targets, items)], offset)


async def test_events_land_in_the_window_of_their_server_time(
    scripts: Scripts, namespace: str
) -> None:
    keys = ClusterKeys(namespace)
    # 1080 s into an 1800 s window, so 180 s into a 300 s one: no placement near a boundary
    now = await mid_window_offset(scripts.client, 1_800_000, 0.6)
    # window k of the 300 s monitor lies k * 300 s back; placed there: k + 1 connections.
    for k in range(8):
        await place(scripts, keys, now - k * W_MS, {("connect", "10.1.2.3"): k + 1}, seq=k + 1)
    shown = await show_ip(scripts, keys, SETTINGS, "10.1.2.3", offset_ms=now)
    five, thirty = shown["monitors"]
    assert five["connections"] == [1, 2, 3, 4, 5, 6]  # windows 6, 7 are past the span
    assert five["receptions"] == [0] * 6 and five["rejections"] == [0] * 6
    # 1800 s windows: the placements 0..900 s back share window 0, 1200..2100 s window 1
    assert thirty["connections"] == [1 + 2 + 3 + 4, 5 + 6 + 7 + 8, 0, 0]
    # a minute later the windows have not moved; a 300 s window later they have
    later = await show_ip(scripts, keys, SETTINGS, "10.1.2.3", offset_ms=now + W_MS)
    assert later["monitors"][0]["connections"] == [0, 1, 2, 3, 4, 5]


async def test_windows_past_the_span_read_zero_and_keys_expire(
    scripts: Scripts, namespace: str
) -> None:
    keys = ClusterKeys(namespace)
    now = await mid_window_offset(scripts.client, W_MS)
    await place(scripts, keys, now - 2 * W_MS, {("rejection", "192.0.2.7"): 4}, seq=1)
    okeys = audit.audit_keys(keys)
    bucket = [k async for k in scripts.client.scan_iter(f"{okeys.base}:g:300:*")]
    assert len(bucket) == 3  # the /0, /8 and /16 buckets of one window
    for key in bucket:  # written half-way through its window: it leaves a span of 6 windows
        ttl = await scripts.client.pttl(key)  # 5.5 windows later (TTL from the write's time)
        assert 5 * W_MS < ttl <= 5.5 * W_MS
    span = await show_ip(scripts, keys, SETTINGS, "192.0.2.0/24", offset_ms=now)
    assert span["monitors"][0]["rejections"] == [0, 0, 4, 0, 0, 0]
    gone = await show_ip(scripts, keys, SETTINGS, "192.0.2.0/24", offset_ms=now + 4 * W_MS)
    assert gone["monitors"][0]["rejections"] == [0] * 6
    target = monitor_target(audit.GLOBAL, 300, 6)
    _, counts = await audit.read_windows(
        scripts, okeys, audit.address_plan("192.0.2.7"), ["j"], [(target, 0, 9)], now
    )
    assert [w[0] for w in counts[0]] == [0, 0, 4, 0, 0, 0, 0, 0, 0, 0]


async def test_a_repeated_batch_counts_once(scripts: Scripts, namespace: str) -> None:
    keys = ClusterKeys(namespace)
    okeys = audit.audit_keys(keys)
    groups: list[tuple[list[Target], dict[Item, int]]] = [
        (SETTINGS.targets(audit.GLOBAL), {Item.address("c", "10.0.0.1"): 2})
    ]
    assert (await audit.apply(scripts, okeys, "o1", 1, groups))[0] is True
    assert (await audit.apply(scripts, okeys, "o1", 1, groups))[0] is False
    assert (await audit.apply(scripts, okeys, "o2", 1, groups))[0] is True  # another origin
    shown = await show_ip(scripts, keys, SETTINGS, "10.0.0.1")
    assert recent(shown["monitors"][0]["connections"]) == 4


def model_count(counts: Counter[str], cidr: str) -> int:
    net = ipaddress.ip_network(cidr, strict=False)
    return sum(n for ip, n in counts.items() if ipaddress.ip_address(ip) in net)


async def test_prefix_counts_equal_a_model(redis_server: RedisServer, namespace: str) -> None:
    rng = random.Random(7)
    counts: dict[str, Counter[str]] = {t: Counter() for t in ("connect", "reception")}
    nets = ["10.1", "10.2", "172.16", "10.1"]
    async with (
        Node(parse_config(CONF), "a", redis_server.url, namespace=namespace) as a,
        Node(parse_config(CONF), "b", redis_server.url, namespace=namespace) as b,
    ):
        for i in range(3000):
            ip = f"{rng.choice(nets)}.{rng.randrange(4)}.{rng.randrange(256)}"
            kind = "connect" if i % 3 else "reception"
            n = rng.randrange(1, 4)
            (a if i % 2 else b).audit.record(kind, ip, count=n)
            counts[kind][ip] += n
        a.audit.record("connect", "2001:db8::1", count=5)
        await a.flush()
        await b.flush()
        probes = [*rng.sample(sorted(counts["connect"]), 5), "10.1.2.0/24", "10.1.3.77/24"]
        probes += ["10.1.0.0/16", "10.2.0.0/16", "10.0.0.0/8", "172.0.0.0/8", "10.1.0.0/20"]
        probes += ["10.1.0.0/15", "0.0.0.0/0", "11.0.0.0/8"]
        for cidr in probes:
            shown = await b.audit.show_ip(cidr)
            for monitor in shown["monitors"]:
                connections, receptions = monitor["connections"], monitor["receptions"]
                assert recent(connections) == model_count(counts["connect"], cidr), cidr
                assert recent(receptions) == model_count(counts["reception"], cidr), cidr
                assert len(connections) == monitor["windows"]
        data_keys = [k async for k in a.client.scan_iter(f"{a.audit.okeys.base}:g:*", count=1000)]
        assert len(data_keys) == 2 * (1 + 2 + 3 + 15)  # 2 monitors: IPv4 1+2+3, IPv6 15
        for key in data_keys:  # every key of a window expires with it (no key lives on)
            assert 0 < await a.client.pttl(key) <= 4 * 1_800_000, key
        v6 = await a.audit.show_ip("2001:db8::/32")
        assert recent(v6["monitors"][0]["connections"]) == 5
        assert v6["cidr"] == "2001:db8::/32"


async def test_weighted_average_matches_its_formula(scripts: Scripts, namespace: str) -> None:
    keys = ClusterKeys(namespace)
    seq = 0
    for fraction in (0.1, 0.5, 0.9):
        ns_keys = ClusterKeys(f"{namespace}{int(fraction * 10)}")
        now = await mid_window_offset(scripts.client, W_MS, fraction)
        seq += 1
        await place(scripts, ns_keys, now - W_MS, {("connect", "10.9.0.1"): 60}, seq)
        seq += 1
        await place(scripts, ns_keys, now, {("connect", "10.9.0.2"): 12}, seq)
        value = await ip_cluster(
            scripts, ns_keys, SETTINGS, "connect", "10.9.0.1", 0, 24, offset_ms=now
        )
        expected = 12 + 60 * (1 - fraction)  # current + previous * (W - elapsed) / W
        assert value == pytest.approx(expected, abs=0.3), fraction  # 0.3 = 1.5 s of drift
        only_one = await ip_cluster(scripts, ns_keys, SETTINGS, "connect", "10.9.0.2", 0, 32, now)
        assert only_one == 12
    assert await ip_cluster(scripts, keys, SETTINGS, "connect", "10.9.0.1") == 0


def test_weighted_formula() -> None:
    assert audit.weighted(10, 100, 300, 300_000 * 7) == 110  # start: all of the previous
    assert audit.weighted(10, 100, 300, 300_000 * 7 + 150_000) == 60
    assert audit.weighted(10, 100, 300, 300_000 * 8 - 3_000) == pytest.approx(11)


async def test_outbound_by_domain_and_binding(redis_server: RedisServer, namespace: str) -> None:
    async with Node(parse_config(CONF), "a", redis_server.url, namespace=namespace) as node:
        node.audit.record("delivery", domain="aol.com", binding="b1", count=3)
        node.audit.record("delivery", domain="aol.com", binding="b2")
        node.audit.record("transfail", domain="gmail.com", binding="b1", count=2)
        await node.flush()
        aol = await node.audit.outbound("domain", "aol.com")
        assert recent(aol["monitors"][0]["delivery"]) == 4
        b1 = await node.audit.outbound("binding", "b1")
        assert recent(b1["monitors"][0]["delivery"]) == 3
        assert recent(b1["monitors"][0]["transfail"]) == 2
        assert b1["monitors"][1]["permfail"] == [0] * 4  # permfail is not counted
        with pytest.raises(ValueError, match="permfail events are not counted"):
            node.audit.record("permfail", domain="aol.com")
        with pytest.raises(ValueError, match="needs ip"):
            node.audit.record("connect", domain="aol.com")
        with pytest.raises(ValueError, match="not a valid IPv4 or IPv6"):
            node.audit.record("connect", "10.0.0.300")
        with pytest.raises(ValueError, match="count must be"):
            node.audit.record("connect", "10.0.0.3", count=0)
        assert node.stats()["audit"]["recorded"] == 6  # nothing of the bad events


class Interrupting(Scripts):
    """Scripts whose call number ``at`` is cancelled before it is sent, or (``lost``)
    after Redis applied it, as if the reply never came."""

    def __init__(self, client: Redis, at: int, lost: bool) -> None:
        super().__init__(client)
        self.calls, self.at, self.lost = 0, at, lost

    async def run(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        self.calls += 1
        if self.calls == self.at and not self.lost:
            raise asyncio.CancelledError
        reply = await super().run(name, keys, args)
        if self.calls == self.at:
            raise asyncio.CancelledError
        return reply


@pytest.mark.parametrize(("at", "lost"), [(1, False), (5, False), (1, True), (5, True)])
async def test_a_shipment_cut_short_loses_and_doubles_nothing(
    scripts: Scripts, namespace: str, at: int, lost: bool
) -> None:
    keys = ClusterKeys(namespace)
    interrupting = Interrupting(scripts.client, at, lost)
    recorder = AuditRecorder(SETTINGS, keys, "a", lambda: interrupting)
    for i in range(3000):
        recorder.record("connect", f"10.{i % 7}.{i % 251}.{i % 13}")
    with pytest.raises(asyncio.CancelledError):
        await recorder.ship()
    assert recorder.stats.batches == at - 1 and recorder.unsent  # cut short at batch `at`
    await recorder.ship()  # the batch cut short goes again with its seq, then the rest
    assert recorder.stats.repeats == int(lost)
    shown = await show_ip(scripts, keys, SETTINGS, "10.0.0.0/8")
    assert recent(shown["monitors"][0]["connections"]) == 3000
