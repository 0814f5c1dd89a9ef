"""Cluster-wide named throttles on a node: batched exact decisions with a deadline.

A caller that finds no call in flight sends at once, in its own task, its request and
those of the callers that became ready in the same turn of the event loop.
Concurrent ``acquire`` calls wait at most one round trip together: the worker sends every
request pending at that moment in one ``throttle_acquire`` call (each request is still
decided all-or-nothing, in order). When Redis does not answer within the throttle's
deadline (default 50 ms) the decision follows its ``on_error`` policy (``allow`` or
``deny``), says ``degraded``, and is counted. A request abandoned that way may still be
counted by Redis later: the error is on the side of counting too much, never too little.

A window that has just refused is remembered for at most ``SPENT_FOR`` (``Spent``): the
client that asks again and again after its limit (the runaway script quotas are for) is
refused in process, without a round trip, by ``known_refusal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcluster.agent.outbox import RETRY_ERRORS
from mcluster.agent.service import ServiceContext
from mcluster.config import ClusterConfig
from mcluster.errors import ThrottleError
from mcluster.objects import throttle
from mcluster.objects.throttle import Decision, Request, ThrottleDef
from mcluster.store.connect.urls import SOCKET_TIMEOUT
from mcluster.store.keys import ClusterKeys
from mcluster.store.script_link import ScriptLink
from mcluster.store.scripts import Scripts

log = logging.getLogger("mcluster.throttles")

MAX_BATCH = 256
STUCK_AFTER = SOCKET_TIMEOUT  # a batch call unanswered this long is given up
# How long a refusal is repeated in process at most: what a change in Redis meanwhile (a
# ``policy reset``, a failover that lost counts) can cost is refusals for this long more.
SPENT_FOR = 0.1
clock = time.monotonic  # of the spent windows (a test may turn it)
MAX_SPENT = 10_000  # windows remembered as spent; then the dict starts again


@dataclass
class ThrottleStats:
    decisions: int = 0
    allowed: int = 0
    batches: int = 0
    degraded_allow: int = 0
    degraded_deny: int = 0
    local_decisions: int = 0
    spent_refusals: int = 0  # refused in process by ``known_refusal``
    spent_probes: int = 0  # probes renewing a spent window (in ``decisions`` too)
    reservations: int = 0
    returned: int = 0


@dataclass
class Reservation:
    """Tokens of one throttle this node may spend without asking Redis, until ``expires``
    (the end of the bucket they were counted in, by this node's monotonic clock)."""

    tokens: int = 0
    bucket: int = -1
    expires: float = 0.0
    spent: int = 0
    full_until: float = 0.0  # the budget was exhausted: deny locally until then
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class Spent:
    """A window that refused ``need`` (and had ``left``): until ``retry_at`` it refuses
    any cost of ``need`` or more, for its counts leave only then and other nodes only add.
    Times are ``clock()`` from when the deciding call was sent, so never later than
    Redis meant; ``until`` is ``retry_at`` capped at ``SPENT_FOR`` s. Used in its second
    half, the entry is renewed in the background (``probing``: a probe that counts
    nothing asks whether ``need`` fits) while the requests go on being answered from it,
    so a window refused again and again never sends its clients to Redis, and a window
    with room again (a reset, its counts gone) is forgotten by the probe's answer."""

    need: int
    left: int
    until: float
    retry_at: float
    probing: bool = False


def _expire(future: asyncio.Future[Decision]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class Throttles:
    """The named throttles as one node sees them: definitions and batched decisions."""

    def __init__(
        self,
        scripts: Callable[[], Scripts],
        keys: ClusterKeys,
        family: str = throttle.OBJECT,
        node: str = "",
    ) -> None:
        self._scripts = scripts
        self.node = node  # whose share of the windows this counts in
        self.okeys = keys.object(family)
        self.defs: dict[str, ThrottleDef] = {}
        # The policy service counts bytes (costs up to a limit's N) and probes (negative
        # costs, see throttle_acquire.lua); the HTTP API keeps the defaults.
        self.max_cost = throttle.MAX_COST
        self.probes = False
        self.stats = ThrottleStats()
        self._pending: list[tuple[Request, asyncio.Future[Decision]]] = []
        self._quota: dict[str, Reservation] = {}
        self._spent: dict[str, Spent] = {}  # see known_refusal
        self._spent_defs: object = None  # the definitions they were refused under
        self._renewing: set[asyncio.Task[list[Decision]]] = set()  # see _renew
        self._worker: asyncio.Task[None] | None = None
        self._busy = False  # a throttle_acquire call is in flight
        self._crowd = True  # callers came together lately (batches of more than one)
        self._link: ScriptLink | None = None
        self._inflight: tuple[asyncio.Task[Any], float] | None = None  # see _within
        self._watchdog: asyncio.TimerHandle | None = None
        self._expired: asyncio.Task[Any] | None = None

    async def load(self, declared: Iterable[ThrottleDef] = ()) -> None:
        for tdef in declared:
            await self.create(tdef)
        self.defs.update(await throttle.load_defs(self._scripts().client, self.okeys))

    async def create(self, tdef: ThrottleDef) -> bool:
        """Create a named throttle (idempotent); ThrottleConflict if the rate differs."""
        created = await throttle.define(self._scripts(), self.okeys, tdef)
        if not created:
            self.defs.update(await throttle.load_defs(self._scripts().client, self.okeys))
        else:
            self.defs[tdef.name] = tdef
        return created

    async def _run_batch(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a decision script: on this family's own connection when the client allows
        (one call in flight at a time, see ``_busy``), else through the pool."""
        scripts = self._scripts()
        if self._link is None or self._link.scripts is not scripts:
            self._link = ScriptLink(scripts) if ScriptLink.usable(scripts) else None
        if self._link is None:
            return await scripts.run(script, keys, args)
        return await self._link.run(script, keys, args)

    async def _known(self, names: Iterable[str]) -> None:
        missing = [n for n in names if n not in self.defs]
        if missing:  # perhaps created by another node since
            self.defs.update(await throttle.load_defs(self._scripts().client, self.okeys))

    async def acquire(
        self, limits: Sequence[tuple[str, int]], *, force: bool = False, until: float = 0.0
    ) -> Decision:
        """Count ``cost`` on every named throttle if all have room, else none. ``until``
        (event loop time), when given, is a deadline sooner than the throttles' own: the
        caller's, for an answer made of several decisions (the policy service's)."""
        if len(limits) == 1 and not force:  # local quota: decided in process when it can
            name, cost = limits[0]
            res = self._quota.get(name)
            if res is not None and throttle.valid_cost(cost):
                decision = self._spend(name, res, cost)
                if decision is not None:
                    return decision
        request = Request(tuple(limits), force)
        await self._known(n for n, _ in request.limits)
        throttle.check_request(request, self.defs, self.max_cost, self.probes)
        known = self.known_refusal(request)
        if known is not None:
            return known
        if len(request.limits) == 1 and not force:
            tdef = self.defs[request.limits[0][0]]
            if tdef.mode == "local_quota":
                return await self._local(tdef, request.limits[0][1])
        return await self._decide(request, until)

    async def _local(self, tdef: ThrottleDef, cost: int) -> Decision:
        """Reserve a share of the budget (epsilon of what is left), then spend it locally."""
        res = self._quota.setdefault(tdef.name, Reservation())
        async with res.lock:
            decision = self._spend(tdef.name, res, cost)
            if decision is not None:
                return decision
            rate = tdef.parsed
            want = max(cost, min(rate.count, max(16, 2 * res.spent)))
            sent = time.monotonic()
            try:
                async with asyncio.timeout(tdef.deadline_ms / 1000):
                    grant, left_ms, bucket, _ = await self._scripts().run(
                        "throttle_reserve",
                        self._windows(tdef.name),
                        [rate.count, rate.period_ms, rate.bucket_ms, want, tdef.epsilon],
                    )
            except (TimeoutError, *RETRY_ERRORS):
                return self._degraded(Request(((tdef.name, cost),)), [tdef])
            self.stats.reservations += 1
            await self._give_back(tdef.name, res)
            res.tokens, res.bucket, res.spent = int(grant), int(bucket), 0
            res.expires = sent + int(left_ms) / 1000
            if res.tokens >= cost and (spent := self._spend(tdef.name, res, cost)) is not None:
                return spent
        decision = await self._decide(Request(((tdef.name, cost),)))  # full: the exact answer
        if not decision.allowed and decision.retry_after_ms > 0:
            res.full_until = time.monotonic() + decision.retry_after_ms / 1000
        return decision

    def _spend(self, name: str, res: Reservation, cost: int) -> Decision | None:
        """A local decision from the reservation, or None when Redis must be asked."""
        now = time.monotonic()
        if res.tokens >= cost and now < res.expires:
            res.tokens -= cost  # decided in process, no network
            res.spent += cost
            self.stats.local_decisions += 1
            return Decision(True, 0, ((name, res.tokens),))
        if now < res.full_until:  # denying is always safe
            self.stats.local_decisions += 1
            return Decision(False, max(1, int((res.full_until - now) * 1000)), ((name, 0),))
        return None

    def _windows(self, name: str) -> list[str]:
        return [
            throttle.window_key(self.okeys, name),
            throttle.window_key(self.okeys, name, self.node),
        ]

    async def _give_back(self, name: str, res: Reservation) -> None:
        """Hand back what an earlier reservation did not spend."""
        if res.tokens > 0 and res.bucket >= 0:
            back = await self._scripts().run(
                "throttle_return", self._windows(name), [res.bucket, res.tokens]
            )
            self.stats.returned += int(back)
            res.tokens = 0

    def forget_reservations(self) -> None:
        """Drop every local reservation without handing it back (on a re-sync: the Redis
        that counted them may have lost them, so spending them could over-admit)."""
        for res in self._quota.values():
            res.tokens, res.bucket, res.full_until = 0, -1, 0.0
        self._spent.clear()

    async def release(self) -> None:
        """Hand back every unspent reservation (when the node leaves)."""
        for name, res in self._quota.items():
            async with res.lock:
                await self._give_back(name, res)

    def _degraded(self, request: Request, tdefs: Sequence[ThrottleDef]) -> Decision:
        allow = all(t.on_error == "allow" for t in tdefs)
        if allow:
            self.stats.degraded_allow += 1
        else:
            self.stats.degraded_deny += 1
        return Decision(allow, 0, tuple((n, -1) for n, _ in request.limits), degraded=True)

    async def acquire_bucket(self, tdef: ThrottleDef, cost: int = 1) -> Decision:
        """Count on a bucket defined by the config (OBTM, OBTC)."""
        return await self.acquire_buckets([tdef], cost)

    async def acquire_buckets(self, tdefs: Sequence[ThrottleDef], cost: int = 1) -> Decision:
        """Count ``cost`` on every bucket if all have room, else none (one decision): the
        config's buckets, and those shaping adds (adaptive, warm-up, a rate action's)."""
        for tdef in tdefs:
            if self.defs.get(tdef.name) != tdef:  # first use, or its rate changed
                self.defs[tdef.name] = tdef
                with contextlib.suppress(*RETRY_ERRORS):  # so the console can list it
                    await self._scripts().client.hset(
                        throttle.defs_key(self.okeys), tdef.name, tdef.model_dump_json()
                    )
        return await self._decide(Request(tuple((t.name, cost) for t in tdefs)))

    async def _decide(self, request: Request, until: float = 0.0) -> Decision:
        tdefs = [self.defs[n] for n, _ in request.limits]
        deadline = max(t.deadline_ms for t in tdefs) / 1000
        if until:
            deadline = min(deadline, until - asyncio.get_running_loop().time())
            if deadline <= 0:  # the caller's time is up: no call that would be too late
                return self._degraded(request, tdefs)
        if self._busy:  # a call is in flight: wait for it, then go in the next batch
            decision = await self._queued(request, deadline)
        else:  # nothing in flight: this caller sends at once, no task or future
            decision = await self._alone(request, deadline)
        if decision is None:
            return self._degraded(request, tdefs)
        self.stats.decisions += 1
        self.stats.allowed += decision.allowed
        return decision

    async def acquire_many(self, requests: Sequence[Request], until: float) -> list[Decision]:
        """Decide ``requests`` (each all-or-nothing, in order) in one ``throttle_acquire``
        call that ends by ``until`` (event loop time; after it every one is degraded): the
        policy service's batch of one loop turn, with no coroutine, future or timer per
        request. The caller has checked them (``throttle.check_request``, exact mode)."""
        deadline = until - asyncio.get_running_loop().time()
        if deadline > 0 and self._busy:  # a call is in flight: each waits its turn
            sent, defs = clock(), self.defs
            queued = list(await asyncio.gather(*(self._decide(r, until) for r in requests)))
            self._note_spent(requests, queued, sent, defs)
            return queued
        decided: list[Decision] | None = None
        if deadline > 0:
            self._busy = True
            try:
                defs = self.defs
                keys, args = throttle.plan(self.okeys, requests, defs, self.node)
                sent = clock()
                call = self._run_batch("throttle_acquire", keys, args)
                decided = throttle.decisions(requests, await self._within(deadline, call))
                self._note_spent(requests, decided, sent, defs)
            except (TimeoutError, *RETRY_ERRORS) as exc:
                log.debug("throttle decisions degraded (%s)", type(exc).__name__)
            finally:
                self._busy = False
                if self._pending:
                    self._start_worker()
        if decided is None:
            return [self._degraded(r, [self.defs[n] for n, _ in r.limits]) for r in requests]
        self.stats.batches += 1
        self.stats.decisions += len(decided)
        self.stats.allowed += sum(d.allowed for d in decided)
        return decided

    def known_refusal(self, request: Request) -> Decision | None:
        """The refusal of ``request`` when one of its windows refused as much or more
        within ``SPENT_FOR`` s (see ``Spent``), decided in process and counting nothing;
        None when Redis must be asked. A request is all or nothing, so one spent window
        refuses it. New definitions (a reload) forget every spent window."""
        spent = self._spent
        if not spent or request.force:
            return None
        if self._spent_defs is not self.defs:
            spent.clear()
            return None
        now = 0.0
        for name, cost in request.limits:
            entry = spent.get(name)
            if entry is None or abs(cost) < entry.need:
                continue
            now = now or clock()
            if now < entry.until:
                if not entry.probing and now >= entry.until - SPENT_FOR / 2:
                    entry.probing = True
                    self._renew(name, entry.need)
                self.stats.spent_refusals += 1
                retry = max(1, math.ceil((entry.retry_at - now) * 1000))
                return Decision(False, retry, ((name, entry.left),))
            del spent[name]
        return None

    def _renew(self, name: str, need: int) -> None:
        """Ask Redis in the background whether spent window ``name`` has room for
        ``need``, counting nothing (a probe: a negative cost, see throttle_acquire.lua):
        refused, its entry is renewed; room, it is forgotten (``_note_spent``)."""
        loop = asyncio.get_running_loop()
        probe = Request(((name, -need),))
        task = loop.create_task(self.acquire_many([probe], loop.time() + SPENT_FOR / 2))
        self.stats.spent_probes += 1
        self._renewing.add(task)
        task.add_done_callback(self._renewed)

    def cancel_renewals(self) -> None:
        """Stop the probes in flight (the service that asked is stopping)."""
        for task in list(self._renewing):
            task.cancel()

    def _renewed(self, task: asyncio.Task[list[Decision]]) -> None:
        self._renewing.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the entry just ends
            log.debug("renewing a spent window failed: %r", task.exception())

    def _note_spent(
        self,
        requests: Sequence[Request],
        decided: Sequence[Decision],
        sent: float,
        defs: object,
    ) -> None:
        """Remember the window of each refusal that one window alone made (with two,
        the reply does not say which retry time is whose), for ``known_refusal``; forget
        the windows of each admission (a probe found room: see ``Spent``). Decisions
        made under definitions that a reload has replaced since are not remembered."""
        if defs is not self.defs or (not self._spent and all(d.allowed for d in decided)):
            return
        for request, decision in zip(requests, decided, strict=True):
            if decision.allowed:
                for name, _ in request.limits:
                    self._spent.pop(name, None)
                continue
            if decision.retry_after_ms <= 0 or request.force:
                continue
            refusing = [  # a probe (negative cost) needs as much room as a count
                (name, abs(cost), left)
                for (name, cost), (_, left) in zip(request.limits, decision.remaining, strict=True)
                if left < abs(cost) and self.defs[name].parsed.count > 0
            ]
            if len(refusing) != 1 or len({n for n, _ in request.limits}) < len(request.limits):
                continue
            name, need, left = refusing[0]
            if self._spent_defs is not self.defs or len(self._spent) >= MAX_SPENT:
                self._spent.clear()
                self._spent_defs = self.defs
            retry_at = sent + decision.retry_after_ms / 1000
            self._spent[name] = Spent(need, left, min(retry_at, sent + SPENT_FOR), retry_at)

    async def _alone(self, request: Request, deadline: float) -> Decision | None:
        """Send at once, in the caller's task, with the requests of callers that became
        ready in the same turn of the event loop (so concurrent callers still batch)."""
        self._busy = True
        batch: list[tuple[Request, asyncio.Future[Decision]]] = []
        try:
            if self._crowd:  # let the callers that become ready in this turn join
                await asyncio.sleep(0)
            batch, self._pending = self._pending[: MAX_BATCH - 1], self._pending[MAX_BATCH - 1 :]
            requests = [request, *(r for r, _ in batch)]
            if batch:
                script = "throttle_acquire"
                keys, args = throttle.plan(self.okeys, requests, self.defs, self.node)
            else:
                script, keys, args = throttle.plan_one(self.okeys, request, self.defs, self.node)
            reply = await self._within(deadline, self._run_batch(script, keys, args))
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else TimeoutError())
            if isinstance(exc, (TimeoutError, *RETRY_ERRORS)):
                log.debug("throttle decision degraded (%s)", type(exc).__name__)
                return None
            raise
        finally:
            self._busy = False
            if self._pending:
                self._start_worker()
        self.stats.batches += 1
        self._crowd = len(requests) > 1 or bool(self._pending)
        decided = throttle.decisions(requests, reply)
        for (_, future), decision in zip(batch, decided[1:], strict=True):
            if not future.done():
                future.set_result(decision)
        return decided[0]

    async def _within(self, deadline: float, call: Awaitable[Any]) -> Any:
        """Await ``call`` (the one in flight: ``_alone``'s or the worker's, never both, see
        ``_busy``) for at most ``deadline`` s; TimeoutError after.

        One watchdog timer per family, re-armed only when it fires while a call is still
        in flight, instead of a timer per call: ``asyncio.timeout`` costs about 5 us, a
        third of a lone decision's Python."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        due = loop.time() + deadline
        self._inflight = (task, due)
        if self._watchdog is None or due < self._watchdog.when():
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watchdog = loop.call_at(due, self._check_deadline)
        try:
            return await call
        except asyncio.CancelledError:
            if self._expired is task:  # our deadline, not someone cancelling the caller
                self._expired = None
                task.uncancel()
                raise TimeoutError from None
            raise
        finally:
            self._inflight = None

    def _check_deadline(self) -> None:
        self._watchdog = None
        if self._inflight is None:
            return
        task, due = self._inflight
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self._expired = task
            task.cancel()  # lands in _within's await: the call is still in flight
        else:
            self._watchdog = loop.call_at(due, self._check_deadline)

    async def _queued(self, request: Request, deadline: float) -> Decision | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        self._pending.append((request, future))
        # A plain timer, not wait_for + shield: no extra task per decision.
        timer = loop.call_later(deadline, _expire, future)
        try:
            return await future
        except (TimeoutError, *RETRY_ERRORS) as exc:
            log.debug("throttle decision degraded (%s)", type(exc).__name__)
            return None
        finally:
            timer.cancel()

    def _start_worker(self) -> None:
        self._busy = True
        self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                requests = [r for r, _ in batch]
                keys, args = throttle.plan(self.okeys, requests, self.defs, self.node)
                try:
                    # the decision client has no socket timeout: never wait forever
                    call = self._run_batch("throttle_acquire", keys, args)
                    reply = await self._within(STUCK_AFTER, call)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.stats.batches += 1
                self._crowd = True
                for (_, future), decision in zip(
                    batch, throttle.decisions(requests, reply), strict=True
                ):
                    if not future.done():
                        future.set_result(decision)
        finally:
            self._busy = False

    # -- Momentum's verbs --------------------------------------------------------------

    async def inc(self, name: str, cost: int = 1) -> None:
        """Count ``cost`` events, blocking nothing (``ec_shared_throttle_inc``)."""
        await self.acquire([(name, cost)], force=True)

    async def check(self, name: str) -> bool:
        """True when the throttle is over its quota now (``ec_shared_throttle_check``)."""
        await self._known([name])
        throttle.check_request(Request(((name, 1),)), self.defs)
        decision = await self._decide(Request(((name, 0),), force=True))
        return decision.remaining[0][1] < 0 if not decision.degraded else False

    async def tarpit(self, name: str, timeout: float = 30.0) -> bool:
        """Wait until one more event is allowed, then count it; False at the deadline."""
        end = time.monotonic() + timeout
        while True:
            decision = await self.acquire([(name, 1)])
            if decision.allowed:
                return True
            wait = decision.retry_after_ms / 1000 if decision.retry_after_ms > 0 else 0.05
            if decision.retry_after_ms < 0 or time.monotonic() + wait > end:
                return False
            await asyncio.sleep(wait)


#: The throttle families of outbound decisions (``objects/outbound.py``), each a table.
FAMILIES = ("OBTM", "OBTC")


class ThrottleService:
    """The node's throttle tables as a ``Service`` (``agent/service.py``): the named
    ``shared_named_throttles`` table and the OBTM/OBTC families. Each is listed in the
    object registry and made at start (the named ones defined from the config); a re-sync
    drops the local reservations, and leaving hands back what is unspent."""

    name = "throttles"

    def __init__(self, ctx: ServiceContext, obtm: bool = False) -> None:
        self.ctx = ctx
        self.obtm = obtm  # shaping decides OBTM even when the config has no OBTM object
        #: The ``shared_named_throttles`` table, None until started or when not configured.
        self.named: Throttles | None = None
        self.families: dict[str, Throttles] = {}  # OBTM, OBTC: those configured

    @staticmethod
    def wanted(config: ClusterConfig, obtm: bool = False) -> bool:
        """Whether the config (or shaping, ``obtm``) has any throttle table for a node."""
        types = {o.type for o in config.objects}
        return obtm or bool(types & {*FAMILIES, throttle.OBJECT})

    async def start(self) -> None:
        ctx = self.ctx
        config = ctx.config()
        types = {o.type for o in config.objects}
        for family in FAMILIES:
            if family in types or (family == "OBTM" and self.obtm):
                self.families[family] = Throttles(ctx.decision_scripts, ctx.keys, family, ctx.node)
                ctx.manage(family, family)
        if throttle.OBJECT in types:
            ctx.manage(throttle.OBJECT, throttle.OBJECT)
            self.named = Throttles(ctx.decision_scripts, ctx.keys, throttle.OBJECT, ctx.node)
            await self.named.load(throttle.config_throttles(config))

    async def stop(self) -> None:
        """Nothing: what is reserved goes back as the node leaves (``before_leave``)."""

    def _tables(self) -> list[Throttles]:
        return [t for t in (self.named, *self.families.values()) if t is not None]

    def on_rejoin(self) -> None:
        """Local reservations are dropped: the Redis that counted them may have lost them."""
        for table in self._tables():
            table.forget_reservations()

    async def before_leave(self) -> None:
        """Hand back every unspent reservation (after the node's last flush)."""
        for table in self._tables():
            await table.release()

    def by_family(self) -> dict[str, Throttles]:
        """The tables this node decides on, by family (``Node.throttle_families``)."""
        tables = dict(self.families)
        if self.named is not None:
            tables[throttle.OBJECT] = self.named
        return tables


__all__ = ["Decision", "ThrottleError", "ThrottleService", "Throttles"]
