"""The audit metrics' faces: POST /v1/metrics/events, the console's ``inbound_audit show
ip`` (text and ``--json``, through the real CLI), and bad input refused whole."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.faces.http.app import make_app
from tests.redis_servers import RedisServer
from tests.test_audit import recent, server_ms

CONF = """
cluster {
  Replicate "metrics" { parameters = "connect;reception;rejection;delivery;audit_series" }
}
inbound_audit { monitors = ("300,6" "1800,4") }
"""


@pytest.fixture
async def api(redis_server: RedisServer, namespace: str) -> AsyncIterator[TestClient]:
    node = Node(parse_config(CONF), "relay-0-1", redis_server.url, namespace=namespace)
    async with TestClient(TestServer(make_app(node))) as client:
        await node.start()
        yield client
        await node.stop()


async def inbound(api: TestClient, cidr: str) -> dict[str, Any]:
    data: dict[str, Any] = await (
        await api.get("/v1/metrics/inbound", params={"cidr": cidr})
    ).json()
    return data


def event(kind: str, ip: str | None = None, **extra: object) -> dict[str, object]:
    return {"type": kind, "ip": ip, "domain": None, "binding": None, "count": 1} | extra


async def test_events_are_counted_and_shown(api: TestClient) -> None:
    events = [event("connect", f"10.1.2.{i}") for i in range(30)]
    events += [event("reception", "10.1.2.3", count=4), event("rejection", "10.200.0.1")]
    events.append(event("delivery", None, domain="aol.com", binding="b1", count=2))
    resp = await api.post("/v1/metrics/events", json={"events": events})
    assert (resp.status, await resp.json()) == (202, {"accepted": 33})
    assert (await api.post("/v1/flush")).status == 200
    shown = await inbound(api, "10.0.0.0/8")
    assert shown["cidr"] == "10.0.0.0/8"
    assert [(m["window"], m["windows"]) for m in shown["monitors"]] == [(300, 6), (1800, 4)]
    for monitor in shown["monitors"]:
        assert recent(monitor["connections"]) == 30 and recent(monitor["receptions"]) == 4
        assert recent(monitor["rejections"]) == 1
        assert len(monitor["connections"]) == monitor["windows"]
    one = await inbound(api, "10.1.2.3")
    assert recent(one["monitors"][0]["connections"]) == 1
    weighted = await api.get(
        "/v1/metrics/ip", params={"type": "connect", "ip": "10.1.2.9", "mask": "24"}
    )
    value = (await weighted.json())["value"]
    still_current = (await inbound(api, "10.1.2.0/24"))["monitors"][0]["connections"][0] == 30
    assert value == 30 if still_current else 0 < value <= 30  # 30 x (W - elapsed) / W
    aol = await (await api.get("/v1/metrics/outbound", params={"domain": "aol.com"})).json()
    assert recent(aol["monitors"][0]["delivery"]) == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (event("connect", "10.0.0.256"), "events[1]: '10.0.0.256' is not a valid IPv4"),
        (event("connect", "10.0.0.0/8"), "events[1]: '10.0.0.0/8' is a CIDR block"),
        (event("connect"), "events[1]: a connect event needs ip"),
        (event("permfail", domain="aol.com"), "events[1]: permfail events are not counted"),
        (event("connected", "10.0.0.1"), "events[1]: type must be one of connect"),
        (event("connect", "10.0.0.1", count=-1), "events[1]: count must be an integer"),
        (event("connect", "10.0.0.1", count=1.5), "events[1]: count must be an integer"),
        (event("connect", "10.0.0.1", when=3), "events[1]: unknown field(s): when"),
        (event("delivery", domain=7), "events[1]: domain must be a string or null"),
        ("connect", "events[1]: must be an object"),
    ],
)
async def test_bad_events_are_refused_whole(api: TestClient, bad: object, message: str) -> None:
    resp = await api.post(
        "/v1/metrics/events", json={"events": [event("connect", "10.0.0.1"), bad]}
    )
    assert resp.status == 400
    assert (await resp.json())["error"].startswith(message)
    await api.post("/v1/flush")
    shown = await (await api.get("/v1/metrics/inbound", params={"cidr": "10.0.0.1"})).json()
    assert shown["monitors"][0]["connections"] == [0] * 6  # the good event was not counted
    assert (await api.post("/v1/metrics/events", data=b"{")).status == 400
    missing = await api.get("/v1/metrics/inbound")
    assert missing.status == 400 and "cidr" in (await missing.json())["error"]


async def test_without_metrics_the_endpoints_say_what_to_enable(
    redis_server: RedisServer, namespace: str
) -> None:
    config = parse_config('cluster { Replicate "inbound_cidr" {} }')
    node = Node(config, "relay-0-1", redis_server.url, namespace=namespace)
    async with TestClient(TestServer(make_app(node))) as client:
        resp = await client.post("/v1/metrics/events", json={"events": []})
        assert resp.status == 404
        assert 'Replicate "metrics"' in (await resp.json())["error"]


def console(url: str, config: Path, namespace: str, command: str, *flags: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "console", "--redis", url, "--config", str(config),
         "--namespace", namespace, *flags, "-c", command],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_console_inbound_audit_show_ip(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    path = tmp_path / "mcluster.conf"
    path.write_text(CONF)
    client = Redis.from_url(redis_server.url)
    before = await server_ms(client)
    async with Node(parse_config(CONF), "relay-0-1", redis_server.url, namespace=namespace) as a:
        for i in range(30):
            a.audit.record("connect", f"10.0.{i}.1")
        a.audit.record("rejection", "10.0.0.1", count=3)
        a.audit.record("connect", "11.0.0.1")
        await a.flush()
    command = "inbound_audit show ip 10.0.0.0/8"
    data = json.loads(console(redis_server.url, path, namespace, command, "--json"))
    lines = console(redis_server.url, path, namespace, command).splitlines()
    after = await server_ms(client)
    await client.aclose()
    # one batch: all in window 0, or all in window 1 if a window boundary passed meanwhile
    shift = {w: int(before // (w * 1000) != after // (w * 1000)) for w in (300, 1800)}
    if not any(shift.values()):
        assert data == {
            "cidr": "10.0.0.0/8",
            "monitors": [
                {"window": 300, "windows": 6, "connections": [30, 0, 0, 0, 0, 0],
                 "receptions": [0] * 6, "rejections": [3, 0, 0, 0, 0, 0]},
                {"window": 1800, "windows": 4, "connections": [30, 0, 0, 0],
                 "receptions": [0] * 4, "rejections": [3, 0, 0, 0]},
            ],
        }  # fmt: skip
        assert lines[0] == "Connections 300/0: 30" and "Rejections 300/0: 3" in lines
    assert data["cidr"] == "10.0.0.0/8" and list(data["monitors"][0]) == [
        "window", "windows", "connections", "receptions", "rejections"
    ]  # fmt: skip
    for monitor in data["monitors"]:
        window, windows = monitor["window"], monitor["windows"]
        assert recent(monitor["connections"]) == 30 and recent(monitor["rejections"]) == 3
        assert monitor["receptions"] == [0] * windows
        assert shift[window] or monitor["connections"][0] == 30
    assert "Connections 1800/3: 0" in lines and len(lines) == 3 * (6 + 4)
