"""The demo SMTP server beside a real agent (HTTP API on loopback, real Redis): the
per-block connection cap, the shared throttle, and what both leave in Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.demo.smtp import Limits, SmtpServer, start_server
from mcluster.demo.traffic import Outcomes, smtp_session
from mcluster.faces.http.app import make_app
from tests.helpers import until
from tests.redis_servers import RedisServer

CONFIG = """
cluster {
  Replicate "inbound_cidr" { max_delay = 0.05 }
  Replicate "totals" { type = "outbound_domains"  max_delay = 0.05 }
  Replicate "shared_named_throttles" {}
  Replicate "metrics" { parameters = "connect;reception;rejection"  max_delay = 0.05 }
}
"""
CAP = 2
RATE = "3/60"


@pytest.fixture
async def smtp(redis_server: RedisServer, namespace: str) -> AsyncIterator[tuple[Node, SmtpServer]]:
    node = Node(parse_config(CONFIG), "relay-0-1", redis_server.url, namespace=namespace)
    await node.start()
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    limits = Limits(max_connections=CAP, throttle="msgs", rate=RATE, totals="totals", audit=True)
    async with aiohttp.ClientSession() as session:
        server = await start_server(f"http://127.0.0.1:{port}", session, limits, "127.0.0.1", 0)
        try:
            yield node, server
        finally:
            await server.stop()
            await runner.cleanup()
            await node.stop()


async def open_count(node: Node, key: str) -> int:
    await node.flush()
    return await node.count("inbound_cidr", key)


async def test_cap_throttle_and_figures_in_redis(smtp: tuple[Node, SmtpServer]) -> None:
    node, server = smtp
    port = server.port
    # CAP sessions from one /24 hold their connections; one more from that /24 is refused,
    # one from another /24 is not.
    held = [
        asyncio.create_task(smtp_session("127.0.0.1", port, f"127.0.5.{i}", 0, 3.0)) for i in (1, 2)
    ]

    async def both_open() -> bool:
        return await open_count(node, "127.0.5.0/24") == CAP

    await until(both_open, 10, "the held sessions counted in inbound_cidr")
    refused = await smtp_session("127.0.0.1", port, "127.0.5.9", 1)
    assert (refused.refused, refused.connections, refused.errors) == (1, 0, 0)
    other = await smtp_session("127.0.0.1", port, "127.0.6.1", 4)  # 3 pass the throttle
    assert (other.connections, other.messages, other.deferred, other.errors) == (1, 3, 1, 0)
    seen = Outcomes()
    for task in held:
        seen.add(await task)
    seen.add(refused)
    seen.add(other)
    assert seen.figures() == {"connections": 3, "refused": 1, "messages": 3, "deferred": 1}
    assert server.gate.tally.figures() == seen.figures()
    assert server.gate.tally.agent_errors == 0

    async def all_closed() -> bool:
        return await open_count(node, "127.0.0.0/8") == 0

    await until(all_closed, 10, "every session's close recorded")
    await server.gate.settle()
    await node.flush()
    in_redis = {k: await node.count("totals", k) for k in seen.figures()}
    assert in_redis == seen.figures()
    audit = (await server.gate.agent.inbound_audit("127.0.0.0/8"))["monitors"][0]
    assert [sum(audit[k]) for k in ("connections", "receptions", "rejections")] == [4, 3, 2]
    assert server.gate.tally.open == 0
