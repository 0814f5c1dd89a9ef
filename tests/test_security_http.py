"""The HTTP API's guard (issue 18): the bearer token, the refusal to start off loopback
without one, TLS, token rotation by SIGHUP, and the bounds on bodies, batches, slow
clients and connections; every refusal counted in /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.faces.http.app import make_app
from mcluster.objects import cache
from mcluster.objects.cache import CacheKeys
from mcluster.security.agent_flags import check_listen, tls_context
from mcluster.security.errors import GuardError
from mcluster.security.http_guard import MIB, HttpGuard, HttpLimits
from mcluster.security.listen import is_loopback
from mcluster.security.token import ApiToken, TokenError
from tests.helpers import CONFIG_TEXT, until
from tests.redis_servers import RedisServer, free_port
from tests.redis_tls import make_certs

TOKEN = "s3cr3t-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = """
Datasource "c1" {}
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.8
  Replicate "inbound_cidr" {}
  Replicate "c1" { type = "cache" }
}
"""


def token_file(folder: Path, text: str = f"  {TOKEN}\n") -> Path:
    path = folder / "api_token"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
async def node(redis_server: RedisServer, namespace: str) -> AsyncIterator[Node]:
    n = Node(parse_config(CONFIG, "guard.conf"), "relay-0-1", redis_server.url, namespace=namespace)
    await n.start()
    yield n
    await n.stop()


def guarded(node: Node, tmp_path: Path, **kwargs: object) -> TestClient:
    guard = HttpGuard(ApiToken(token_file(tmp_path)), **kwargs)  # type: ignore[arg-type]
    return TestClient(TestServer(make_app(node, guard=guard)))


def refusals(metrics: str, face: str, reason: str) -> float:
    found = re.search(
        rf'^mcluster_refusals_total{{face="{face}",reason="{reason}"}} (\S+)$', metrics, re.M
    )
    assert found, metrics
    return float(found.group(1))


async def test_every_route_but_healthz_needs_the_token(node: Node, tmp_path: Path) -> None:
    events = {"events": [{"object": "inbound_cidr", "key": "10.0.0.1", "delta": 1}]}
    async with guarded(node, tmp_path) as api:
        assert (await api.get("/healthz")).status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):  # fmt: skip
            resp = await api.post("/v1/events", json=events, headers=headers)
            assert resp.status == 401
            assert "--api-token-file" in (await resp.json())["error"]
        for path in ("/v1/stats", "/v1/objects", "/v1/membership", "/metrics", "/nope"):
            assert (await api.get(path)).status == 401, path
        assert (await api.post("/v1/flush")).status == 401
        resp = await api.post("/v1/events", json=events, headers=AUTH)
        assert (resp.status, await resp.json()) == (202, {"accepted": 1})
        assert (await api.post("/v1/flush", headers=AUTH)).status == 200
        count = await api.get("/v1/objects/inbound_cidr/count?key=10.0.0.1", headers=AUTH)
        assert await count.json() == {"count": 1}
        metrics = await (await api.get("/metrics", headers=AUTH)).text()
        assert refusals(metrics, "http", "unauthorized") == 10
        assert refusals(metrics, "policy", "not_allowed") == 0


async def test_metrics_public(node: Node, tmp_path: Path) -> None:
    async with guarded(node, tmp_path, metrics_public=True) as api:
        assert (await api.get("/metrics")).status == 200
        assert (await api.get("/v1/stats")).status == 401


async def cache_size(node: Node) -> int:
    """Pairs of cache c1 in Redis (not a replica: what every node would load)."""
    return int((await cache.meta(node.scripts, CacheKeys(node.keys.object("c1"))))["size"])


async def test_a_cache_put_without_the_token_changes_nothing(node: Node, tmp_path: Path) -> None:
    async with guarded(node, tmp_path) as api:
        resp = await api.put("/v1/caches/c1/victim", json={"value": "poisoned"})
        assert resp.status == 401
        resp = await api.put(
            "/v1/caches/c1/victim", json={"value": "poisoned"}, headers={"Authorization": "x"}
        )
        assert resp.status == 401
        assert (await api.get("/v1/caches/c1/victim", headers=AUTH)).status == 404
        assert await cache_size(node) == 0
        resp = await api.put("/v1/caches/c1/victim", json={"value": "ok"}, headers=AUTH)
        assert resp.status == 200  # the same request with the token is applied
        assert await cache_size(node) == 1


async def test_a_body_over_8_mib_gets_413_and_nothing_is_applied(
    node: Node, tmp_path: Path
) -> None:
    event = json.dumps({"object": "inbound_cidr", "key": "10.9.9.9", "delta": 1})
    body = ('{"events": [' + event + "]" + " " * (8 * MIB) + "}").encode()  # valid JSON
    async with guarded(node, tmp_path) as api:
        resp = await api.post("/v1/events", data=body, headers=AUTH)
        assert resp.status == 413
        assert "larger than the limit of 8388608 bytes" in (await resp.json())["error"]
        chunked = await api.post("/v1/events", data=_chunks(body), headers=AUTH)
        assert chunked.status == 413  # no Content-Length: refused while reading
        just_under = ('{"events": [' + event + "]" + " " * (8 * MIB - 100) + "}").encode()
        assert (await api.post("/v1/events", data=just_under, headers=AUTH)).status == 202
        assert (await api.post("/v1/flush", headers=AUTH)).status == 200
        count = await api.get("/v1/objects/inbound_cidr/count?key=10.9.9.9", headers=AUTH)
        assert await count.json() == {"count": 1}  # the accepted one only
        metrics = await (await api.get("/metrics", headers=AUTH)).text()
        assert refusals(metrics, "http", "body_too_large") == 2


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(body), MIB):
        yield body[i : i + MIB]


async def test_a_batch_over_max_events_gets_413_and_nothing_is_applied(
    node: Node, tmp_path: Path
) -> None:
    limits = HttpLimits(max_events=10)
    events = [{"object": "inbound_cidr", "key": f"10.1.0.{i}", "delta": 1} for i in range(11)]
    async with guarded(node, tmp_path, limits=limits) as api:
        resp = await api.post("/v1/events", json={"events": events}, headers=AUTH)
        assert resp.status == 413
        assert "too many events in one request: 11 > 10" in (await resp.json())["error"]
        assert (await api.post("/v1/flush", headers=AUTH)).status == 200
        count = await api.get("/v1/objects/inbound_cidr/count?key=10.1.0.0/24", headers=AUTH)
        assert await count.json() == {"count": 0}
        metrics = await (await api.get("/metrics", headers=AUTH)).text()
        assert refusals(metrics, "http", "too_many_events") == 1


# -- slow clients and the connection cap (a real listener: the guard's protocol) --------


@pytest.fixture
async def served(node: Node) -> AsyncIterator[tuple[HttpGuard, int]]:
    limits = HttpLimits(header_timeout=0.3, body_timeout=0.3, idle_timeout=5, max_connections=3)
    guard = HttpGuard(limits=limits)
    runner = web.AppRunner(make_app(node, guard=guard), access_log=None)
    await runner.setup()
    server = await guard.serve(runner, "127.0.0.1", 0)
    yield guard, server.sockets[0].getsockname()[1]
    server.close()
    await runner.cleanup()


async def test_headers_sent_too_slowly_are_cut_off(served: tuple[HttpGuard, int]) -> None:
    guard, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed without an answer
    assert guard.refusals.get("http", "header_timeout") == 1
    writer.close()


async def test_a_body_sent_too_slowly_gets_408(served: tuple[HttpGuard, int]) -> None:
    guard, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert guard.refusals.get("http", "body_timeout") == 1
    writer.close()


async def test_connections_past_the_cap_get_503(served: tuple[HttpGuard, int]) -> None:
    guard, port = served
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await until(lambda: _holds(guard.open == 3), 5, what="3 connections open")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with asyncio.timeout(5):
        answer = await reader.read()
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"too many connections" in answer
    assert guard.refusals.get("http", "connections") == 1
    for _, w in held:
        w.close()
    await until(lambda: _holds(guard.open == 0), 5, what="the held connections closed")
    async with aiohttp.ClientSession() as http:  # room again
        assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status == 200
    writer.close()


async def test_tls(node: Node, tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    guard = HttpGuard(ApiToken(token_file(tmp_path)))
    runner = web.AppRunner(make_app(node, guard=guard), access_log=None)
    await runner.setup()
    server = await guard.serve(runner, "127.0.0.1", 0, tls_context(str(certs.cert), str(certs.key)))
    port = server.sockets[0].getsockname()[1]
    try:
        client_tls = ssl.create_default_context(cafile=str(certs.ca))
        async with aiohttp.ClientSession() as http:
            resp = await http.get(
                f"https://127.0.0.1:{port}/v1/stats", ssl=client_tls, headers=AUTH
            )
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientError):
                await http.get(f"http://127.0.0.1:{port}/healthz")  # plain HTTP: no answer
    finally:
        server.close()
        await runner.cleanup()
    with pytest.raises(GuardError, match="--api-tls-cert and --api-tls-key go together"):
        tls_context(str(certs.cert), None)
    with pytest.raises(GuardError, match="cannot load"):
        tls_context(str(certs.cert), str(tmp_path / "absent.key"))


# -- the pieces --------------------------------------------------------------------------


def test_loopback() -> None:
    for host in ("127.0.0.1", "127.5.6.7", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.1", "relay-0-1", "2001:db8::1", "[::]"):
        assert not is_loopback(host), host
    check_listen("127.0.0.1", None)
    check_listen("0.0.0.0", "/some/file")
    with pytest.raises(GuardError, match="--api-token-file"):
        check_listen("0.0.0.0", None)


def test_token_file(tmp_path: Path) -> None:
    path = token_file(tmp_path)
    token = ApiToken(path)
    assert token.matches(f"Bearer {TOKEN}") and token.matches(f"bearer  {TOKEN} ")
    for header in (None, "", "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer é"):
        assert not token.matches(header), header
    path.write_text("new-token\n")
    assert token.reload() and token.matches("Bearer new-token")
    path.write_text("\n")
    assert not token.reload()  # unusable: the old one stays in force
    assert token.matches("Bearer new-token")
    for text, problem in (("", "empty"), ("a b", "printable ASCII"), ("x" * 5000, "larger")):
        path.write_text(text)
        with pytest.raises(TokenError, match=problem) as err:
            ApiToken(path)
        assert text.strip() not in str(err.value) or not text.strip()
    with pytest.raises(TokenError, match="cannot read"):
        ApiToken(tmp_path / "absent")


# -- the command ---------------------------------------------------------------------------


def agent_argv(conf: Path, port: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "mcluster", "agent", "--config", str(conf), "--node",
            "relay-0-1", "--listen", f"0.0.0.0:{port}", *more]  # fmt: skip


def test_the_agent_refuses_to_serve_off_loopback_without_a_token(tmp_path: Path) -> None:
    conf = tmp_path / "mcluster.conf"
    conf.write_text(CONFIG_TEXT)
    env = {k: v for k, v in os.environ.items() if k != "MCLUSTER_API_TOKEN_FILE"}
    env["MCLUSTER_REDIS_URL"] = "redis://127.0.0.1:1/0"  # never reached
    v6 = [*agent_argv(conf, free_port()), "--listen", "[::]:4802"]  # the last --listen wins
    for argv in (agent_argv(conf, free_port()), v6):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--api-token-file" in lines[0], done.stderr
        assert done.stdout == ""
    done = subprocess.run(
        agent_argv(conf, free_port(), "--api-token-file", str(tmp_path / "absent")),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "cannot read" in done.stderr, done


async def test_token_rotation_by_sighup(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    conf = tmp_path / "mcluster.conf"
    conf.write_text(CONFIG_TEXT.replace("cluster {", f'cluster {{\n  namespace = "{namespace}"'))
    path = token_file(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MCLUSTER_REDIS_URL": redis_server.url}
    env.pop("MCLUSTER_API_TOKEN_FILE", None)
    argv = agent_argv(conf, port, "--api-token-file", str(path))
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:

            async def status(headers: dict[str, str]) -> int | None:
                try:
                    async with http.get(base + "/v1/stats", headers=headers) as resp:
                        return resp.status
                except aiohttp.ClientError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    return None

            await until(lambda: _is(status(AUTH), 200), 20, what="the agent serving")
            assert await status({}) == 401
            path.write_text("rotated-token\n")
            assert await status(AUTH) == 200  # not re-read before SIGHUP
            proc.send_signal(signal.SIGHUP)
            new = {"Authorization": "Bearer rotated-token"}
            await until(lambda: _is(status(new), 200), 10, what="the new token in force")
            assert await status(AUTH) == 401
            async with http.get(base + "/healthz") as resp:
                assert resp.status == 200  # never needs one
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert TOKEN not in stderr and "rotated-token" not in stderr  # never logged
        assert "API token file re-read (a new token)" in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def _is(status: Awaitable[int | None], expected: int) -> bool:
    return await status == expected


async def _holds(condition: bool) -> bool:
    return condition
