"""Client leases on connection slots and counts (mcluster/outbound/leases.py): the slots of
an owner that stops renewing are freed within lease TTL + 1 s, through the close path
(every view back to 0, the cap's room back), and the counts it posted with POST
/v1/events are taken back; an owner that renews keeps them; slots and events without an
owner behave as before."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster import Node, parse_config
from mcluster.errors import InvalidValue
from mcluster.faces.http.app import make_app
from mcluster.outbound.leases import Expired, OwnerLeases
from tests.agents import until
from tests.redis_cluster import AnyRedis

TTL = 0.6
CONF = f"""
cluster {{
  heartbeat_interval = 0.2
  lease_ttl = {TTL}
  Replicate "outbound_domains" {{ max_delay = 0.05 }}
  Replicate "inbound_cidr" {{ max_delay = 0.05 }}
}}
Domain "capped.test" {{ cluster_max_outbound_connections = 3 }}
"""


def test_owner_bookkeeping_with_a_clock() -> None:
    now = [0.0]
    leases = OwnerLeases(1.0, clock=lambda: now[0])
    leases.add("a", "s1")
    leases.add("a", "s2")
    leases.add("b", "s3")
    now[0] = 0.9
    assert leases.renew("b") == 1 and leases.renew("nobody") == 0
    assert leases.due() == []
    now[0] = 0.95
    leases.drop("s2")  # a close renews too
    now[0] = 1.85
    assert leases.due() == []
    now[0] = 1.92
    assert leases.due() == [Expired("b", ["s3"], {})]
    now[0] = 2.0
    assert leases.due() == [Expired("a", ["s1"], {})]
    assert leases.held("a") == 0 and leases.renew("a") == 0
    leases.drop("s1")  # closed after it was freed: nothing to do


def test_owner_counts_with_a_clock() -> None:
    """Counts are summed per owner, object and key; what is back at 0 is forgotten, and an
    owner holding nothing is too; the rest comes out of due() with the slots."""
    now = [0.0]
    leases = OwnerLeases(1.0, clock=lambda: now[0])
    leases.count("h1", "inbound_cidr", b"k1", 1)
    leases.count("h1", "inbound_cidr", b"k1", 1)
    leases.count("h1", "inbound_cidr", b"k2", 1)
    leases.count("h1", "inbound_cidr", b"k2", -1)  # its connection closed
    leases.count("h2", "inbound_cidr", b"k1", 1)
    leases.count("h2", "inbound_cidr", b"k1", -1)  # h2 holds nothing: forgotten
    leases.add("h1", "s1")
    leases.drop("s1")  # a slot closed: h1 still holds counts, so it stays
    now[0] = 0.5
    assert leases.renew("h1") == 0  # no slot, but the lease (of its counts) is renewed
    now[0] = 1.4
    assert leases.due() == []
    now[0] = 1.6
    assert leases.due() == [Expired("h1", [], {("inbound_cidr", b"k1"): 2})]
    assert leases.due() == []


@pytest.fixture
async def node(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[Node]:
    made = Node(parse_config(CONF), "relay-l1", shared_redis.url, namespace=namespace)
    await made.start()
    yield made
    await made.stop()


async def _open(api: TestClient[Any, Any], domain: str, owner: str | None) -> dict[str, Any]:
    body = {"binding": "b1", "domain": domain} | ({"owner": owner} if owner else {})
    resp = await api.post("/v1/connections/open", json=body)
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def test_an_owner_that_stops_renewing_loses_its_slots(node: Node) -> None:
    async with TestClient(TestServer(make_app(node))) as api:
        # "dead" takes 2 of capped.test's 3 slots and never renews; "alive" renews; a
        # slot without an owner is held as before
        dead = [await _open(api, "capped.test", "haraka-h-1") for _ in range(2)]
        opened_at = time.monotonic()
        alive = await _open(api, "capped.test", "haraka-h-2")
        plain = await _open(api, "plain.test", None)
        assert all(o["allowed"] and o["lease_ttl"] == TTL for o in [*dead, alive])
        assert plain["allowed"] and "lease_ttl" not in plain
        assert not (await _open(api, "capped.test", "haraka-h-3"))["allowed"]  # cap full
        await node.flush()
        assert await node.count("outbound_domains", "capped.test") == 3
        assert await node.count("outbound_slots", "max:b1::capped.test") == 3

        async def renew_alive() -> dict[str, Any]:
            resp = await api.post("/v1/connections/renew", json={"owner": "haraka-h-2"})
            return dict(await resp.json())

        async def dead_freed() -> bool:
            assert (await renew_alive())["renewed"] == 1
            await node.flush()
            return await node.count("outbound_domains", "capped.test") == 1

        await until(dead_freed, TTL + 1.0, interval=TTL / 4, what="the dead owner's slots freed")
        took = time.monotonic() - opened_at
        assert await node.count("outbound_slots", "max:b1::capped.test") == 1
        # the renewing owner keeps its slot well past the TTL, the ownerless one too
        deadline = time.monotonic() + 2 * TTL
        while time.monotonic() < deadline:
            assert (await renew_alive()) == {"renewed": 1, "lease_ttl": TTL}
            await asyncio.sleep(TTL / 4)  # the renewal cadence, not a wait for a condition
        await node.flush()
        assert await node.count("outbound_domains", "capped.test") == 1
        assert await node.count("outbound_domains", "plain.test") == 1
        # the freed room is usable again; a late close of a freed slot changes nothing
        assert (await _open(api, "capped.test", "haraka-h-3"))["allowed"]
        resp = await api.post("/v1/connections/close", json={"slot": dead[0]["slot"]})
        assert await resp.json() == {"closed": False}
        metrics = await (await api.get("/metrics")).text()
        assert "mcluster_connections_owner_expired_total 2.0" in metrics
        # the owner that stopped renewing has nothing left; then alive stops too
        resp = await api.post("/v1/connections/renew", json={"owner": "haraka-h-1"})
        assert (await resp.json())["renewed"] == 0
        await until(lambda: _domain_count(node, "capped.test", 0), TTL + 1.0,
                    what="every owned slot freed")  # fmt: skip
        assert await node.count("outbound_domains", "plain.test") == 1
        assert await node.close_connection(plain["slot"]) is True
        print(f"leases: 2 slots of an owner that stopped renewing freed {took:.2f} s after "
              f"its open (lease TTL {TTL} s)")  # fmt: skip


async def _domain_count(node: Node, domain: str, n: int) -> bool:
    await node.flush()
    return await node.count("outbound_domains", domain) == n


async def test_counts_of_an_owner_that_stops_renewing_are_taken_back(node: Node) -> None:
    """POST /v1/events with an owner (a Haraka counting its open inbound connections): a
    dead owner's counts go back to what the others hold within lease TTL + 1 s; a renewing
    owner keeps its own, events without an owner are kept as before."""
    async with TestClient(TestServer(make_app(node))) as api:

        async def post(owner: str | None, key: str, delta: int) -> dict[str, Any]:
            body: dict[str, Any] = {"events": [{"object": "inbound_cidr", "key": key,
                                                "delta": delta}]}  # fmt: skip
            if owner is not None:
                body["owner"] = owner
            resp = await api.post("/v1/events", json=body)
            assert resp.status == 202, await resp.text()
            return dict(await resp.json())

        assert await post("haraka-h-1", "10.1.2.3", 1) == {"accepted": 1, "lease_ttl": TTL}
        await post("haraka-h-1", "10.1.2.4", 1)
        await post("haraka-h-1", "10.1.2.5", 1)
        await post("haraka-h-1", "10.1.2.5", -1)  # closed by the owner itself
        await post("haraka-h-2", "10.1.2.3", 1)
        assert await post(None, "10.1.2.9", 1) == {"accepted": 1}
        posted = time.monotonic()

        async def block_count() -> int:
            await node.flush()
            return await node.count("inbound_cidr", "10.1.2.0/24")

        assert await block_count() == 4

        async def dead_taken_back() -> bool:
            resp = await api.post("/v1/connections/renew", json={"owner": "haraka-h-2"})
            assert resp.status == 200
            return await block_count() == 2

        await until(dead_taken_back, TTL + 1.0, interval=TTL / 4,
                    what="the dead owner's counts taken back")  # fmt: skip
        took = time.monotonic() - posted
        assert await node.count("inbound_cidr", "10.1.2.3") == 1  # h2's
        assert await node.count("inbound_cidr", "10.1.2.9") == 1  # without owner
        metrics = await (await api.get("/metrics")).text()
        assert "mcluster_counts_owner_expired_total 2.0" in metrics
        resp = await api.post("/v1/events", json={"events": [], "owner": ""})
        assert resp.status == 400
        assert "owner must be a non-empty string" in (await resp.json())["error"]
        print(f"leases: 2 inbound counts of an owner that stopped renewing taken back "
              f"{took:.2f} s after its last event (lease TTL {TTL} s)")  # fmt: skip


async def test_bad_owners_are_refused(node: Node) -> None:
    async with TestClient(TestServer(make_app(node))) as api:
        for path, body, message in [
            ("/v1/connections/open", {"binding": "b1", "domain": "x.test", "owner": ""},
             "owner must be a non-empty string"),
            ("/v1/connections/open", {"binding": "b1", "domain": "x.test", "owner": 7},
             "owner must be a non-empty string"),
            ("/v1/connections/renew", {"owner": "a\nb"},
             "owner must be at most 255 printable characters"),
            ("/v1/connections/renew", {"slot": "x"}, 'body must be a JSON object {"owner"'),
        ]:  # fmt: skip
            resp = await api.post(path, json=body)
            assert resp.status == 400 and message in (await resp.json())["error"], body
    with pytest.raises(InvalidValue, match="owner must be"):
        node.renew_owner("x" * 256)
