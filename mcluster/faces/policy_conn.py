"""The policy service's connections and its batch of decisions per event-loop turn.

Why not a StreamReader and a coroutine per connection: a py-spy profile of the agent had
its CPU per decision spread over about 15 layers of Python, a third of it the
coroutine, future and timer machinery of each request (the read, the throttle batcher's
future and deadline timer, the task switches). Here a connection is an
``asyncio.Protocol``: ``data_received`` cuts out each whole request and asks the service
for its answer at once (``PolicyService.begin``); a request that needs Redis goes into
the service's ``DecisionBatch``, which sends ONE ``throttle_acquire`` for every
connection's waiting request (``Throttles.acquire_many``) in one task, settles each
decision synchronously (``QuotaEngine.settle``) and writes each connection's answer.

What a connection promises is the same as before: one request at a time and answers in
order (the next request is read only after the answer), the idle and partial-request
timeouts (one timer per connection, re-armed lazily), a client that does not read its
answers is not read either (``pause_writing``), garbage closes the connection, and the
transaction it is in is released when it closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from mcluster.agent.outbox import RETRY_ERRORS
from mcluster.errors import Error
from mcluster.faces.policy import WRITE_BUFFER, Garbage, cut_request
from mcluster.objects import throttle
from mcluster.objects.throttle import Decision, Request
from mcluster.quotas.engine import Limit, Outcome

if TYPE_CHECKING:
    from mcluster.faces.policy import PolicyService, Step

log = logging.getLogger("mcluster.policy")

MAX_BATCH = 256  # requests in one script call (the throttles' own batch size)
# Turns of the event loop a script call waits for more requests to join it. A call has a
# cost of its own in the agent (its plan, packing, reply); under load requests arrive in
# every turn, so two more turns (microseconds when the agent is idle) make fewer, fuller
# calls. 20 clients, every request admitted, interleaved runs: 16.7-17.0k decisions/s and
# p99 1.8 ms after 3 turns, 14.7-15.6k/s and p99 2.4-2.6 ms after 1, 16.3-16.6k/s after 5.
GATHER_TURNS = 3
READ_LIMIT = 1 << 17  # unread bytes buffered while a request waits: then stop reading


class PolicyConnection(asyncio.Protocol):
    """One smtpd process's connection: requests parsed as they arrive, one at a time."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self.buffer = b""
        self.current = ""  # the transaction this smtpd process is in
        self.busy = False  # a request waits for its decision
        self.paused = False  # the client does not read its answers
        self.reading = True
        self.eof = False
        self.closed = False
        idle, partial = service.guard.idle_timeout, service.guard.request_timeout
        self.idle: float | None = idle
        self.partial: float | None = partial
        self._waiting: float | None = None  # since when it waits between requests
        self._idle_timer: asyncio.TimerHandle | None = None
        self._request_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's too
        self.peer = transport.get_extra_info("peername")
        service = self.service
        if not service.admit(self, self.peer, transport):
            self.closed = True
            return
        # smtpd reads each answer before it asks again: more than this unsent is a
        # client that sends without reading (wait for it, as drain() did)
        transport.set_write_buffer_limits(high=WRITE_BUFFER)
        self._pump()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._waiting = None
        self.buffer += data
        if self.busy or self.paused:
            if len(self.buffer) > READ_LIMIT and self.reading and self.transport is not None:
                self.reading = False
                self.transport.pause_reading()
            return
        self._pump()

    def eof_received(self) -> bool:
        self.eof = True
        if not (self.busy or self.paused or self.closed):
            self._pump()
        return True  # keep the transport: an answer may still be on its way

    def pause_writing(self) -> None:
        self.paused = True  # until the client reads its answers, read no more questions
        if self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if not (self.busy or self.closed):
            self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            if not self.busy:  # else when its decision comes (it may open a transaction)
                self._cleanup()

    # -- requests -----------------------------------------------------------------------

    def _pump(self) -> None:
        """Answer every whole request in the buffer, up to one that waits for Redis."""
        service = self.service
        while not (self.busy or self.paused or self.closed):
            buffer = self.buffer
            try:
                attrs, used = cut_request(buffer)
                if attrs is None:
                    self._await_more()
                    return
                self.buffer = buffer[used:]
                if self._request_timer is not None:
                    self._request_timer.cancel()
                    self._request_timer = None
                instance = attrs.get("instance", "")
                if instance != self.current:  # the smtpd process moved on: that one is over
                    service.release(self.current, "next")
                    self.current = instance
                step = service.begin(attrs)
            except Garbage as exc:
                service.stats.garbage += 1
                log.warning("policy client %s sent %s; connection closed", self.peer, exc)
                self.close()
                return
            if isinstance(step, str):
                self._write(step)
                continue
            self.busy = True
            try:
                answer = service.batch.add(self, step)
            except Exception:  # never let a request kill the agent: this connection goes
                log.exception("policy client %s: answering failed; connection closed", self.peer)
                self.busy = False
                self.close()
                return
            if answer is not None:  # decided without Redis (a spent window)
                self.busy = False
                self._write(answer)

    def _await_more(self) -> None:
        """No whole request in the buffer: wait for more, within the timeouts."""
        if not self.reading and self.transport is not None:
            self.reading = True
            self.transport.resume_reading()
        if self.eof:
            if self.buffer:
                self.service.stats.garbage += 1
                why = Garbage("the connection closed in the middle of a request")
                log.warning("policy client %s sent %s; connection closed", self.peer, why)
            self.close()
            return
        loop = asyncio.get_running_loop()
        if self.buffer:  # a request under way: it must arrive whole within ``partial``
            if self.partial is not None and self._request_timer is None:
                self._request_timer = loop.call_later(self.partial, self._request_expired)
        elif self.idle is not None:
            self._waiting = now = loop.time()
            if self._idle_timer is None:  # a timer still armed fires sooner and re-arms
                self._idle_timer = loop.call_at(now + self.idle, self._check_idle)

    def answered(self, action: str) -> None:
        """The decision of the waiting request came: answer it, go on with the next."""
        self.busy = False
        if self.closed:
            self._cleanup()
            return
        self._write(action)
        self._pump()

    def _write(self, action: str) -> None:
        assert self.transport is not None
        self.transport.write(f"action={action}\n\n".encode())

    # -- timeouts and the end -------------------------------------------------------------

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._waiting is None or self.idle is None or self.closed:
            return  # busy with a request: the next wait arms a new timer
        loop = asyncio.get_running_loop()
        due = self._waiting + self.idle
        if loop.time() >= due:
            self._timed_out("idle_timeout", f"nothing for {self.idle:g} s between requests")
        else:
            self._idle_timer = loop.call_at(due, self._check_idle)

    def _request_expired(self) -> None:
        self._request_timer = None
        if not self.closed and self.partial is not None:
            self._timed_out("request_timeout", f"no whole request within {self.partial:g} s")

    def _timed_out(self, reason: str, why: str) -> None:
        self.service.refusals.count("policy", reason)
        log.info("policy client %s: %s; connection closed", self.peer, why)
        self.close()

    def close(self) -> None:
        """Close the connection (what was written is still sent) and release its
        transaction, now or when its waiting request is decided."""
        if self.transport is not None:
            self.transport.close()
        if not self.closed:
            self.closed = True
            if not self.busy:
                self._cleanup()

    def _cleanup(self) -> None:
        for timer in (self._idle_timer, self._request_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._request_timer = None
        self.service.forget(self)  # once: it leaves the service's connections
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class DecisionBatch:
    """The requests waiting for Redis, decided together: one script call for what came
    in ``GATHER_TURNS`` turns of the loop (and, while one is in flight, meanwhile)."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service
        self._queue: list[tuple[PolicyConnection, Step, Request, float]] = []
        self._scheduled = False
        self._inflight = False

    def add(self, conn: PolicyConnection, step: Step) -> str | None:
        """Queue ``step`` for the next script call; its answer at once instead when a
        window it needs is known to be spent (``Throttles.known_refusal``)."""
        service = self.service
        loop = asyncio.get_running_loop()
        until = loop.time() + service.config.deadline_ms / 1000
        request = Request(tuple((limit.window, limit.cost) for limit in step.limits))
        windows = service.windows
        try:
            throttle.check_request(request, windows.defs, windows.max_cost, windows.probes)
        except Error:  # an unknown window or a bad cost: the one-by-one path says which
            self._alone(conn, step, step.limits, until)
            return None
        known = windows.known_refusal(request)
        if known is not None:
            return self._settle(conn, step, known, until)
        self._queue.append((conn, step, request, until))
        if not (self._scheduled or self._inflight):
            self._scheduled = True
            loop.call_soon(self._flush, GATHER_TURNS)
        return None

    def _flush(self, turns: int) -> None:
        if turns > 1:  # let the requests of another turn join (GATHER_TURNS)
            asyncio.get_running_loop().call_soon(self._flush, turns - 1)
            return
        self._scheduled = False
        if self._inflight or not self._queue:
            return
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._inflight = True
        self.service.track(asyncio.ensure_future(self._run(batch)))

    async def _run(self, batch: list[tuple[PolicyConnection, Step, Request, float]]) -> None:
        service = self.service
        decided: list[Decision] | BaseException
        try:
            until = min(item[3] for item in batch)
            decided = await service.windows.acquire_many([item[2] for item in batch], until)
        except (TimeoutError, *RETRY_ERRORS) as exc:
            log.debug("policy decisions degraded (%s)", type(exc).__name__)
            decided = [Decision(False, 0, (), degraded=True)] * len(batch)
        except Exception as exc:  # never let a request kill the connection or the agent
            decided = exc
        finally:
            self._inflight = False
            if self._queue and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush, GATHER_TURNS)
        for i, (conn, step, _, until) in enumerate(batch):
            try:
                if isinstance(decided, BaseException):
                    try:
                        raise decided
                    except Exception:
                        outcome = service.failed(step.address)
                    conn.answered(service.complete(step, outcome))
                    continue
                answer = self._settle(conn, step, decided[i], until)
                if answer is not None:
                    conn.answered(answer)
            except Exception:
                log.exception("policy client %s: answering failed; connection closed", conn.peer)
                conn.busy = False
                conn.close()

    def _settle(
        self, conn: PolicyConnection, step: Step, decision: Decision, until: float
    ) -> str | None:
        """The answer a decision makes of ``step``; None when only recipient or WARN
        windows refused and the rest is asked again on its own (it answers then)."""
        service = self.service
        settled = service.quotas.settle(step.limits, decision)
        if isinstance(settled, Outcome):
            outcome = service.degrade() if settled.degraded else settled
            return service.complete(step, outcome)
        active, recipient, warning = settled
        self._alone(conn, step, active, until, recipient, warning)
        return None

    def _alone(
        self,
        conn: PolicyConnection,
        step: Step,
        limits: list[Limit],
        until: float,
        recipient: str = "",
        warning: str = "",
    ) -> None:
        """Decide one request on its own (a coroutine, as every request once was)."""
        service = self.service

        async def decide() -> None:
            try:
                outcome = await service.limit(limits, step.address, until, recipient, warning)
                conn.answered(service.complete(step, outcome))
            except Exception:
                log.exception("policy client %s: answering failed; connection closed", conn.peer)
                conn.busy = False
                conn.close()

        service.track(asyncio.ensure_future(decide()))
