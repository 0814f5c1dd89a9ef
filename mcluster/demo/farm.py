"""The SMTP side of ``mcluster demo``: an SMTP server beside each agent, the traffic
generator, the live dashboard, and the final figures checked against Redis.

The figures are counted three times, independently: by the SMTP clients (the replies they
got), by the SMTP servers (what they admitted, refused, accepted, deferred), and in Redis
(the gauge table ``demo_totals`` the servers record into through their agents). The demo
succeeds only when the three agree exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from rich.console import Console

from mcluster.console.dashboard import watch
from mcluster.demo import outbound
from mcluster.demo.smtp import Limits, SmtpServer, start_server
from mcluster.demo.traffic import FIGURES, NETWORKS, Generator, Network, Outcomes, figures
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys

TOTALS_OBJECT = "demo_totals"
THROTTLE = "demo_messages"
THROTTLE_RATE = "50/5"
MAX_CONNECTIONS = 8  # per /24, cluster-wide
#: The demo config's extra stanzas (inside its cluster scope).
CONFIG_STANZAS = f"""\
  Replicate "{TOTALS_OBJECT}" {{
    type = "outbound_domains"
    max_delay = 0.2
  }}
  Shared_Throttle "{THROTTLE}" {{ rate = "{THROTTLE_RATE}" }}
  Replicate "metrics" {{ parameters = "connect;reception;rejection" }}
{outbound.CLUSTER_STANZAS}"""
LIMITS = Limits(
    max_connections=MAX_CONNECTIONS, throttle=THROTTLE, totals=TOTALS_OBJECT, audit=True
)
SOURCES = "127.0.0.0/8"  # every SMTP client address (the audit is read for this block)

Count = Callable[[str], Awaitable[int]]


def loopback_sources_work() -> bool:
    """Whether sources other than 127.0.0.1 can be bound (Linux: all of 127.0.0.0/8)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.1.1", 0))
        except OSError:
            return False
    return True


def networks() -> Sequence[Network]:
    if loopback_sources_work():
        return NETWORKS
    print("note: cannot bind 127.0.x.y sources here; every session comes from 127.0.0.1")
    return tuple(Network("127.0.0", 1, n.rate, n.messages, n.hold, n.burst) for n in NETWORKS)


@dataclass
class SmtpFarm:
    """The SMTP servers (one per agent) and the generator driving them."""

    servers: list[SmtpServer]
    generator: Generator
    sinks: outbound.Sinks = field(default_factory=outbound.Sinks)
    forwarders: list[outbound.Forwarder] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, agent_urls: Sequence[str], session: aiohttp.ClientSession) -> SmtpFarm:
        servers: list[SmtpServer] = []
        try:
            for url in agent_urls:
                servers.append(await start_server(url, session, LIMITS, "127.0.0.1", 0))
        except BaseException:
            for server in servers:
                await server.stop()
            raise
        addresses = [(s.host, s.port) for s in servers]
        farm = cls(servers, Generator(addresses, networks()))
        await farm.sinks.start()
        for i, server in enumerate(servers, start=1):  # each relay sends from its binding
            forwarder = outbound.Forwarder(server.gate.agent, f"relay{i}", farm.sinks)
            server.gate.forward = forwarder.submit
            farm.forwarders.append(forwarder)
        return farm

    def describe(self) -> list[str]:
        return [f"  smtp {s.gate.node}  {s.host}:{s.port}" for s in self.servers]

    def run(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.generator.run(self.stop))

    async def close(self) -> None:
        """Stop opening sessions, let those in flight finish, stop the servers."""
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        for server in self.servers:
            await server.stop()
        await asyncio.gather(*(f.drain(outbound.DRAIN_TIMEOUT) for f in self.forwarders))
        await self.sinks.stop()

    def forwarded(self) -> outbound.ForwardStats:
        total = outbound.ForwardStats()
        for forwarder in self.forwarders:
            total.add(forwarder.stats)
        return total

    def served(self) -> dict[str, int]:
        total = dict.fromkeys(FIGURES, 0)
        for server in self.servers:
            for name, n in server.gate.tally.figures().items():
                total[name] += n
        return total

    def progress(self) -> str:
        seen = self.generator.seen
        return (
            f"smtp: {seen.connections:,} sessions, {seen.refused:,} refused, "
            f"{seen.messages:,} messages, {seen.deferred:,} deferred"
        )

    async def final_figures(self, count: Count) -> tuple[bool, list[str]]:
        """The three counts side by side; ok when they agree and nothing failed."""
        seen: Outcomes = self.generator.seen
        rows = {
            "SMTP clients saw": figures(seen),
            "SMTP servers counted": self.served(),
            f"Redis ({TOTALS_OBJECT})": {name: await count(name) for name in FIGURES},
        }
        lines = [f"{'final figures':<26}" + "".join(f"{n:>13}" for n in FIGURES)]
        lines += [
            f"  {label:<24}" + "".join(f"{v[n]:>13,}" for n in FIGURES) for label, v in rows.items()
        ]
        errors = seen.errors + sum(s.gate.tally.agent_errors for s in self.servers)
        audit_ok, audit_line = await self.audit_figures(seen)
        lines.append(audit_line)
        provider_ok, provider_lines = outbound.provider_line(self.sinks, self.forwarded())
        lines += provider_lines
        agree = all(v == rows["SMTP clients saw"] for v in rows.values()) and audit_ok
        agree = agree and provider_ok
        ok = agree and errors == 0
        verdict = "OK" if ok else f"FAIL ({'disagree' if not agree else ''} {errors} errors)"
        lines.append(f"final figures exact: {verdict}")
        lines.append(
            f"limits: {MAX_CONNECTIONS} connections per /24 cluster-wide (421), "
            f"throttle {THROTTLE} {THROTTLE_RATE} (451)"
        )
        return ok, lines

    async def audit_figures(self, seen: Outcomes) -> tuple[bool, str]:
        """Momentum's inbound audit in Redis for the clients' block, against the clients:
        connect = sessions + refused, reception = messages, rejection = refused + deferred."""
        found = await self.servers[0].gate.agent.inbound_audit(SOURCES)
        monitor = found["monitors"][0]  # all windows: the run is far shorter than the span
        got = {k: sum(monitor[f"{k}s"]) for k in ("connection", "reception", "rejection")}
        want = {
            "connection": seen.connections + seen.refused,
            "reception": seen.messages,
            "rejection": seen.refused + seen.deferred,
        }
        ok = got == want
        shown = ", ".join(f"{k} {got[k]:,}" for k in got)
        return (
            ok,
            f"  Redis (inbound_audit {SOURCES}): {shown}: {'OK' if ok else f'FAIL, want {want}'}",
        )


async def dashboard(url: str, namespace: str, seconds: float | None, stop: asyncio.Event) -> None:
    """The live dashboard until ``stop`` is set (the farm's traffic ended)."""
    client = make_async_client(url)
    console = Console(file=sys.stdout)
    try:
        task = asyncio.create_task(watch(client, ClusterKeys(namespace), console, seconds))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for pending in (task, waiter):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
    finally:
        await client.aclose()
