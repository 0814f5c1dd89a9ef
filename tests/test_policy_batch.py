"""The policy service's connections and its batch of decisions per loop turn
(mcluster/faces/policy_conn.py): concurrent connections decided together and exactly,
requests sent back to back answered in order, a client that does not read its answers
not read either, a connection closed while its decision is in flight released."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from mcluster.faces.policy import PolicyService
from mcluster.faces.policy_conn import READ_LIMIT, PolicyConnection
from tests.helpers import policy_service, until
from tests.postfix import request
from tests.redis_servers import RedisServer

CONF = """
cluster {
  Replicate "inbound_cidr" {}
}
Policy {
  client_rates = ("32,%d/60")
  max_connections = 100
}
"""


@contextlib.asynccontextmanager
async def service(
    redis_server: RedisServer, namespace: str, limit: int
) -> AsyncIterator[PolicyService]:
    async with policy_service(CONF % limit, redis_server.url, namespace) as svc:
        yield svc


async def answers(reader: asyncio.StreamReader, n: int) -> list[str]:
    out = []
    async with asyncio.timeout(20):
        for _ in range(n):
            out.append((await reader.readuntil(b"\n\n")).decode())
    return out


async def test_concurrent_connections_are_decided_together_and_exactly(
    redis_server: RedisServer, namespace: str
) -> None:
    async with service(redis_server, namespace, 4) as svc:
        conns = [await asyncio.open_connection("127.0.0.1", svc.port) for _ in range(30)]
        for i, (_, writer) in enumerate(conns):  # 3 clients, 10 connections each
            writer.write(request("RCPT", f"10.7.0.{i % 3}", f"t.{i}", recipient="b@x.org"))
        got = [(await answers(reader, 1))[0] for reader, _ in conns]
        for _, writer in conns:
            writer.close()
        admitted = [i % 3 for i, answer in enumerate(got) if answer == "action=DUNNO\n\n"]
        assert sorted(admitted) == [0] * 4 + [1] * 4 + [2] * 4, got
        refused = [a for a in got if a.startswith("action=DEFER_IF_PERMIT 4.7.1 too many")]
        assert len(refused) == 18, got
        stats = svc.windows.stats
        assert stats.decisions == 30 and stats.allowed == 12
        assert stats.batches < 30  # several connections' requests went in one call
        assert svc.stats.transactions == 30 and svc.stats.degraded == 0


async def test_back_to_back_requests_answered_in_order_then_released_on_close(
    redis_server: RedisServer, namespace: str
) -> None:
    async with service(redis_server, namespace, 1) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        # one write: the second waits for the first's decision (same transaction), the
        # third is a new transaction of the same client, over the limit
        writer.write(
            request("RCPT", "10.8.0.1", "a", recipient="b@x.org")
            + request("RCPT", "10.8.0.1", "a", recipient="c@x.org")
            + request("RCPT", "10.8.0.1", "b", recipient="b@x.org")
        )
        got = await answers(reader, 3)
        assert got[:2] == ["action=DUNNO\n\n"] * 2
        assert got[2].startswith("action=DEFER_IF_PERMIT 4.7.1 too many mail transactions")
        assert svc.stats.released["next"] == 1 and set(svc.transactions) == {"b"}
        writer.close()

        async def released() -> bool:
            return not svc.connections and not svc.transactions

        await until(released, 5, what="the connection's transaction released")
        assert svc.stats.released["closed"] == 1


async def test_a_client_that_does_not_read_is_not_read_either(
    redis_server: RedisServer, namespace: str
) -> None:
    async with service(redis_server, namespace, 1) as svc:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel's share
        sock.connect(("127.0.0.1", svc.port))  # small, so that the service's fills
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(request("RCPT", "10.9.0.1", "first", recipient="b@x.org"))
        assert await answers(reader, 1) == ["action=DUNNO\n\n"]
        conn: PolicyConnection = next(iter(svc.connections))
        assert conn.transport is not None
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
        # a refused transaction asked again and again: each answer is about 110 bytes,
        # far more than the service buffers for a client that does not read them
        many = 4000
        ask = request("RCPT", "10.9.0.1", "second", recipient="b@x.org")
        sender = asyncio.create_task(_send(writer, ask * many))

        async def paused() -> bool:
            return conn.paused and not conn.reading

        await until(paused, 10, what="the service stopped reading the client")
        assert len(conn.buffer) <= READ_LIMIT + 262144  # one more read at most
        got = await answers(reader, many)
        await sender
        assert all(a.startswith("action=DEFER_IF_PERMIT") for a in got)
        assert svc.stats.requests == many + 1
        writer.close()


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
