"""A small real SMTP server (aiosmtpd) beside a node agent: the demo's MTA, and the example
of a Python MTA wired to its agent over the agent's HTTP API.

It records every inbound connection in ``inbound_cidr`` (+1 when admitted, -1 when it
closes), refuses a connection with ``421`` when its client's block (a /24) already holds
``max_connections`` open connections cluster-wide, and defers a message with ``451`` when
the shared named throttle refuses it. What it admitted and refused is counted in memory
(``Tally``) and in the gauge table ``totals`` (when configured), so the figures can be
checked against Redis.

The cap is judged on the replicated view, as Momentum judges ``inbound_cidr``: the
cluster's count for the block is the global view minus this node's shipped share plus
this server's exact count of its own open connections, so only connections opened on
*other* nodes within their ``max_delay`` can be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiosmtpd.smtp import SMTP, Envelope, Session

from mcluster.demo.traffic import figures
from mcluster.errors import Error
from mcluster.security.token import ApiToken

log = logging.getLogger("mcluster.smtp")

CONNECT_REFUSED = "421 4.7.0 Too many connections from your network, try again later"
THROTTLED = "451 4.7.1 Message rate limit reached, try again later"
QUEUED = "250 2.0.0 OK: queued"
AGENT_TIMEOUT = 5.0


@dataclass
class Limits:
    """What the server enforces, cluster-wide, through its agent."""

    prefix: int = 24  # the client block a cap counts (IPv4 prefix length)
    max_connections: int = 8  # open connections per block, cluster-wide
    throttle: str | None = "demo_messages"  # a shared named throttle per message, or None
    rate: str | None = None  # define the throttle with this rate at start ("100/5")
    totals: str | None = None  # a gauge table to count the tally in, or None
    audit: bool = False  # record connect/reception/rejection (needs Replicate "metrics")


@dataclass
class Tally:
    """Exact counts of what this server did."""

    connections: int = 0  # admitted
    refused: int = 0  # refused by the per-block cap (421)
    messages: int = 0  # accepted (250)
    deferred: int = 0  # refused by the throttle (451)
    open: int = 0  # open right now
    agent_errors: int = 0  # calls to the agent that failed (the server then admits)

    def figures(self) -> dict[str, int]:
        return figures(self)


class AgentError(Error):
    """The agent answered with an error status, or not at all."""


class AgentClient:
    """The few calls of the agent's HTTP API the SMTP server makes."""

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession, token: ApiToken | None = None
    ) -> None:
        self.base = base_url.rstrip("/")
        self.session = session
        self.token = token  # the agent's API token (its --api-token-file), if it has one

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            timeout = aiohttp.ClientTimeout(total=AGENT_TIMEOUT)
            for attempt in (1, 2):
                headers = self.token.header() if self.token else None
                async with self.session.request(
                    method, self.base + path, timeout=timeout, headers=headers, **kwargs
                ) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status == 401 and self.token and attempt == 1:
                        self.token.reload()  # the agent may have rotated it (SIGHUP)
                        continue
                    if resp.status >= 400:
                        raise AgentError(f"{method} {path}: HTTP {resp.status}: {body}")
                    return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AgentError(f"{method} {path}: {exc!r}") from exc

    async def node(self) -> str:
        return str((await self.call("GET", "/healthz"))["node"])

    async def record(self, events: list[dict[str, Any]]) -> None:
        await self.call("POST", "/v1/events", json={"events": events})

    async def count(self, obj: str, key: str, view: str = "global") -> int:
        params = {"key": key, "view": view}
        return int((await self.call("GET", f"/v1/objects/{obj}/count", params=params))["count"])

    async def acquire(self, name: str, cost: int = 1) -> bool:
        body = {"limits": [{"name": name, "cost": cost}]}
        return bool((await self.call("POST", "/v1/throttles/acquire", json=body))["allowed"])

    async def define_throttle(self, name: str, rate: str) -> None:
        await self.call("POST", "/v1/throttles", json={"name": name, "rate": rate})

    async def flush(self) -> None:
        await self.call("POST", "/v1/flush")

    async def audit(self, kind: str, ip: str) -> None:
        body = {"events": [{"type": kind, "ip": ip, "count": 1}]}
        await self.call("POST", "/v1/metrics/events", json=body)

    async def inbound_audit(self, cidr: str) -> dict[str, Any]:
        """``{"cidr": ..., "monitors": [{"connections": [...], ...}]}`` for a block."""
        found: dict[str, Any] = await self.call("GET", "/v1/metrics/inbound", params={"cidr": cidr})
        return found


@dataclass
class Gate:
    """The MTA side of the policy: admits connections and messages, records them."""

    agent: AgentClient
    node: str
    limits: Limits
    tally: Tally = field(default_factory=Tally)
    mine: Counter[str] = field(default_factory=Counter)  # open connections by block
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    pending: set[asyncio.Task[None]] = field(default_factory=set)
    #: called for each accepted message (the demo's outbound half forwards it), or None
    forward: Callable[[], None] | None = None

    def block(self, ip: str) -> str:
        addr = ipaddress.ip_address(ip)
        prefix = self.limits.prefix if addr.version == 4 else min(128, self.limits.prefix * 4)
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))

    async def _cluster_open(self, block: str) -> int:
        every = await self.agent.count("inbound_cidr", block)
        shipped = await self.agent.count("inbound_cidr", block, self.node)
        return every - shipped + self.mine[block]

    async def admit(self, ip: str) -> bool:
        """Whether a connection from ``ip`` may proceed; if so it is counted open."""
        block = self.block(ip)
        async with self.locks.setdefault(block, asyncio.Lock()):
            try:
                full = await self._cluster_open(block) >= self.limits.max_connections
            except AgentError as exc:
                log.warning("admitting %s without the cap: %s", ip, exc)
                self.tally.agent_errors += 1
                full = False
            if full:
                self.tally.refused += 1
                self._later(self._count("refused"))
                self._later(self._audit(ip, "connect", "rejection"))
                return False
            self.mine[block] += 1
        self.tally.connections += 1
        self.tally.open += 1
        self._later(self._record([self._event("inbound_cidr", ip, 1), *self._total("connections")]))
        self._later(self._audit(ip, "connect"))
        return True

    def release(self, ip: str) -> None:
        """A connection admitted by ``admit`` closed (callable from a cancelled task)."""
        self.mine[self.block(ip)] -= 1
        self.tally.open -= 1
        self._later(self._record([self._event("inbound_cidr", ip, -1)]))

    async def message(self, ip: str) -> bool:
        """Whether a message from ``ip`` is accepted (the shared throttle has room)."""
        allowed = True
        if self.limits.throttle is not None:
            try:
                allowed = await self.agent.acquire(self.limits.throttle)
            except AgentError as exc:
                log.warning("accepting a message from %s without the throttle: %s", ip, exc)
                self.tally.agent_errors += 1
        key = "messages" if allowed else "deferred"
        setattr(self.tally, key, getattr(self.tally, key) + 1)
        await self._count(key)
        await self._audit(ip, "reception" if allowed else "rejection")
        return allowed

    @staticmethod
    def _event(obj: str, key: str, delta: int) -> dict[str, Any]:
        return {"object": obj, "key": key, "delta": delta}

    def _total(self, key: str) -> list[dict[str, Any]]:
        return [self._event(self.limits.totals, key, 1)] if self.limits.totals else []

    async def _count(self, key: str) -> None:
        if self.limits.totals:
            await self._record(self._total(key))

    async def _audit(self, ip: str, *kinds: str) -> None:
        """Inbound audit metrics (Momentum's connect, reception, rejection) for ``ip``."""
        if not self.limits.audit:
            return
        for kind in kinds:
            try:
                await self.agent.audit(kind, ip)
            except AgentError as exc:
                log.warning("could not record %s of %s: %s", kind, ip, exc)
                self.tally.agent_errors += 1

    async def _record(self, events: list[dict[str, Any]]) -> None:
        try:
            await self.agent.record(events)
        except AgentError as exc:
            log.warning("could not record %d events: %s", len(events), exc)
            self.tally.agent_errors += 1

    def _later(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def settle(self) -> None:
        """Wait until every recording started so far has reached the agent."""
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)


def peer_ip(session: Session) -> str:
    """The client's address of an aiosmtpd session (its peer is (host, port, ...))."""
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


class Handler:
    """aiosmtpd's handler: messages go through the throttle and are then dropped."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not await self.gate.message(peer_ip(session)):
            return THROTTLED
        if self.gate.forward is not None:
            self.gate.forward()
        return QUEUED


class GatedSMTP(SMTP):
    """aiosmtpd's SMTP protocol with the connection cap asked before the greeting."""

    def __init__(self, gate: Gate, server: SmtpServer) -> None:
        super().__init__(Handler(gate), hostname="mcluster-demo", timeout=30)
        self.gate = gate
        self.owner = server

    async def _handle_client(self) -> None:
        assert self.session is not None and self.transport is not None
        ip = peer_ip(self.session)
        if not await self.gate.admit(ip):
            await self.push(CONNECT_REFUSED)
            self.transport.close()
            return
        self.owner.sessions.add(self)
        try:
            await super()._handle_client()
        finally:
            self.owner.sessions.discard(self)
            self.gate.release(ip)


@dataclass
class SmtpServer:
    """One SMTP server listening beside one agent."""

    gate: Gate
    host: str = "127.0.0.1"
    port: int = 0
    server: asyncio.Server | None = None
    sessions: set[GatedSMTP] = field(default_factory=set)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: GatedSMTP(self.gate, self), self.host, self.port
        )
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close every session, and wait for their recordings."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for protocol in list(self.sessions):
            if protocol.transport is not None:
                protocol.transport.close()
        for _ in range(500):  # their handlers run their finally blocks (release) on close
            if not self.sessions:
                break
            await asyncio.sleep(0.01)
        await self.gate.settle()


async def start_server(
    agent_url: str,
    session: aiohttp.ClientSession,
    limits: Limits,
    host: str,
    port: int,
    token: ApiToken | None = None,
) -> SmtpServer:
    """Ask the agent its node name, define the throttle if a rate is given, listen."""
    agent = AgentClient(agent_url, session, token)
    node = await agent.node()
    if limits.throttle and limits.rate:
        await agent.define_throttle(limits.throttle, limits.rate)
    server = SmtpServer(Gate(agent, node, limits), host, port)
    await server.start()
    return server


async def serve(agent_url: str, listen: str, limits: Limits, token: ApiToken | None = None) -> None:
    """``mcluster smtp``: run one server until SIGTERM or SIGINT; ``token``: the agent's
    API token (its ``--api-token-file``)."""
    import signal

    from mcluster.faces.listen import split_listen

    host, port = split_listen(listen)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    async with aiohttp.ClientSession() as session:
        for attempt in range(60):  # the agent may still be joining
            try:
                server = await start_server(agent_url, session, limits, host, port, token)
                break
            except AgentError as exc:
                if attempt == 59:
                    raise
                log.info("waiting for the agent at %s: %s", agent_url, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await stopping.wait()
                if stopping.is_set():
                    return
        log.info("SMTP on %s:%d for node %s", host, server.port, server.gate.node)
        try:
            await stopping.wait()
        finally:
            await server.stop()
