"""The policy service's guard (issue 18): the client allow-list (closed without an answer,
counted, logged once a minute per address), the refusal to serve off loopback without
one, the connection cap, and the idle and partial-request timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcluster import parse_config
from mcluster.config import ConfigError
from mcluster.faces.policy import PolicyService
from mcluster.objects.policy import policy_config
from mcluster.security.clients import LOG_EVERY, PolicyGuard, RefusalLog, policy_guard
from mcluster.security.errors import GuardError
from tests.helpers import policy_service, until
from tests.postfix import request
from tests.redis_servers import RedisServer, free_port

CONF = """
cluster {
  Replicate "inbound_cidr" {}
}
Policy {
  client_rates = ("32,3/60")
  %s
}
"""
ASK = request("RCPT", "10.4.0.9", "1.2.3.4", recipient="bob@example.org")


@contextlib.asynccontextmanager
async def service(redis_server: RedisServer, namespace: str, extra: str) -> AsyncIterator[
    PolicyService
]:  # fmt: skip
    async with policy_service(CONF % extra, redis_server.url, namespace) as svc:
        yield svc


async def exchange(port: int, source: str, data: bytes = ASK) -> bytes:
    """Connect from ``source`` (a loopback address), send ``data``, read to the end or for
    at most 5 s: what the service answered before it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(5):
                while not out.endswith(b"\n\n") and (chunk := await reader.read(4096)):
                    out += chunk
        return out
    finally:
        writer.close()


async def test_an_address_off_the_list_is_closed_without_an_answer(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mcluster.policy")
    async with service(redis_server, namespace, 'clients = ("127.0.0.2/32")') as svc:
        assert await exchange(svc.port, "127.0.0.3") == b""
        assert await exchange(svc.port, "127.0.0.3") == b""
        assert await exchange(svc.port, "127.0.0.1") == b""  # loopback is no exception
        assert await exchange(svc.port, "127.0.0.2") == b"action=DUNNO\n\n"
        assert svc.refusals.get("policy", "not_allowed") == 3
        assert svc.stats.requests == 1 and svc.stats.connections == 1
    refused = [r.getMessage() for r in caplog.records if "not in Policy clients" in r.getMessage()]
    assert refused == [  # once per address per minute
        "policy client 127.0.0.3 is not in Policy clients; connection closed",
        "policy client 127.0.0.1 is not in Policy clients; connection closed",
    ]


async def test_the_default_is_loopback_only(redis_server: RedisServer, namespace: str) -> None:
    async with service(redis_server, namespace, "") as svc:
        assert await exchange(svc.port, "127.0.0.9") == b"action=DUNNO\n\n"
    guard = PolicyGuard()
    assert guard.allows("127.0.0.1") and guard.allows("::1") and guard.allows("::ffff:127.0.0.1")
    assert not guard.allows("10.0.0.1") and not guard.allows("") and not guard.allows("x")
    v6 = policy_guard(parse_config(CONF % 'clients = ("10.1.0.0/16" "2001:db8::/32")'))
    assert v6.allows("10.1.200.3") and v6.allows("2001:db8::25") and v6.allows("::ffff:10.1.0.1")
    assert not v6.allows("10.2.0.1") and not v6.allows("127.0.0.1") and not v6.allows("2001::1")


async def test_connections_past_the_cap_are_closed(
    redis_server: RedisServer, namespace: str
) -> None:
    async with service(redis_server, namespace, "max_connections = 2") as svc:
        held = [await asyncio.open_connection("127.0.0.1", svc.port) for _ in range(2)]

        async def two_open() -> bool:
            return svc.stats.connections == 2

        await until(two_open, 5, what="two connections served")
        assert await exchange(svc.port, "127.0.0.1") == b""
        assert svc.refusals.get("policy", "connections") == 1
        for _, writer in held:
            writer.close()

        async def none_open() -> bool:
            return not svc.connections

        await until(none_open, 5, what="the held connections closed")
        assert await exchange(svc.port, "127.0.0.1") == b"action=DUNNO\n\n"


async def test_idle_and_partial_request_timeouts(redis_server: RedisServer, namespace: str) -> None:
    extra = "idle_timeout = 0.3\n  request_timeout = 0.3"
    async with service(redis_server, namespace, extra) as svc:
        assert await exchange(svc.port, "127.0.0.1", b"") == b""  # idle: closed
        assert svc.refusals.get("policy", "idle_timeout") == 1
        half = ASK[: len(ASK) // 2]
        assert await exchange(svc.port, "127.0.0.1", half) == b""  # never finished
        assert svc.refusals.get("policy", "request_timeout") == 1
        # a request answered, then idle: answered first, closed after
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(ASK)
        assert await reader.readuntil(b"\n\n") == b"action=DUNNO\n\n"
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        assert svc.refusals.get("policy", "idle_timeout") == 2
        assert svc.stats.garbage == 0  # a timeout is not garbage


def test_refusal_log_once_a_minute() -> None:
    log = RefusalLog()
    assert log.should_log("10.0.0.1", now=100.0)
    assert not log.should_log("10.0.0.1", now=100.0 + LOG_EVERY - 1)
    assert log.should_log("10.0.0.2", now=101.0)
    assert log.should_log("10.0.0.1", now=100.0 + LOG_EVERY)


def test_config_problems_are_named_with_their_place() -> None:
    bad = 'clients = ("10.1.0.0/16" "10.1.2.3/16" "nope" 7)\n  max_connections = 0\n'
    bad += "  idle_timeout = -1"
    with pytest.raises(ConfigError) as err:
        policy_guard(parse_config(CONF % bad, "p.conf"))
    text = str(err.value)
    assert 'p.conf:7:28: clients entry "10.1.2.3/16": expected an address or CIDR block' in text
    assert "has host bits set" in text and 'clients entry "nope"' in text
    assert 'clients entry "7"' in text or "clients entry 7" in text
    assert 'p.conf:8:3: max_connections must be 1..1000000, got "0"' in text
    assert 'p.conf:9:3: idle_timeout must be seconds > 0, got "-1"' in text
    with pytest.raises(ConfigError, match="clients is empty"):
        policy_guard(parse_config(CONF % "clients = ()"))
    policy_config(parse_config(CONF % 'clients = ("10.0.0.0/8")\n  request_timeout = 5'))
    with pytest.raises(GuardError, match=r"Policy \{ clients"):
        PolicyGuard().check_listen("0.0.0.0")
    PolicyGuard().check_listen("127.0.0.1")
    policy_guard(parse_config(CONF % 'clients = ("10.0.0.0/8")')).check_listen("0.0.0.0")


def test_the_agent_refuses_a_policy_service_off_loopback_without_clients(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "mcluster.conf"
    conf.write_text(CONF % "")
    env = {k: v for k, v in os.environ.items() if k != "MCLUSTER_API_TOKEN_FILE"}
    env["MCLUSTER_REDIS_URL"] = "redis://127.0.0.1:1/0"  # never reached
    done = subprocess.run(
        [sys.executable, "-m", "mcluster", "agent", "--config", str(conf), "--node", "n1",
         "--listen", f"127.0.0.1:{free_port()}", "--policy", f"0.0.0.0:{free_port()}"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "clients" in lines[0] and "--policy" in lines[0], done.stderr


async def test_an_agent_counts_policy_refusals_in_its_metrics(tmp_path: Path) -> None:
    """End to end: ``mcluster agent --policy`` shares one count of refusals between its
    faces, and /metrics shows the policy service's."""
    from tests.agents import Farm

    farm = Farm(tmp_path, extra='Policy {\n  clients = ("127.0.0.2/32")\n}\n')
    try:
        port = free_port()
        await farm.start("n1", args=["--policy", f"127.0.0.1:{port}"])
        assert await exchange(port, "127.0.0.3") == b""
        async with farm.session.get(farm.agents["n1"].base + "/metrics") as resp:
            text = await resp.text()
        assert 'mcluster_refusals_total{face="policy",reason="not_allowed"} 1.0' in text
    finally:
        await farm.close()
