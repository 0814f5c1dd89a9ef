"""The HTTP API's guard: the bearer token and the bounds on every request and connection.

Two layers, because aiohttp offers no header read timeout and no connection cap:

* ``GuardedProtocol`` wraps each connection's aiohttp protocol. It refuses a connection
  past ``max_connections`` (a 503 and close, before aiohttp sees a byte), and closes one
  whose request headers do not arrive whole within ``header_timeout`` of their first byte
  (slowloris) or that stays idle longer than ``idle_timeout``.
* ``HttpGuard.middleware`` runs first for every request: the token (401 before the body
  is read), then the body, read whole within ``body_timeout`` and at most ``max_body``
  bytes (408 / 413), so a handler only ever sees a complete, bounded body.

A handler that takes a batch calls ``check_batch`` (413 past ``max_events``) before it
applies anything. Every
refusal is counted in ``Refusals`` (``mcluster_refusals_total{face="http"}``) and answers
JSON ``{"error": ...}``; a refused request is never applied in part, because nothing is
handed to a handler before every check passed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from aiohttp import web

from mcluster.security.errors import GuardError
from mcluster.security.refusals import Refusals
from mcluster.security.token import ApiToken

log = logging.getLogger("mcluster.security")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MIB = 1024 * 1024
#: Seconds a refused client gets to read its answer before the connection is closed.
LINGER = 1.0
#: Routes anyone may read: the orchestrator's liveness probe carries no secret.
PUBLIC = frozenset({("GET", "/healthz"), ("HEAD", "/healthz")})


@dataclass(frozen=True)
class HttpLimits:
    """The bounds on the HTTP API (``mcluster agent --api-...`` flags)."""

    max_body: int = 8 * MIB  # bytes of one request body
    max_events: int = 100_000  # events (or entries) in one batch
    header_timeout: float = 10.0  # seconds from a request's first byte to its last header
    body_timeout: float = 30.0  # seconds to receive a whole body
    idle_timeout: float = 75.0  # seconds a kept-alive connection may wait for a request
    max_connections: int = 256  # connections open at once

    def __post_init__(self) -> None:
        for name in ("max_body", "max_events", "max_connections"):
            if getattr(self, name) < 1:
                raise GuardError(f"--api-{name.replace('_', '-')} must be at least 1")
        for name in ("header_timeout", "body_timeout", "idle_timeout"):
            if not 0 < getattr(self, name) < float("inf"):
                raise GuardError(f"--api-{name.replace('_', '-')} must be a positive number")


def _refusal(status: int, message: str, **headers: str) -> web.Response:
    resp = web.json_response({"error": message}, status=status, headers=headers or None)
    resp.force_close()  # the rest of what this client sends is not read
    return resp


@dataclass
class HttpGuard:
    """The token (None: no authentication, loopback only) and the limits of one agent."""

    token: ApiToken | None = None
    limits: HttpLimits = field(default_factory=HttpLimits)
    refusals: Refusals = field(default_factory=Refusals)
    metrics_public: bool = False
    _connections: dict[asyncio.BaseProtocol, GuardedProtocol] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.refusals.count("http", reason)

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._connections)

    def admit(self, conn: GuardedProtocol) -> bool:
        """Count ``conn`` in (``open``, until ``forget``), or refuse it (counted) when
        ``max_connections`` are open."""
        if self.open >= self.limits.max_connections:
            self.refuse("connections")
            return False
        self._connections[conn.inner] = conn
        return True

    def forget(self, conn: GuardedProtocol) -> None:
        """An admitted ``conn`` closed."""
        self._connections.pop(conn.inner, None)

    def check_batch(self, count: int, what: str = "events") -> None:
        """Refuse (413, counted) a batch of more than ``max_events`` entries; a handler
        calls it before applying anything."""
        most = self.limits.max_events
        if count > most:
            self.refuse("too_many_events")
            raise web.HTTPRequestEntityTooLarge(
                max_size=most,
                actual_size=count,
                reason=f"too many {what} in one request: {count} > {most} (--api-max-events)",
            )

    def _public(self, request: web.Request) -> bool:
        if (request.method, request.path) in PUBLIC:
            return True
        return (
            self.metrics_public
            and request.method in ("GET", "HEAD")
            and (request.path == "/metrics")
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = self._connections.get(request.protocol)
        if conn is not None:
            conn.request_started()
        refused = True  # an exception, too: the connection is not kept for more
        try:
            resp, refused = await self._guarded(request, handler)
            return resp
        finally:
            if conn is not None:
                conn.request_done(refused)

    async def _guarded(
        self, request: web.Request, handler: Handler
    ) -> tuple[web.StreamResponse, bool]:
        """The handler's response, or a refusal; and whether it was refused."""
        token = self.token
        if (
            token
            and not self._public(request)
            and not token.matches(request.headers.get("Authorization"))
        ):
            self.refuse("unauthorized")
            return _refusal(
                401,
                "missing or wrong API token: send Authorization: Bearer <token> "
                "(the contents of the agent's --api-token-file)",
                **{"WWW-Authenticate": 'Bearer realm="mcluster"'},
            ), True
        limit = self.limits.max_body
        too_large = f"request body is larger than the limit of {limit} bytes"
        if request.content_length is not None and request.content_length > limit:
            self.refuse("body_too_large")
            return _refusal(413, too_large), True
        if request.body_exists:
            try:
                async with asyncio.timeout(self.limits.body_timeout):
                    await request.read()  # kept by aiohttp: handlers read it from memory
            except web.HTTPRequestEntityTooLarge:
                self.refuse("body_too_large")
                return _refusal(
                    413, f"request body is larger than the limit of {limit} bytes"
                ), True
            except TimeoutError:
                self.refuse("body_timeout")
                seconds = self.limits.body_timeout
                return _refusal(408, f"the request body did not arrive within {seconds:g} s"), True
        return await handler(request), False

    # -- connections --------------------------------------------------------------------

    def protocol(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` wrapping aiohttp's."""
        return lambda: GuardedProtocol(self, inner())

    async def serve(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> asyncio.Server:
        """Listen on ``host:port`` for ``runner``'s app (set up), behind this guard."""
        server = runner.server
        assert server is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            self.protocol(server), host, port, ssl=ssl_context, backlog=128
        )


GUARD_KEY = web.AppKey("guard", HttpGuard)


def check_batch(request: web.Request, count: int, what: str = "events") -> None:
    """Refuse (413) a batch of more than the app's ``max_events`` entries."""
    request.app[GUARD_KEY].check_batch(count, what)


BUSY = json.dumps({"error": "too many connections to the agent's API; try again"}).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(BUSY), BUSY)
)


class GuardedProtocol(asyncio.Protocol):
    """One HTTP connection: aiohttp's protocol inside, the cap and the timers around it."""

    def __init__(self, guard: HttpGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.in_request = False
        self.partial = False  # bytes of a request arrived, its handler has not started
        self.closing = False  # a request was refused: no more from this connection
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's TCPTransport is not an asyncio.Transport
        self.transport = transport = cast(asyncio.Transport, transport)
        guard = self.guard
        if not guard.admit(self):
            transport.write(BUSY_RESPONSE)
            transport.close()
            return
        self.admitted = True
        self._arm(guard.limits.idle_timeout)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self.guard.forget(self)
        self._disarm()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if not self.in_request and not self.partial:
            self.partial = True
            self._arm(self.guard.limits.header_timeout)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- called by the middleware --------------------------------------------------------

    def request_started(self) -> None:
        self.in_request = True
        self.partial = False
        self._disarm()

    def request_done(self, refused: bool) -> None:
        """After a refusal the connection gets ``LINGER`` seconds for the client to read the
        answer (aiohttp would otherwise read out what is left of its body for 10 s)."""
        self.in_request = False
        self.closing = self.closing or refused
        self._arm(LINGER if self.closing else self.guard.limits.idle_timeout)

    # -- the timer -----------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.in_request or self.transport is None:
            return
        if self.partial and not self.closing:  # headers never finished: slowloris
            self.guard.refuse("header_timeout")
            peer = self.transport.get_extra_info("peername")
            log.debug("HTTP client %s: headers not complete in time; closed", peer)
            self.transport.abort()
        else:  # idle on a kept-alive connection, or refused: closed quietly
            self.transport.close()
