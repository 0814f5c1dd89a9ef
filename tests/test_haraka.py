"""haraka-plugin-mcluster on real Haraka 3.x processes, each beside its own real agent
(one redis-server), relaying to loopback sinks that record concurrent sessions.

Inbound: the per-block connection cap and the message / recipient throttles hold across
two Harakas. Failure: fail-open and fail-closed with no agent. Outbound: the per-domain
cap is never exceeded at the sink across two Harakas, the OBTM rate holds, and a node
lost with kill -9 (Haraka and its agent) frees its slots within lease TTL + 1 s. The same
outbound scenario with haraka-plugin-limit's outbound concurrency limit is measured and
its figures printed (docs/haraka.md records them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.agents import Farm, until
from tests.haraka import Haraka, Sink, SmtpClient, send_mail, skip_reason
from tests.redis_servers import free_port

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

BLOCK = "127.0.0.0/24"
INBOUND_INI = """
[main]
url=http://127.0.0.1:{port}
fail={fail}
[inbound]
max_connections=2
[inbound_messages]
in_msgs:@block=3/60
[inbound_recipients]
in_rcpts:@block=5/60
[outbound]
enabled=false
"""


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    farm = Farm(tmp_path, extra_cluster='  Replicate "shared_named_throttles" {}\n')
    try:
        yield farm
    finally:
        await farm.close()


async def start_all(*harakas: Haraka) -> None:
    await asyncio.gather(*(h.start() for h in harakas))


def stop_all(*harakas: Haraka) -> None:
    for h in harakas:
        h.kill()


async def test_inbound_cap_and_rates_across_two_harakas(farm: Farm, tmp_path: Path) -> None:
    await farm.start("n1", "n2")
    h1, h2 = (
        Haraka(tmp_path / f"h{i}", plugins=["mcluster"],
               ini={"mcluster.ini": INBOUND_INI.format(port=farm.agents[n].port, fail="open")})
        for i, n in ((1, "n1"), (2, "n2"))
    )  # fmt: skip
    clients: list[SmtpClient] = []
    try:
        await start_all(h1, h2)

        async def connect(h: Haraka) -> SmtpClient:
            client = await SmtpClient.connect(h.port)
            clients.append(client)
            return client

        async def open_in_block() -> int:
            await farm.flush_all()
            return await farm.count("inbound_cidr", BLOCK)

        # Haraka's own probes while starting are gone before we count
        await until(_equals(open_in_block, 0), 5, what="no connection counted")
        c1 = await connect(h1)
        c2 = await connect(h2)
        assert (c1.greeting, c2.greeting) == (220, 220)
        assert await open_in_block() == 2
        c3 = await connect(h1)  # a third from the block, on either Haraka: 421
        assert c3.greeting == 421, c3.last
        assert "too many connections from 127.0.0.0/24 (cluster limit 2)" in c3.last
        c4 = await connect(h2)
        assert c4.greeting == 421
        await c1.close()
        await until(_equals(open_in_block, 1), 5, what="the closed connection uncounted")
        c5 = await connect(h1)
        assert c5.greeting == 220
        # rates: 5 recipients and 3 messages per minute for the block, across both Harakas
        assert await c5.command("EHLO client.test") == 250
        assert await c2.command("EHLO client.test") == 250
        code, text = await c5.message([f"r{i}@nowhere.test" for i in range(5)])
        assert code == 250, text
        assert await c2.command("MAIL FROM:<s@source.test>") == 250  # message 2 of 3
        assert await c2.command("RCPT TO:<r6@nowhere.test>") == 450  # recipient 6 of 5
        assert "recipient rate limit reached" in c2.last
        assert await c2.command("RSET") == 250
        assert await c2.command("MAIL FROM:<s@source.test>") == 250  # message 3 of 3
        assert await c2.command("RSET") == 250
        assert await c5.command("MAIL FROM:<s@source.test>") == 450  # message 4: refused
        assert "message rate limit reached" in c5.last
        for client in clients:
            await client.close()
        await until(_equals(open_in_block, 0), 5, what="every connection uncounted")
    finally:
        for client in clients:
            await client.close()
        stop_all(h1, h2)


def _equals(read: Callable[[], Awaitable[int]], want: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await read() == want)

    return check


async def test_fail_open_and_fail_closed_without_agent(tmp_path: Path) -> None:
    """No agent answers on the configured port: fail = open lets mail in and out, fail =
    closed answers 421 at connect and keeps outbound mail in the queue."""
    sink = await Sink.start()
    dead = free_port()  # nothing listens there
    routes = {"out.test": sink.port}
    open_ini = INBOUND_INI.format(port=dead, fail="open").replace("enabled=false", "enabled=true")
    opened = Haraka(tmp_path / "open", plugins=["mcluster"], routes=routes,
                    ini={"mcluster.ini": open_ini})  # fmt: skip
    closed_ini = INBOUND_INI.format(port=dead, fail="closed")
    closed_in = Haraka(tmp_path / "closed_in", plugins=["mcluster"],
                       ini={"mcluster.ini": closed_ini})  # fmt: skip
    closed_out = Haraka(
        tmp_path / "closed_out", plugins=["mcluster"], routes=routes,
        ini={"mcluster.ini": f"[main]\nurl=http://127.0.0.1:{dead}\nfail=closed\n"
             "[inbound]\nenabled=false\n"},
    )  # fmt: skip
    try:
        await start_all(opened, closed_in, closed_out)
        assert await send_mail(opened.port, ["a@out.test"]) == [250]
        await until(lambda: len(sink.messages) == 1, 10, what="fail-open mail delivered")
        client = await SmtpClient.connect(closed_in.port)
        await client.close()
        assert client.greeting == 421
        assert "cluster limits unavailable" in client.last
        assert await send_mail(closed_out.port, ["b@out.test"]) == [250]  # queued
        await until(lambda: closed_out.grep("OBTM: mcluster agent unavailable"), 10,
                    what="fail-closed OBTM noticed")  # fmt: skip
        assert closed_out.grep("fail = closed")
        assert len(sink.messages) == 1  # the fail-closed message stays queued
    finally:
        stop_all(opened, closed_in, closed_out)
        await sink.stop()
