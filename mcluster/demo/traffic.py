"""The demo's SMTP traffic: real SMTP sessions on loopback from many source addresses.

Each session binds a source address of its own in 127.0.0.0/8 (Linux routes the whole
block to ``lo``), so the CIDR trees show distinct networks. Polite networks open a few
short sessions; abusive ones open many at once, hold them, and send bursts of messages,
so the per-block connection cap (421) and the shared message throttle (451) trip.
What every session saw is counted (``Outcomes``): the figures the demo checks against
Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from mcluster.errors import Error

SESSION_TIMEOUT = 20.0
#: What both sides count: sessions admitted and refused, messages accepted and deferred.
FIGURES = ("connections", "refused", "messages", "deferred")
MESSAGE = b"Subject: mcluster demo\r\n\r\nHello from the demo.\r\n.\r\n"


@dataclass
class Outcomes:
    """What SMTP clients saw, summed over sessions."""

    connections: int = 0  # greeted with 220
    refused: int = 0  # greeted with 421
    messages: int = 0  # 250 after the message
    deferred: int = 0  # 451 after the message
    errors: int = 0  # anything else (a reset, a timeout, an unexpected reply)

    def figures(self) -> dict[str, int]:
        return figures(self)

    def add(self, other: Outcomes) -> None:
        for name in ("connections", "refused", "messages", "deferred", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def figures(counts: object) -> dict[str, int]:
    """The FIGURES of an Outcomes or a server's Tally, by name."""
    return {name: int(getattr(counts, name)) for name in FIGURES}


class SmtpReplyError(Error):
    """The server answered something the client did not expect."""


async def _reply(reader: asyncio.StreamReader) -> int:
    """Read one (possibly multi-line) SMTP reply; return its code."""
    while True:
        line = await reader.readline()
        if len(line) < 4 or not line[:3].isdigit():
            raise SmtpReplyError(f"bad reply line {line!r}")
        if line[3:4] != b"-":
            return int(line[:3])


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, *expect: int
) -> int:
    writer.write(line)
    await writer.drain()
    code = await _reply(reader)
    if code not in expect:
        raise SmtpReplyError(f"{line.strip()!r} answered {code}")
    return code


async def smtp_session(
    host: str, port: int, source: str | None, messages: int, hold: float = 0.0
) -> Outcomes:
    """One SMTP session from ``source``: greeting, EHLO, ``messages`` messages, a pause of
    ``hold`` seconds, QUIT. Returns what it saw; never raises for SMTP or socket errors."""
    seen = Outcomes()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(SESSION_TIMEOUT + hold):
            local = (source, 0) if source else None
            reader, writer = await asyncio.open_connection(host, port, local_addr=local)
            greeting = await _reply(reader)
            if greeting == 421:
                seen.refused += 1
                return seen
            if greeting != 220:
                raise SmtpReplyError(f"greeting {greeting}")
            seen.connections += 1
            await _command(reader, writer, b"EHLO client.demo.example\r\n", 250)
            for i in range(messages):
                await _command(reader, writer, f"MAIL FROM:<s{i}@demo.example>\r\n".encode(), 250)
                await _command(reader, writer, b"RCPT TO:<postmaster@example.com>\r\n", 250)
                await _command(reader, writer, b"DATA\r\n", 354)
                code = await _command(reader, writer, MESSAGE, 250, 451)
                if code == 250:
                    seen.messages += 1
                else:
                    seen.deferred += 1
            if hold > 0:
                await asyncio.sleep(hold)
            await _command(reader, writer, b"QUIT\r\n", 221)
    except (OSError, TimeoutError, SmtpReplyError, asyncio.IncompleteReadError):
        seen.errors += 1
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return seen


@dataclass(frozen=True)
class Network:
    """Senders of one /24: how many hosts, sessions per second, and how they behave."""

    prefix: str  # "127.0.1" (the first three octets)
    hosts: int
    rate: float  # sessions opened per second
    messages: tuple[int, int]  # per session, min and max
    hold: float  # seconds a session stays open after its messages
    burst: int = 1  # sessions opened together

    def source(self, rng: random.Random) -> str:
        return f"{self.prefix}.{rng.randrange(1, self.hosts + 1)}"


NETWORKS = (
    Network("127.0.1", hosts=20, rate=4.0, messages=(1, 2), hold=0.2),
    Network("127.0.2", hosts=10, rate=3.0, messages=(1, 3), hold=0.3),
    Network("127.0.3", hosts=5, rate=2.0, messages=(1, 1), hold=0.1),
    Network("127.0.66", hosts=3, rate=1.0, messages=(4, 8), hold=2.0, burst=12),  # abusive
)


@dataclass
class Generator:
    """Opens sessions against ``servers`` (host, port), spread over them at random."""

    servers: Sequence[tuple[str, int]]
    networks: Sequence[Network] = NETWORKS
    rng: random.Random = field(default_factory=random.Random)
    seen: Outcomes = field(default_factory=Outcomes)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)
    started: int = 0

    async def _one(self, net: Network) -> None:
        host, port = self.rng.choice(list(self.servers))
        low, high = net.messages
        got = await smtp_session(
            host, port, net.source(self.rng), self.rng.randint(low, high), net.hold
        )
        self.seen.add(got)

    def _spawn(self, net: Network) -> None:
        for _ in range(net.burst):
            task = asyncio.get_running_loop().create_task(self._one(net))
            self.sessions.add(task)
            task.add_done_callback(self.sessions.discard)
            self.started += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Open sessions (Poisson arrivals per network) until ``stop`` is set, then wait
        for the sessions in flight to finish."""
        loop = asyncio.get_running_loop()
        due = {net: loop.time() + self.rng.expovariate(net.rate) for net in self.networks}
        while not stop.is_set():
            net = min(due, key=due.__getitem__)
            pause = due[net] - loop.time()
            if pause > 0:
                try:
                    async with asyncio.timeout(pause):
                        await stop.wait()
                    break
                except TimeoutError:
                    pass
            self._spawn(net)
            due[net] = loop.time() + self.rng.expovariate(net.rate)
        await self.drain()

    async def drain(self) -> None:
        while self.sessions:
            await asyncio.gather(*list(self.sessions), return_exceptions=True)
