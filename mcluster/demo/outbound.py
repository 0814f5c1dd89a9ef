"""The outbound half of ``mcluster demo``: relays forward what they accept to a provider.

Every message a demo relay accepts is forwarded, in the background, to one of a few
destination domains whose MX hosts all belong to one mailbox provider, ``bigmail``: a
``Provider`` scope caps the farm's connections to it, and one of its MX hosts has a
tighter ``Host`` cap of its own. For each message the relay asks its agent OBTM
(``POST /v1/outbound/message``), then opens a connection slot (``POST
/v1/connections/open``: OBTC and the caps, with the MX ``host``, its ``ip`` and the
domain's ``mx_hosts``; a refusal by the MX host's cap names a sibling to spill over to),
delivers over SMTP to that MX host's sink, and closes the slot. The connection reports
fill ``outbound_cidr``, ``outbound_domains`` and ``outbound_binding_domains`` while the
sessions are open, so the dashboard shows them filling and draining.

The provider's MX hosts are loopback "sink" SMTP servers that share one count of open
sessions: they answer ``421`` when the farm holds more than the configured concurrency
(the cap) and record the most sessions they ever had open at once. The final summary
puts that figure beside the cap: the farm never exceeded it, or the demo fails.

The provider also pushes back on volume as Microsoft does: above ``SINK_RATE`` messages a
second it defers a message with ``451 4.7.500 Server busy``. Relays report every attempt
(``POST /v1/outbound/outcome``) and retry a deferred message; the demo config's
``Shaping "bigmail_busy"`` rule suspends the whole provider for a second on every node
after three such replies (docs/shaping.md), and the summary counts what shaping did.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field

from mcluster.demo.smtp import AgentClient, AgentError
from mcluster.demo.traffic import smtp_session

log = logging.getLogger("mcluster.demo.outbound")

PROVIDER = "bigmail"
PROVIDER_CAP = 4  # open connections to the provider, farm-wide
HOST_CAP = 2  # open connections to its first MX host, farm-wide
MX_HOSTS = ("mx1.bigmail.test", "mx2.bigmail.test")
#: Destination domain -> its MX hosts, by preference: different MX hosts, one provider.
DESTINATIONS = {
    "bigmail.test": ("mx1.bigmail.test", "mx2.bigmail.test"),
    "hosted-at-bigmail.example": ("mx2.bigmail.test", "mx1.bigmail.test"),
    "partner.example": ("mx1.bigmail.test", "mx2.bigmail.test"),
}
SINK_HOLD = 0.3  # seconds a sink takes to accept a message (so sessions overlap)
SINK_RATE = 12  # messages a second the provider takes; above it: "451 4.7.500 Server busy"
BUSY = "4.7.500 Server busy. Please try again later. (S77714)"
MAX_DEFERRALS = 100  # a message deferred this often is given up (counted as failed)
WORKERS = 4  # deliveries in flight per relay at most
ATTEMPTS = 200  # tries for a slot before a message is given up
DRAIN_TIMEOUT = 15.0  # the longest the end of the demo waits for the forwarding queues
#: The demo config's outbound stanzas (inside its cluster scope) and scopes (top level).
CLUSTER_STANZAS = """\
  Replicate "OBTM" {}
  Replicate "OBTC" {}
"""
SCOPES = f"""
Provider "{PROVIDER}" {{
  mx_suffix = (".bigmail.test")
  cluster_max_outbound_connections = {PROVIDER_CAP}
  cluster_outbound_throttle_connections = "1000/1"
  cluster_outbound_throttle_messages = "1000/1"
}}
Host "{MX_HOSTS[0]}" {{ cluster_max_outbound_connections = {HOST_CAP} }}
Shaping "bigmail_busy" {{ provider = "{PROVIDER}"  match = "/4\\.7\\.500 Server busy/"
  action = "suspend"  duration = 1  trigger = "3/5" }}
"""


@dataclass
class Sinks:
    """The provider's MX hosts: one loopback SMTP server each, one shared session count."""

    limit: int = PROVIDER_CAP
    hold: float = SINK_HOLD
    open: int = 0
    most: int = 0  # the most sessions open at once
    sessions: int = 0
    refused: int = 0  # 421: more than ``limit`` sessions at once
    messages: int = 0
    rate: int = SINK_RATE
    deferred: int = 0  # 451 4.7.500: more than ``rate`` messages in the last second
    recent: deque[float] = field(default_factory=deque)  # when the last messages came
    ports: dict[str, int] = field(default_factory=dict)
    servers: list[asyncio.Server] = field(default_factory=list)

    async def start(self) -> None:
        for host in MX_HOSTS:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.servers.append(server)
            self.ports[host] = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.limit:  # the farm holds too many: the provider pushes back
            self.refused += 1
            writer.write(b"421 4.7.0 Too many connections from your farm\r\n")
            await self._close(writer)
            return
        self.open += 1
        self.sessions += 1
        self.most = max(self.most, self.open)
        try:
            await self._session(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.open -= 1
            await self._close(writer)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink.bigmail.test ESMTP\r\n")
        async with asyncio.timeout(30):
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    await asyncio.sleep(self.hold)
                    if self._busy():
                        self.deferred += 1
                        writer.write(f"451 {BUSY}\r\n".encode())
                    else:
                        self.messages += 1
                        writer.write(b"250 2.0.0 accepted\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()

    def _busy(self) -> bool:
        """Too many messages in the last second (else this one is counted in it)."""
        now = asyncio.get_running_loop().time()
        while self.recent and self.recent[0] <= now - 1.0:
            self.recent.popleft()
        if len(self.recent) >= self.rate:
            return True
        self.recent.append(now)
        return False

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@dataclass
class ForwardStats:
    queued: int = 0
    delivered: int = 0
    obtm_waits: int = 0  # OBTM said not yet
    cap_waits: int = 0  # a connection cap (or OBTC) said not yet
    spilled: int = 0  # went to a sibling MX host the refusal named
    sink_refused: int = 0  # the sink answered 421
    failed: int = 0  # an SMTP or agent error, or no slot after ATTEMPTS tries
    deferred: int = 0  # the sink answered 451 4.7.500 (retried)
    suspensions: int = 0  # reports that fired the shaping rule
    shaped_waits: int = 0  # OBTM said not yet because of a shaping rule

    def add(self, other: ForwardStats) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


class Forwarder:
    """One relay's outbound queue: OBTM, a slot, an SMTP session to the sink, the close."""

    def __init__(self, agent: AgentClient, binding: str, sinks: Sinks) -> None:
        self.agent, self.binding, self.sinks = agent, binding, sinks
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.stats = ForwardStats()
        self.domains = itertools.cycle(DESTINATIONS)
        self.workers = [asyncio.create_task(self._work()) for _ in range(WORKERS)]

    def submit(self) -> None:
        """Forward one accepted message (to the next destination domain in turn)."""
        self.stats.queued += 1
        self.queue.put_nowait(next(self.domains))

    async def drain(self, timeout: float) -> None:
        """Wait for the queue (at most ``timeout`` s), then stop the workers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.queue.join()
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            domain = await self.queue.get()
            try:
                await self._deliver(domain)
            except AgentError as exc:
                log.warning("forwarding to %s failed: %s", domain, exc)
                self.stats.failed += 1
            finally:
                self.queue.task_done()

    async def _deliver(self, domain: str) -> None:
        """Deliver one message, again after each deferral (at most MAX_DEFERRALS)."""
        for _ in range(MAX_DEFERRALS):
            if await self._attempt(domain):
                return
        self.stats.failed += 1

    async def _attempt(self, domain: str) -> bool:
        """One delivery attempt; False when the sink deferred it (retry)."""
        route = {"binding": self.binding, "domain": domain}
        while True:  # OBTM: may one more message go out?
            decision = await self.agent.call("POST", "/v1/outbound/message", json=route)
            if decision["allowed"]:
                break
            self.stats.obtm_waits += 1
            if "shaping rule" in str(decision.get("reason")):
                self.stats.shaped_waits += 1
            await asyncio.sleep(min(0.5, max(0.01, decision["retry_after_ms"] / 1000)))
        mx = DESTINATIONS[domain]
        host = mx[0]
        for _ in range(ATTEMPTS):
            report = route | {"host": host, "ip": "127.0.0.1", "mx_hosts": list(mx)}
            opened = await self.agent.call("POST", "/v1/connections/open", json=report)
            if not opened["allowed"]:
                self.stats.cap_waits += 1
                spill = opened.get("spill_over") or []
                if spill and spill[0] != host:
                    host = spill[0]
                    self.stats.spilled += 1
                    continue
                host = mx[0]
                await asyncio.sleep(0.02)
                continue
            try:
                seen = await smtp_session("127.0.0.1", self.sinks.ports[host], None, 1)
            finally:
                await self.agent.call(
                    "POST", "/v1/connections/close", json={"slot": opened["slot"]}
                )
            self.stats.delivered += seen.messages
            self.stats.sink_refused += seen.refused
            self.stats.failed += seen.errors
            if seen.messages or seen.deferred:  # what the provider answered: to shaping
                await self._report(route | {"host": host}, deferred=bool(seen.deferred))
            if seen.deferred:
                self.stats.deferred += 1
                return False
            return True
        self.stats.failed += 1
        return True

    async def _report(self, route: dict[str, str], deferred: bool) -> None:
        code, text = (451, BUSY) if deferred else (250, "2.0.0 accepted")
        body = route | {"code": code, "text": text}
        result = await self.agent.call("POST", "/v1/outbound/outcome", json=body)
        self.stats.suspensions += sum(r["status"] == "fired" for r in result["rules"])


def provider_line(sinks: Sinks, stats: ForwardStats) -> tuple[bool, list[str]]:
    """The summary's line for the provider: the most sessions its sinks saw at once beside
    the cap, and whether everything forwarded agrees."""
    agree = (
        sinks.most <= PROVIDER_CAP
        and sinks.refused == 0
        and stats.sink_refused == 0
        and stats.failed == 0
        and stats.delivered == sinks.messages == stats.queued
    )
    verdict = "OK" if agree else "FAIL"
    return agree, [
        f"provider {PROVIDER}: at most {sinks.most} concurrent sessions at its sinks, cap "
        f"{PROVIDER_CAP} (cluster_max_outbound_connections): {verdict}",
        f"  forwarded {stats.delivered:,} of {stats.queued:,} accepted messages to "
        f"{len(DESTINATIONS)} domains on {len(MX_HOSTS)} MX hosts; {sinks.refused} refused "
        f"by the sinks (421); {stats.cap_waits:,} waits on a cap, {stats.spilled:,} "
        f"spilled to a sibling MX, {stats.obtm_waits:,} OBTM waits, {stats.failed} failed",
        f"  shaping: {sinks.deferred} deferred by the sinks (451 4.7.500 Server busy above "
        f"{sinks.rate}/s), {stats.deferred} reported and retried; rule bigmail_busy "
        f"suspended provider:{PROVIDER} {stats.suspensions} "
        f"time{'' if stats.suspensions == 1 else 's'}, {stats.shaped_waits:,} OBTM waits on it",
    ]
