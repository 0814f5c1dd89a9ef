"""A connection report fills every outbound view (binding groups included) while the
connection is open; closing it, or the death of its node, takes it out of all of them."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from rich.console import Console

from mcluster import Node, parse_config
from mcluster.agent.slots import SlotDecision
from mcluster.config import load_config
from mcluster.console import ConsoleContext, run_command
from mcluster.faces.http.app import make_app
from mcluster.objects.outbound import Route
from mcluster.outbound.views import ConnectionViews
from tests.agents import Farm, until
from tests.helpers import started_nodes
from tests.redis_cluster import AnyRedis

VIEWS = """
  Replicate "outbound_cidr" { max_delay = 0.05 }
  Replicate "outbound_domains" { max_delay = 0.05 }
  Replicate "outbound_binding_domains" { max_delay = 0.05 }
  Replicate "outbound_cidr_G" { class = "outbound_cidr"  binding_group = "G"  max_delay = 0.05 }
"""
CONF = f"""
cluster {{
  heartbeat_interval = 0.2
  lease_ttl = 0.6
{VIEWS}
  Replicate "outbound_domains_H" {{ class = "outbound_domains"  binding_group = "H" }}
  Replicate "totals" {{ type = "outbound_domains" }}
}}
Binding_Group "G" {{ Binding "b1" {{}} }}
"""

#: Every view the open on b1 (group G) to 192.0.2.10 for example.com counts in.
IN_G = {
    "outbound_cidr": "192.0.2.10/32",
    "outbound_cidr_G": "192.0.2.10/32",
    "outbound_domains": "example.com",
    "outbound_binding_domains": "b1::example.com",
}


def test_targets_follow_class_and_binding_group() -> None:
    views = ConnectionViews(parse_config(CONF))
    assert views.targets("b1", "Example.COM", "g", "192.0.2.10") == (
        ("outbound_cidr", "192.0.2.10"),
        ("outbound_domains", "example.com"),
        ("outbound_binding_domains", "b1::example.com"),
        ("outbound_cidr_G", "192.0.2.10"),
    )
    # no ip: not in the CIDR trees; no group: not in any group's object
    assert views.targets("b9", "x.org", None) == (
        ("outbound_domains", "x.org"),
        ("outbound_binding_domains", "b9::x.org"),
    )
    assert ("outbound_domains_H", "x.org") in views.targets("b9", "x.org", "H")
    # an object that only takes the type for its storage keeps the caller's keys
    assert all(obj != "totals" for obj, _ in views.targets("b9", "x.org", "H"))
    v6 = views.targets("b1", "x.org", None, "2001:DB8::0:1")
    assert v6[0] == ("outbound_cidr", "2001:db8::1")


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"ip": "192.0.2.300"}, "ip: '192.0.2.300' is not an IPv4 or IPv6 address"),
     ({"mx_hosts": ["mx"] * 33}, "mx_hosts: at most 32 hosts")],
)  # fmt: skip
def test_bad_reports_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Route("b1", "example.com", **fields)


@pytest.fixture
async def nodes(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[list[Node]]:
    async with started_nodes(CONF, shared_redis.url, namespace, 2) as made:
        yield made


def _text(renderable: Any) -> list[str]:
    buffer = io.StringIO()
    Console(file=buffer, width=120).print(renderable)
    return buffer.getvalue().splitlines()


async def _shown(node: Node, obj: str) -> dict[str, int]:
    """``cluster shared show OBJ all`` as key -> count, checked against its printed rows."""
    ctx = ConsoleContext(node.client, node.keys)
    result = await run_command(ctx, f"cluster shared show {obj} all")
    rows = {row["key"]: row["count"] for row in result.data["rows"]}
    printed = _text(result.renderable)
    for key, count in rows.items():  # "  COUNT   PREFIX" (CIDR tree) or "  KEY:   COUNT"
        forms = ([str(count), key], [f"{key}:", str(count)])
        assert any(line.split() in forms for line in printed), (key, printed)
    return rows


async def test_a_report_counts_in_every_view_of_its_group(nodes: list[Node]) -> None:
    first, second = nodes
    opened = await first.open_connection(Route("b1", "example.com", host="mx1", ip="192.0.2.10"))
    assert isinstance(opened, SlotDecision) and opened.allowed and opened.slot
    outside = await second.open_connection(Route("b9", "example.com", ip="198.51.100.7"))
    assert outside.allowed and outside.slot
    await first.flush()
    await second.flush()
    # the interface of issue 16: the console shows the /32 with count 1 in both trees
    cidr, cidr_g = await _shown(first, "outbound_cidr"), await _shown(first, "outbound_cidr_G")
    assert cidr["192.0.2.10/32"] == 1 and cidr_g["192.0.2.10/32"] == 1
    assert cidr["198.51.100.7/32"] == 1 and "198.51.100.7/32" not in cidr_g
    assert await _shown(first, "outbound_domains") == {"example.com": 2}
    assert await _shown(first, "outbound_binding_domains") == {
        "b1::example.com": 1,
        "b9::example.com": 1,
    }
    assert await _shown(first, "outbound_domains_H") == {}
    # each node's view holds its own connection
    assert await first.count("outbound_cidr", "192.0.2.10", view="relay-0-1") == 1
    assert await first.count("outbound_cidr", "198.51.100.7", view="relay-0-1") == 0
    # closing takes it out of every view, once: a second close changes nothing
    assert await first.close_connection(str(opened.slot)) is True
    assert await first.close_connection(str(opened.slot)) is False
    await first.flush()
    for obj, key in IN_G.items():  # b9's connection is still in outbound_domains
        assert await first.count(obj, key) == (obj == "outbound_domains"), obj
    listing = await first.show("outbound_cidr_G")
    assert listing.rows == [] and listing.anomalies == 0


async def test_the_reports_binding_group_counts_too(nodes: list[Node]) -> None:
    opened = await nodes[0].open_connection(
        Route("b9", "x.org", binding_group="H", ip="192.0.2.99")
    )
    assert opened.allowed
    await nodes[0].flush()
    assert await nodes[0].count("outbound_domains_H", "x.org") == 1
    assert await nodes[0].count("outbound_cidr_G", "192.0.2.99") == 0


async def test_http_report_fields(nodes: list[Node]) -> None:
    async with TestClient(TestServer(make_app(nodes[0]))) as api:
        mx_hosts = ["mx1.example.com", "mx2.example.com"]
        report = {"binding": "b1", "domain": "example.com", "host": "mx1.example.com",
                  "ip": "192.0.2.10", "mx_hosts": mx_hosts}  # fmt: skip
        resp = await api.post("/v1/connections/open", json=report)
        opened = await resp.json()
        assert resp.status == 200 and opened["allowed"] and opened["reason"] is None
        await nodes[0].flush()
        assert await nodes[0].count("outbound_cidr_G", "192.0.2.10") == 1
        resp = await api.post("/v1/connections/close", json={"slot": opened["slot"]})
        assert await resp.json() == {"closed": True}
        metrics = await (await api.get("/metrics")).text()
        assert "mcluster_connections_opened_total 1.0" in metrics
        assert "mcluster_connections_closed_total 1.0" in metrics
        for bad, message in [
            ({"ip": "nope"}, "ip: 'nope' is not an IPv4 or IPv6 address"),
            ({"ip": 7}, "ip must be a string"),
            ({"mx_hosts": "mx1"}, "mx_hosts must be a list of non-empty strings"),
            ({"mx_hosts": ["mx\n"]}, "mx_hosts must be at most 255 printable characters"),
        ]:
            resp = await api.post("/v1/connections/open", json=report | bad)
            assert resp.status == 400 and message in (await resp.json())["error"], bad


async def test_kill_9_takes_the_connections_out_of_every_view(tmp_path: Path) -> None:
    """Agent processes: n1 holds a connection in all four views and is killed with -9;
    reaping takes it out of every one within lease TTL + 1 s. n2's stays."""
    farm = Farm(tmp_path, extra_cluster=VIEWS.replace('  Replicate "outbound_domains" '
                                                      "{ max_delay = 0.05 }\n", ""),
                extra='Binding_Group "G" { Binding "b1" {} }')  # fmt: skip
    try:
        await farm.start("n1", "n2")
        report = {"binding": "b1", "domain": "example.com", "ip": "192.0.2.10"}
        for name in ("n1", "n2"):
            async with farm.session.post(
                f"{farm.agents[name].base}/v1/connections/open", json=report
            ) as resp:
                assert (await resp.json())["allowed"]

        async def counted(n: int) -> bool:
            for obj, key in IN_G.items():
                if await farm.count(obj, key, via="n2") != n:
                    return False
            return True

        await until(lambda: counted(2), 5.0, what="both connections in every view")
        killed = time.monotonic()
        farm.kill("n1")
        await until(lambda: counted(1), farm.lease_ttl + 1.0, what="n1's out of every view")
        print(f"kill -9 -> out of the views in {time.monotonic() - killed:.2f} s")
        for obj in IN_G:
            listing = await farm.listing(obj, via="n2")
            assert listing["anomalies"] == 0, listing
    finally:
        await farm.close()


async def test_a_view_removed_by_a_reload_is_skipped_at_the_close(
    tmp_path: Path, shared_redis: AnyRedis, namespace: str
) -> None:
    """A connection opened before a reload removed one of its views closes all the same:
    the views left count it out (``Node.record_each`` skips the removed object, whose
    view the reload drained), and the slot is given back."""
    path = tmp_path / "m.conf"
    path.write_text(CONF)
    async with Node(load_config(str(path)), "relay-1", shared_redis.url, namespace=namespace) as n:
        opened = await n.open_connection(Route("b1", "example.com", ip="192.0.2.10"))
        assert opened.allowed and opened.slot
        await n.flush()
        assert {obj: await n.count(obj, key) for obj, key in IN_G.items()} == dict.fromkeys(IN_G, 1)
        path.write_text(
            CONF.replace('  Replicate "outbound_cidr_G"', '  # Replicate "outbound_cidr_G"')
        )
        assert (await n.reload())["removed"] == ["outbound_cidr_G"]
        assert await n.close_connection(str(opened.slot)) is True
        await n.flush()
        for obj, key in IN_G.items():
            if obj != "outbound_cidr_G":
                assert await n.count(obj, key) == 0, obj
        stats = n.connection_stats()
        assert stats is not None and (stats.opened, stats.closed) == (1, 1)
