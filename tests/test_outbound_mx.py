"""Per-MX (``Host``) and per-provider (``Provider``) limits, cluster-wide: caps exact under
concurrent opens on three nodes, one OBTM bucket per Host, spill-over to sibling MX hosts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mcluster import ConfigError, Node, parse_config
from mcluster.objects.outbound import MAX_CONN, OBTM_OPTION, OutboundPolicy, Route
from tests.helpers import crash, started_nodes, until
from tests.redis_cluster import AnyRedis

CONF = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.6
  Replicate "outbound_domains" {}
  Replicate "OBTM" {}
}
Host "mx1.example.net" {
  cluster_max_outbound_connections = 7
  cluster_outbound_throttle_messages = "10/60"
}
Host "mx2.example.net" { cluster_max_outbound_connections = 2 }
Provider "google" {
  mx_suffix = (".google.com" ".googlemail.com")
  cluster_max_outbound_connections = 12
  cluster_outbound_throttle_messages = "20/60"
}
Binding "b2" {
  Provider "google" { cluster_max_outbound_connections = 3 }
  Host "mx1.example.net" { cluster_max_outbound_connections = 1 }
}
Domain "example.org" { cluster_max_outbound_connections = 50 }
"""

GMAIL = ("gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com")


def keys(route: Route) -> list[tuple[str, int, str]]:
    return [(c.key, c.limit, c.source) for c in OutboundPolicy(parse_config(CONF)).caps(route)]


def test_host_and_provider_caps_resolve() -> None:
    # a Host cap counts every binding's connections to that MX; the domain's applies too
    assert keys(Route("b1", "example.org", host="MX1.example.net.")) == [
        ("max:b1::example.org", 50, f"{MAX_CONN} (domain)"),
        ("max:host:mx1.example.net", 7, f"{MAX_CONN} (host)"),
    ]
    assert keys(Route("b2", "example.org", host="mx1.example.net"))[1:] == [
        ("max:host:mx1.example.net", 7, f"{MAX_CONN} (host)"),
        ("max:binding:b2:host:mx1.example.net", 1, f"{MAX_CONN} (binding::host)"),
    ]
    # every domain whose MX matches the provider shares its cap, by host or by mx_hosts
    gmail = keys(Route("b1", "gmail.com", host=GMAIL[0]))
    assert gmail == [("max:provider:google", 12, f"{MAX_CONN} (provider)")]
    by_mx_hosts = Route("b1", "customer.example", mx_hosts=("aspmx.l.googlemail.com",))
    assert keys(by_mx_hosts) == gmail
    own = ("max:binding:b2:provider:google", 3, f"{MAX_CONN} (binding::provider)")
    assert keys(Route("b2", "gmail.com", host=GMAIL[1])) == [*gmail, own]
    assert keys(Route("b1", "x.com", host="notgoogle.com")) == []
    assert keys(Route("b1", "x.com", host="evilgoogle.com")) == []


def test_host_and_provider_buckets() -> None:
    policy = OutboundPolicy(parse_config(CONF))
    buckets = policy.buckets(OBTM_OPTION, Route("b1", "a.org", host="mx1.example.net"))
    assert [(path, str(rate)) for path, rate in buckets] == [("host:mx1.example.net", "10/60")]
    buckets = policy.buckets(OBTM_OPTION, Route("b9", "gmail.com", host=GMAIL[0]))
    assert [(path, str(rate)) for path, rate in buckets] == [("provider:google", "20/60")]
    assert policy.buckets(OBTM_OPTION, Route("b1", "a.org")) == []


BAD = [
    ('Provider "g" {\n  cluster_max_outbound_connections = 2\n}',
     "p.conf:1:1: Provider 'g' has no mx_suffix"),
    ('Provider "g" {\n  mx_suffix = ("")\n}',
     "p.conf:2:3: Provider 'g': mx_suffix entries must be non-empty"),
    ('Provider "g" {\n  mx_suffix = ".g.com"\n  colour = "red"\n}',
     "p.conf:3:3: Provider 'g': unknown option 'colour'"),
    ('Provider "g" { mx_suffix = ".g.com" }\nProvider "G" { mx_suffix = ".h.com" }',
     "p.conf:2:1: Provider 'G' is defined twice"),
    ('Binding "b" {\n  Provider "h" { cluster_max_outbound_connections = 1 }\n}',
     "p.conf:2:3: Provider 'h' inside a Binding names no top-level"),
    ('Domain "d" {\n  Provider "h" {}\n}', "p.conf:2:3: Provider 'h' inside Domain 'd'"),
    ('Host "mx" {\n  cluster_max_outbound_connections = "x"\n}',
     "p.conf:2:3: cluster_max_outbound_connections: expected a whole"),
    ('Host "mx" {\n  cluster_outbound_throttle_messages = "5/0"\n}',
     "p.conf:2:3: cluster_outbound_throttle_messages: "),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), BAD)
def test_bad_host_and_provider_scopes(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        OutboundPolicy(parse_config(text, "p.conf"))


@pytest.fixture
async def nodes(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[list[Node]]:
    async with started_nodes(CONF, shared_redis.url, namespace, 3) as made:
        yield made


@pytest.mark.parametrize(
    ("routes", "cap"),
    [
        # one MX host, reached for two domains on two bindings: 7 across the farm
        ([Route("b1", "example.org", host="mx1.example.net"),
          Route("b3", "example.com", host="mx1.example.net")], 7),
        # one provider, three domains, two MX hosts: 12 across the farm
        ([Route("b1", "gmail.com", host=GMAIL[0]), Route("b3", "gmail.com", host=GMAIL[1]),
          Route("b1", "customer.example", host="aspmx.l.googlemail.com")], 12),
    ],
    ids=["host", "provider"],
)  # fmt: skip
async def test_caps_exact_under_100_concurrent_opens(
    nodes: list[Node], routes: list[Route], cap: int
) -> None:
    results = await asyncio.gather(
        *(nodes[i % 3].open_connection(routes[i % len(routes)]) for i in range(100))
    )
    held = [(i % 3, r.slot) for i, r in enumerate(results) if r.allowed]
    assert len(held) == cap, f"re-syncs {[n.rejoins for n in nodes]}"
    assert all(r.reason and MAX_CONN in r.reason for r in results if not r.allowed)
    key = nodes[0].outbound.caps(routes[0])[-1].key
    assert await nodes[0].count("outbound_slots", key) == cap
    for n, slot in held:
        assert await nodes[n].close_connection(str(slot))
    assert await nodes[0].count("outbound_slots", key) == 0
    stats = [n.connection_stats() for n in nodes]
    refused = sum(s.refused[f"{MAX_CONN} ({key.split(':')[1]})"] for s in stats if s)
    assert refused == 100 - cap


async def test_binding_provider_cap_within_the_provider_cap(nodes: list[Node]) -> None:
    b2 = [await nodes[i % 3].open_connection(Route("b2", "gmail.com", host=GMAIL[0]))
          for i in range(5)]  # fmt: skip
    assert [d.allowed for d in b2] == [True] * 3 + [False] * 2
    assert b2[-1].reason is not None and "(binding::provider)" in b2[-1].reason
    others = [await nodes[i % 3].open_connection(Route("b1", "gmail.com", host=GMAIL[1]))
              for i in range(10)]  # fmt: skip
    assert sum(d.allowed for d in others) == 12 - 3


async def test_obtm_at_host_scope_is_one_bucket(nodes: list[Node]) -> None:
    routes = [Route(b, d, host="mx1.example.net") for b in ("b1", "b3") for d in ("a.org", "b.com")]
    results = await asyncio.gather(
        *(nodes[i % 3].outbound_message(routes[i % 4]) for i in range(30))
    )
    # one bucket for the farm: Redis counted exactly 10, whichever nodes and routes asked
    assert await nodes[0].count("OBTM", "host:mx1.example.net") == 10
    exact = [d for d in results if not d.degraded]  # under load a deadline may pass
    allowed = sum(d.allowed for d in exact)
    assert allowed == 10 if len(exact) == len(results) else allowed <= 10
    assert all(d.retry_after_ms > 0 for d in exact if not d.allowed)


async def test_spill_over_names_siblings_with_room(nodes: list[Node]) -> None:
    mx = ("mx2.example.net", "mx1.example.net", "mx3.example.net")
    route = Route("b1", "example.org", host="mx2.example.net", mx_hosts=mx)
    assert all([(await nodes[0].open_connection(route)).allowed for _ in range(2)])
    refused = await nodes[1].open_connection(route)
    assert not refused.allowed and refused.spill_over == ("mx1.example.net", "mx3.example.net")
    # fill mx1 (7 cluster-wide): only mx3 is left to spill to
    for i in range(7):
        assert (await nodes[i % 3].open_connection(Route("b1", "x.org", host=mx[1]))).allowed
    refused = await nodes[2].open_connection(route)
    assert refused.spill_over == ("mx3.example.net",)
    assert refused.to_json()["spill_over"] == ["mx3.example.net"]
    # a refusal by a cap that is not one MX host's names no sibling
    for _ in range(48):
        assert (await nodes[0].open_connection(Route("b1", "example.org"))).allowed
    full = await nodes[0].open_connection(Route("b1", "example.org", host=mx[2], mx_hosts=mx))
    assert not full.allowed and "(domain)" in str(full.reason) and full.spill_over == ()


async def test_a_cancelled_open_leaves_no_slot(nodes: list[Node]) -> None:
    """Opens cancelled while their batch is on its way may still be taken by Redis: the
    node gives those slots back by itself."""
    route = Route("b1", "example.org", host="mx2.example.net")  # cap 2
    opens = [asyncio.create_task(nodes[0].open_connection(route)) for _ in range(6)]
    await asyncio.sleep(0)  # every open is in flight or queued
    for task in opens:
        task.cancel()
    await asyncio.gather(*opens, return_exceptions=True)
    key = "max:host:mx2.example.net"

    async def freed() -> bool:
        slots = nodes[0]._slots
        assert slots is not None
        return slots.closing == 0 and await nodes[1].count("outbound_slots", key) == 0

    await until(freed, 2.0, "the cancelled opens' slots are given back")
    assert [(await nodes[1].open_connection(route)).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert nodes[0]._slots is not None and nodes[0]._slots.held == {}


async def test_slot_records_leave_with_their_view(
    nodes: list[Node], shared_redis: AnyRedis
) -> None:
    """A node that dies holding slots: reaping frees its counts and deletes its slot
    records too (they are kept per view), so dead connections leave nothing behind."""
    route = Route("b1", "example.org", host="mx1.example.net")
    for _ in range(3):
        assert (await nodes[2].open_connection(route)).allowed
    live = await nodes[0].open_connection(route)
    assert live.allowed
    client = nodes[0].client
    pattern = f"{nodes[0].keys.namespace}:{{outbound_slots}}:n:*:slots"

    async def records() -> dict[str, int]:
        found = {}
        async for key in client.scan_iter(match=pattern):
            found[key.decode()] = int(await client.hlen(key))
        return found

    assert sorted((await records()).values()) == [1, 3]
    await crash(nodes[2])

    async def reaped() -> bool:
        return await nodes[0].count("outbound_slots", "max:host:mx1.example.net") == 1

    await until(reaped, 5.0, "the dead node's slots are reaped")
    assert list((await records()).values()) == [1]  # only the live node's record is left
    assert await nodes[0].close_connection(str(live.slot))
    assert await records() == {}
