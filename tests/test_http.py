"""The agent's HTTP API: good events, bad events refused whole, and the CLI contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster.agent.node import Node
from mcluster.faces.http.app import make_app
from tests.helpers import CONFIG_TEXT, config
from tests.redis_servers import RedisServer, free_port


@pytest.fixture
async def api(redis_server: RedisServer, namespace: str) -> AsyncIterator[TestClient]:
    node = Node(config(), "relay-0-1", redis_server.url, namespace=namespace)
    async with TestClient(TestServer(make_app(node))) as client:
        resp = await client.get("/healthz")
        assert resp.status == 503  # not joined yet
        await node.start()
        yield client
        await node.stop()


async def post_events(api: TestClient, events: object) -> tuple[int, dict[str, object]]:
    resp = await api.post("/v1/events", json={"events": events})
    return resp.status, await resp.json()


async def test_events_flush_and_read(api: TestClient) -> None:
    assert (await api.get("/healthz")).status == 200
    status, body = await post_events(
        api,
        [
            {"object": "inbound_cidr", "key": "10.0.0.180", "delta": 1},
            {"object": "inbound_cidr", "key": "10.0.0.181", "delta": 2},
            {"object": "outbound_domains", "key": "aol.com", "delta": 3},
        ],
    )
    assert (status, body) == (202, {"accepted": 3})
    assert (await api.post("/v1/flush")).status == 200
    resp = await api.get("/v1/objects/inbound_cidr/count", params={"key": "10.0.0.0/24"})
    assert await resp.json() == {"count": 3}
    resp = await api.get(
        "/v1/objects/inbound_cidr/count", params={"key": "10.0.0.181", "view": "relay-0-1"}
    )
    assert await resp.json() == {"count": 2}
    listing = await (await api.get("/v1/objects/inbound_cidr", params={"view": "global"})).json()
    assert listing["object"] == "inbound_cidr" and listing["type"] == "cidrtree"
    assert listing["view"] == "global" and listing["node"] is None
    assert listing["rows"][:2] == [
        {"key": "10.0.0.0/8", "count": 3},
        {"key": "10.0.0.0/24", "count": 3},
    ]
    node_listing = await (await api.get("/v1/objects/outbound_domains?view=relay-0-1")).json()
    assert node_listing["node"] == "relay-0-1" and node_listing["view"].endswith("#relay-0-1")
    assert node_listing["rows"] == [{"key": "aol.com", "count": 3}]
    objects = await (await api.get("/v1/objects")).json()
    assert {o["name"] for o in objects["objects"]} >= {"inbound_cidr", "outbound_domains"}


BAD_EVENTS = [
    ([{"object": "inbound_cidr", "key": "10.0.0.999", "delta": 1}], "not a valid IPv4"),
    ([{"object": "inbound_cidr", "key": "10.0.0.0/24", "delta": 1}], "CIDR block"),
    ([{"object": "inbound_cidr", "key": "2001:db8:::1", "delta": 1}], "not a valid"),
    ([{"object": "nope", "key": "x", "delta": 1}], "unknown object 'nope'"),
    ([{"object": "outbound_domains", "key": "d" * 1025, "delta": 1}], "limit is 1024"),
    ([{"object": "outbound_domains", "key": "a.com", "delta": 1.5}], "must be an integer"),
    ([{"object": "outbound_domains", "key": "a.com", "delta": "1"}], "must be an integer"),
    ([{"object": "outbound_domains", "key": "a.com", "delta": True}], "must be an integer"),
    ([{"object": "outbound_domains", "key": 7, "delta": 1}], "key must be a string"),
    ([{"object": "outbound_domains", "key": "a.com", "delta": 1, "x": 1}], "unknown field"),
    (["not an object"], "must be an object"),
]


@pytest.mark.parametrize(("events", "message"), BAD_EVENTS)
async def test_bad_event_refuses_the_whole_request(
    api: TestClient, events: list[object], message: str
) -> None:
    good = {"object": "outbound_domains", "key": "kept.com", "delta": 1}
    assert (await post_events(api, [good]))[0] == 202
    await api.post("/v1/flush")
    status, body = await post_events(api, [good, good, *events])
    assert status == 400
    assert str(body["error"]).startswith("events[2]: ") and message in str(body["error"])
    await api.post("/v1/flush")
    # nothing of the refused request was recorded; earlier good data untouched
    resp = await api.get("/v1/objects/outbound_domains/count", params={"key": "kept.com"})
    assert await resp.json() == {"count": 1}
    assert (await api.get("/healthz")).status == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe garbage", 400, "not valid JSON"),
        (b'{"evnts": []}', 400, "body must be a JSON object"),
        (b"[1, 2]", 400, "body must be a JSON object"),
        (b"x" * (10 * 1024 * 1024), 413, "larger than the limit"),
    ],
)
async def test_garbage_bodies(api: TestClient, body: bytes, status: int, message: str) -> None:
    resp = await api.post("/v1/events", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert message in (await resp.json())["error"]
    assert (await api.get("/healthz")).status == 200


async def test_bad_reads(api: TestClient) -> None:
    resp = await api.get("/v1/objects/nope")
    assert resp.status == 404 and "unknown object 'nope'" in (await resp.json())["error"]
    resp = await api.get("/v1/objects/inbound_cidr", params={"view": "ghost"})
    assert resp.status == 404 and "unknown node 'ghost'" in (await resp.json())["error"]
    resp = await api.get("/v1/objects/inbound_cidr/count", params={"key": "10.0.0.0/99"})
    assert resp.status == 400 and "not a valid IP" in (await resp.json())["error"]
    resp = await api.get("/v1/objects/inbound_cidr/count")
    assert resp.status == 400
    resp = await api.get("/v1/objects/inbound_cidr", params={"limit": "many"})
    assert resp.status == 400


def wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline: float = 20) -> None:
    import urllib.error
    import urllib.request

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert proc.poll() is None, "agent exited early"
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise AssertionError("agent did not become healthy")


async def test_agent_command_contract(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """`mcluster agent ... --listen` serves the API; its JSON equals the console's; SIGTERM
    flushes and leaves, taking the node's contribution out of the global view."""
    conf = tmp_path / "mcluster.conf"
    conf.write_text(CONFIG_TEXT.replace("cluster {", f'cluster {{\n  namespace = "{namespace}"'))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MCLUSTER_REDIS_URL": redis_server.url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcluster", "agent", "--config", str(conf), "--node",
         "relay-0-1", "--listen", f"127.0.0.1:{port}"],
        env=env, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_healthy(base, proc)
        async with aiohttp.ClientSession() as http:
            events = [
                {"object": "inbound_cidr", "key": f"10.0.0.{i}", "delta": 1} for i in range(9)
            ]
            resp = await http.post(base + "/v1/events", json={"events": events})
            assert resp.status == 202
            assert (await http.post(base + "/v1/flush")).status == 200
            for view, suffix in (("global", ""), ("relay-0-1", " from relay-0-1")):
                api = await (await http.get(f"{base}/v1/objects/inbound_cidr?view={view}")).json()
                console = subprocess.run(
                    [sys.executable, "-m", "mcluster", "console", "--redis", redis_server.url,
                     "--namespace", namespace, "--json", "-c",
                     f"cluster shared show inbound_cidr{suffix}"],
                    capture_output=True, check=True,
                )  # fmt: skip
                assert json.loads(console.stdout) == api
            count = await http.get(f"{base}/v1/objects/inbound_cidr/count?key=10.0.0.0/28")
            assert await count.json() == {"count": 9}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    listing = subprocess.run(
        [sys.executable, "-m", "mcluster", "console", "--redis", redis_server.url,
         "--namespace", namespace, "--json", "-c", "cluster shared show inbound_cidr"],
        capture_output=True, check=True,
    )  # fmt: skip
    assert json.loads(listing.stdout)["rows"] == []
