"""OBTM/OBTC fall back by reference; connection caps are exact and freed by reaping."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster import ConfigError, Node, parse_config
from mcluster.agent import slots as slots_module
from mcluster.agent.slots import Op, Slots
from mcluster.faces.http.app import make_app
from mcluster.objects.outbound import OBTM_OPTION, OutboundPolicy, Route
from tests.helpers import crash, redis_pids, started_nodes, until, until_running
from tests.redis_cluster import AnyRedis
from tests.redis_servers import start_redis

CONF = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.6
  Replicate "outbound_binding_domains" {}
  Replicate "OBTM" {}
  Replicate "OBTC" {}
}
cluster_outbound_throttle_messages = "1000/1"
Binding_Group "bg" {
  cluster_outbound_throttle_messages = "10/60"
  Binding "b1" {}
  Binding "b2" {}
  Domain "special.example" { cluster_outbound_throttle_messages = "3/60" }
}
Binding "lone" {}
Domain "hotmail.com" {
  cluster_max_outbound_connections = 10
  cluster_outbound_throttle_messages = "5/60"
}
Domain "yahoo.com" { cluster_scope_max_outbound_connections = 3 }
cluster_outbound_throttle_connections = "100000/1"
"""


def test_throttles_fall_back_by_reference() -> None:
    policy = OutboundPolicy(parse_config(CONF))
    bucket = policy.throttle
    # one Binding_Group bucket for both bindings and any domain without its own
    assert bucket(OBTM_OPTION, Route("b1", "gmail.com")) == bucket(
        OBTM_OPTION, Route("b2", "aol.com")
    )
    found = bucket(OBTM_OPTION, Route("b1", "gmail.com"))
    assert found is not None and found[0] == "group:bg" and str(found[1]) == "10/60"
    found = bucket(OBTM_OPTION, Route("b2", "special.example"))
    assert found is not None and found[0] == "group:bg:domain:special.example"
    # a binding group's rate wins over a global Domain's, a Domain's over the global one
    found = bucket(OBTM_OPTION, Route("b1", "hotmail.com"))
    assert found is not None and found[0] == "group:bg"
    found = bucket(OBTM_OPTION, Route("lone", "hotmail.com"))
    assert found is not None and found[0] == "domain:hotmail.com"
    found = bucket(OBTM_OPTION, Route("lone", "aol.com"))
    assert found is not None and found[0] == "global" and str(found[1]) == "1000"


def test_caps_resolution() -> None:
    policy = OutboundPolicy(parse_config(CONF))
    caps = policy.caps(Route("b1", "hotmail.com"))
    assert [(c.key, c.limit) for c in caps] == [("max:b1::hotmail.com", 10)]
    caps = policy.caps(Route("b2", "yahoo.com"))
    assert [(c.key, c.limit) for c in caps] == [("scope:domain:yahoo.com", 3)]
    assert policy.caps(Route("b1", "gmail.com")) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('cluster_outbound_throttle_messages = "10/0"', "more than 0 seconds"),
        ('Domain "x" { cluster_max_outbound_connections = "lots" }', "whole number"),
        ("cluster_server_max_outbound_connections = -5", "whole number >= -1"),
        (
            'Domain "/(unclosed/" { cluster_max_outbound_connections = 1 }',
            r"o.conf:1:1: .*bad regex",
        ),
    ],
)
def test_bad_outbound_options(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        OutboundPolicy(parse_config(text, "o.conf"))


REGEX = """
Domain "/(^|[.])yahoo[.](com|co[.]uk)$/" {
  cluster_outbound_throttle_messages = "7/60"
  cluster_scope_max_outbound_connections = 4
}
Domain "mail.yahoo.com" { cluster_outbound_throttle_messages = "2/60" }
Binding_Group "bg" {
  Binding "b1" {}
  Domain "/[.]example$/" { cluster_outbound_throttle_messages = "9/60" }
}
"""


def test_regex_domains_are_one_shared_bucket() -> None:
    policy = OutboundPolicy(parse_config(REGEX))
    bucket = policy.throttle
    found = bucket(OBTM_OPTION, Route("lone", "yahoo.com"))
    assert found is not None and found[0] == "domain:/(^|[.])yahoo[.](com|co[.]uk)$/"
    assert str(found[1]) == "7/60"
    # every domain the regex matches shares that one bucket, case-insensitively
    assert bucket(OBTM_OPTION, Route("x", "YAHOO.co.uk")) == found
    assert bucket(OBTM_OPTION, Route("x", "notyahoo.com")) is None
    # a Domain of its own wins over a regex that also matches
    own = bucket(OBTM_OPTION, Route("x", "mail.yahoo.com"))
    assert own is not None and own[0] == "domain:mail.yahoo.com"
    # regex Domains inside a Binding_Group
    grp = bucket(OBTM_OPTION, Route("b1", "a.example"))
    assert grp is not None and grp[0] == "group:bg:domain:/[.]example$/"
    assert bucket(OBTM_OPTION, Route("b1", "b.example")) == grp
    # a scope cap of a regex Domain counts all its domains together
    caps = [c.key for c in policy.caps(Route("b9", "yahoo.com"))]
    assert caps == [c.key for c in policy.caps(Route("b8", "yahoo.co.uk"))]
    assert caps == ["scope:domain:/(^|[.])yahoo[.](com|co[.]uk)$/"]


@pytest.fixture
async def nodes(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[list[Node]]:
    async with started_nodes(CONF, shared_redis.url, namespace, 3) as made:
        yield made


async def test_obtm_binding_group_is_one_bucket(nodes: list[Node]) -> None:
    routes = [Route(b, d) for b in ("b1", "b2") for d in ("gmail.com", "aol.com")]
    results = [await nodes[i % 3].outbound_message(routes[i % 4]) for i in range(14)]
    assert sum(d.allowed for d in results) == 10
    assert not results[-1].allowed and results[-1].retry_after_ms > 0


async def test_caps_never_exceeded_and_freed_by_reaping(
    nodes: list[Node], shared_redis: AnyRedis
) -> None:
    route = Route("b1", "hotmail.com")
    results = await asyncio.gather(*(nodes[i % 3].open_connection(route) for i in range(100)))
    held = [(i % 3, r.slot) for i, r in enumerate(results) if r.allowed]
    assert len(held) == 10, f"re-syncs {[n.rejoins for n in nodes]}"
    refused = next(r for r in results if not r.allowed)
    assert refused.reason is not None and "cluster_max_outbound_connections" in refused.reason
    # close one twice (whichever node won it: the opens race): the second changes nothing
    holder, closed = held[0]
    assert await nodes[holder].close_connection(str(closed)) is True
    assert await nodes[holder].close_connection(str(closed)) is False
    assert (await nodes[1].open_connection(route)).allowed
    # (a node starved past its 0.6 s lease is reaped and re-syncs: its slots leave then)
    rejoins = [n.rejoins for n in nodes]
    assert not (await nodes[1].open_connection(route)).allowed, f"re-syncs {rejoins}"
    # node 2 dies holding its slots: they come back within lease TTL + 1 s
    dead = sum(1 for n, slot in held if n == 2 and slot != closed)
    await crash(nodes[2])

    async def freed() -> bool:
        return await nodes[0].count("outbound_slots", "max:b1::hotmail.com") == 10 - dead

    pids = redis_pids(shared_redis)  # within lease TTL + 1 s, CPU waits not counted
    await until_running(freed, 0.6 + 1.0, "the dead node's slots are freed", pids)
    for _ in range(dead):
        assert (await nodes[0].open_connection(route)).allowed
    assert not (await nodes[0].open_connection(route)).allowed


async def test_a_turn_of_opens_goes_in_two_calls_and_holds_the_cap(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What one turn of the loop gathers goes in two slot_batch calls (slots.SPLIT_AT):
    the cap holds exactly across them, and the counts match the slots held."""
    node, route = nodes[0], Route("lone", "hotmail.com")
    sizes: list[int] = []
    call = Slots._call

    async def counted(self: Slots, ops: list[Op]) -> list[str]:
        sizes.append(len(ops))
        return await call(self, ops)

    monkeypatch.setattr(Slots, "_call", counted)
    results = await asyncio.gather(*(node.open_connection(route) for _ in range(60)))
    held = [str(r.slot) for r in results if r.allowed]
    assert len(held) == 10
    # a few went alone (no call in flight then); the rest, more than 2 * SPLIT_AT, in
    # halves: no call held more than half of them
    assert sum(sizes) == 60 and max(sizes) <= 30 and len(sizes) >= 3, sizes
    # closes and opens in one turn: whatever order the halves reach Redis in, the cap
    # holds and the count is the slots held
    mixed = await asyncio.gather(
        *(node.close_connection(slot) for slot in held),
        *(node.open_connection(route) for _ in range(30)),
    )
    assert all(mixed[:10])
    now = [r for r in mixed[10:] if not isinstance(r, bool) and r.allowed]
    assert 0 < len(now) <= 10
    assert await node.count("outbound_slots", "max:lone::hotmail.com") == len(now)


async def test_slots_survive_a_resync(nodes: list[Node], shared_redis: AnyRedis) -> None:
    route = Route("b2", "yahoo.com")
    slots = [await nodes[0].open_connection(route) for _ in range(3)]
    assert all(s.allowed for s in slots)
    shared_redis.client().flushall()

    async def resynced() -> bool:
        return nodes[0].rejoins >= 1 and (
            await nodes[0].count("outbound_slots", "scope:domain:yahoo.com") == 3
        )

    await until(resynced, 2.0, "the node re-opens its slots after the re-sync")
    assert not (await nodes[1].open_connection(route)).allowed
    assert await nodes[0].close_connection(str(slots[0].slot)) is True
    assert (await nodes[1].open_connection(route)).allowed


async def test_http_outbound(nodes: list[Node]) -> None:
    async with TestClient(TestServer(make_app(nodes[0]))) as api:
        resp = await api.post("/v1/outbound/message", json={"binding": "lone", "domain": "x.org"})
        body = await resp.json()
        assert resp.status == 200 and body["allowed"] and body["limits"][0]["name"] == "global"
        resp = await api.post(
            "/v1/connections/open", json={"binding": "b1", "domain": "hotmail.com"}
        )
        opened = await resp.json()
        assert opened["allowed"] and opened["slot"] and opened["reason"] is None
        resp = await api.post("/v1/connections/close", json={"slot": opened["slot"]})
        assert await resp.json() == {"closed": True}
        resp = await api.post("/v1/connections/close", json={"slot": opened["slot"]})
        assert await resp.json() == {"closed": False}
        for path, bad in [
            ("/v1/connections/open", {"binding": "b1"}),
            ("/v1/connections/open", {"binding": "b1", "domain": "", "x": 1}),
            ("/v1/outbound/message", {"binding": 3, "domain": "a"}),
            ("/v1/connections/close", {"slot": 7}),
        ]:
            assert (await api.post(path, json=bad)).status == 400, (path, bad)


async def test_console_lists_obtm_buckets(nodes: list[Node]) -> None:
    from mcluster.console import ConsoleContext, run_command

    for _ in range(3):
        await nodes[0].outbound_message(Route("b1", "gmail.com"))
    await nodes[1].outbound_message(Route("lone", "hotmail.com"))
    ctx = ConsoleContext(nodes[0].client, nodes[0].keys)
    result = await run_command(ctx, "cluster shared show OBTM")
    assert result.data["type"] == "throttle table"
    assert result.data["rows"] == [
        {"key": "domain:hotmail.com", "count": 1, "limit": "5/60"},
        {"key": "group:bg", "count": 3, "limit": "10/60"},
    ]


def test_config_check_reports_throttle_and_cap_errors(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.conf"
    bad.write_text(
        'cluster {\n  Replicate "shared_named_throttles" {}\n'
        '  Shared_Throttle "x" { rate = "10/0" }\n}\n'
        'Domain "hotmail.com" {\n  cluster_max_outbound_connections = "lots"\n}\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "config", "check", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:3:3: Shared_Throttle 'x': rate: bad rate '10/0'")
    assert lines[1].startswith(f"{bad}:6:3: cluster_max_outbound_connections: expected a whole")


CAP_CONF = """
cluster { Replicate "outbound_binding_domains" {} }
Domain "capped.example" { cluster_max_outbound_connections = 2 }
"""


async def test_a_redis_that_stops_answering_fails_an_open_by_the_deadline(
    monkeypatch: pytest.MonkeyPatch, namespace: str
) -> None:
    """``slot_batch`` runs on a client without socket timeout, under a deadline of its
    own: a Redis that stops answering (SIGSTOP) fails an open with TimeoutError (a retry
    error: HTTP 503) by the deadline, never hangs it. Once Redis answers again the next
    open works, and the slot the failed call may have taken is given back: the cap of 2
    then holds the first slot and the new one, no third."""
    monkeypatch.setattr(slots_module, "SOCKET_TIMEOUT", 0.5)
    server = start_redis()
    try:
        async with Node(parse_config(CAP_CONF), "relay-1", server.url, namespace=namespace) as node:
            route = Route("b1", "capped.example")
            first = await node.open_connection(route)
            assert first.allowed
            server.proc.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            try:
                with pytest.raises(TimeoutError):
                    await node.open_connection(route)
                took = time.monotonic() - started
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert 0.45 <= took < 2.0, took
            opened: list[str] = []

            async def opens() -> bool:
                decision = await node.open_connection(route)
                if decision.allowed:
                    opened.append(str(decision.slot))
                return decision.allowed

            await until(opens, 10, "an open once Redis answers again")
            third = await node.open_connection(route)
            assert not third.allowed and "cluster_max_outbound_connections" in str(third.reason)
            assert await node.close_connection(str(first.slot)) is True
            assert await node.close_connection(opened[0]) is True
    finally:
        server.stop()
