"""Three nodes, random events: every view is exact, global == sum of node views == model."""

from __future__ import annotations

import asyncio
import ipaddress
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcluster.agent.node import Node
from mcluster.objects import cidrtree
from mcluster.objects.kinds import CIDRTREE, GAUGE_TABLE
from tests.helpers import Model, config
from tests.redis_cluster import AnyRedis, RedisCluster
from tests.redis_servers import RedisServer

ADDRESSES = [
    "10.0.0.103", "10.0.0.180", "10.0.0.181", "10.0.0.1", "10.0.1.7", "10.200.3.4",
    "192.168.7.1", "192.168.7.129", "127.0.0.1", "0.0.0.0", "255.255.255.255",
    "2001:db8::1", "2001:db8::2", "2001:db8:0:1::5", "2001:db8:ffff::1", "fe80::1", "::1",
    "::ffff:10.0.0.1",
]  # fmt: skip
DOMAINS = ["aol.com", "hotmail.com", "yahoo.com", "bellsouth.net", "omniti.com", "ünï.example"]
NODES = 3

event = st.one_of(
    st.tuples(
        st.integers(0, NODES - 1), st.just("inbound_cidr"), st.sampled_from(ADDRESSES),
        st.sampled_from([1, 1, 1, 2, -1, -1]),
    ),
    st.tuples(
        st.integers(0, NODES - 1), st.just("outbound_domains"), st.sampled_from(DOMAINS),
        st.sampled_from([1, 1, 3, -1]),
    ),
    st.just(None),  # a flush point: every node ships what it has
)  # fmt: skip


def prefixes(rng: random.Random, n: int) -> list[str]:
    out = ["0.0.0.0/0", "::/0"]
    for _ in range(n):
        addr = ipaddress.ip_address(rng.choice(ADDRESSES))
        plen = rng.randint(0, addr.max_prefixlen)
        out.append(str(ipaddress.ip_network(f"{addr}/{plen}", strict=False)))
    return out


def model_count(view: dict[str, int], prefix: str) -> int:
    net = ipaddress.ip_network(prefix)
    return sum(
        c for a, c in view.items() if ipaddress.ip_address(a).version == net.version
        and ipaddress.ip_address(a) in net
    )  # fmt: skip


async def run_and_check(url: str, namespace: str, events: list, seed: int) -> None:
    cfg = config()
    nodes = [Node(cfg, f"relay-0-{i + 1}", url, namespace=namespace) for i in range(NODES)]
    model = Model()
    for node in nodes:
        await node.start()
    try:
        for ev in events:
            if ev is None:
                await asyncio.gather(*(n.flush() for n in nodes))
                model.flush()
                continue
            i, obj, key, delta = ev
            nodes[i].record(obj, key, delta)
            model.record(i, obj, key, delta)
        await asyncio.gather(*(n.flush() for n in nodes))
        model.flush()

        reader = nodes[0]
        for obj, kind in (("inbound_cidr", CIDRTREE), ("outbound_domains", GAUGE_TABLE)):
            views = [("global", model.global_view(obj, NODES))] + [
                (f"relay-0-{i + 1}", model.node_view(i, obj)) for i in range(NODES)
            ]
            for view, expected in views:
                listing = await reader.show(obj, view, limit=None)
                assert listing.rows == kind.model_rows(expected), (obj, view)
                assert listing.total_rows == len(listing.rows)
                assert listing.distinct_keys == len(expected)
            # global == sum of node views, row by row (a global row may be no row of a node)
            for row in (await reader.show(obj, "global", None)).rows:
                per_node = [
                    await reader.count(obj, row.key, f"relay-0-{i + 1}") for i in range(NODES)
                ]
                assert row.count == sum(per_node), (obj, row)
        rng = random.Random(seed)
        expected_global = model.global_view("inbound_cidr", NODES)
        for prefix in prefixes(rng, 15):
            assert await reader.count("inbound_cidr", prefix) == model_count(
                expected_global, prefix
            ), prefix
            node_view = model.node_view(1, "inbound_cidr")
            assert await reader.count("inbound_cidr", prefix, "relay-0-2") == model_count(
                node_view, prefix
            )
        for domain in DOMAINS:
            assert await reader.count("outbound_domains", domain) == expected_global_domain(
                model, domain
            )
        for i in range(NODES):
            listing = await reader.show("inbound_cidr", f"relay-0-{i + 1}", 0)
            gauge = await reader.show("outbound_domains", f"relay-0-{i + 1}", 0)
            assert listing.anomalies + gauge.anomalies == model.anomalies[i]
    finally:
        for node in nodes:
            await node.stop()
    # Nodes that left cleanly took their contributions with them.
    async with Node(cfg, "observer", url, namespace=namespace) as observer:
        assert (await observer.show("inbound_cidr", limit=None)).rows == []
        assert await observer.count("inbound_cidr", "0.0.0.0/0") == 0


def expected_global_domain(model: Model, domain: str) -> int:
    return model.global_view("outbound_domains", NODES).get(domain, 0)


@settings(
    max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(events=st.lists(event, max_size=120), seed=st.integers(0, 2**32))
def test_three_nodes_exact(any_redis: RedisServer, events: list, seed: int) -> None:
    import uuid

    asyncio.run(run_and_check(any_redis.url, "t" + uuid.uuid4().hex[:10], events, seed))


@settings(
    max_examples=12, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(events=st.lists(event, max_size=120), seed=st.integers(0, 2**32))
def test_three_nodes_exact_on_cluster(redis_cluster: RedisCluster, events: list, seed: int) -> None:
    """The same property on a Redis Cluster: each object's keys on their own master."""
    import uuid

    asyncio.run(run_and_check(redis_cluster.url, "t" + uuid.uuid4().hex[:10], events, seed))


def test_reference_sample_rows(shared_redis: AnyRedis, namespace: str) -> None:
    """The Momentum sample: 10.0.0.103 x4, .180 x14, .181 x13 print the reference rows."""
    counts = {"10.0.0.103": 4, "10.0.0.180": 14, "10.0.0.181": 13}
    events = [(n % NODES, "inbound_cidr", a, 1) for a, c in counts.items() for n in range(c)]
    asyncio.run(run_and_check(shared_redis.url, namespace, events, 1))
    assert [(r.key, r.count) for r in cidrtree.model_rows(counts)] == [
        ("10.0.0.0/8", 31),
        ("10.0.0.0/24", 31),
        ("10.0.0.103/32", 4),
        ("10.0.0.180/31", 27),
        ("10.0.0.180/32", 14),
        ("10.0.0.181/32", 13),
    ]


def test_dense_16_is_listed_and_drained_in_pages(shared_redis: AnyRedis, namespace: str) -> None:
    """A /16 with more leaves than one HGETALL may read is paged, and still exact."""
    counts = {f"10.1.{i // 250}.{i % 250}": 1 + i % 3 for i in range(cidrtree.LARGE_BUCKET + 700)}

    async def run() -> None:
        cfg = config()
        async with Node(cfg, "relay-0-1", shared_redis.url, namespace=namespace) as node:
            for address, n in counts.items():
                node.record("inbound_cidr", address, n)
            await node.flush()
            listing = await node.show("inbound_cidr", limit=None)
            assert listing.rows == cidrtree.model_rows(counts)
            assert await node.count("inbound_cidr", "10.1.0.0/16") == sum(counts.values())
        async with Node(cfg, "observer", shared_redis.url, namespace=namespace) as observer:
            assert await observer.count("inbound_cidr", "0.0.0.0/0") == 0  # drained in pages

    asyncio.run(run())
