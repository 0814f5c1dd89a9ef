"""Cluster-wide connection caps: slots taken all-or-nothing, counted in the node's view.

``open`` takes one slot under every cap that applies to a route; ``close`` gives it back.
Both run in ``slot_batch``: a caller that finds no call in flight sends at once, and the
opens and closes that arrive meanwhile go together in the next call (decided in order,
each open all or nothing: exactly as one by one), on a connection of its own
(``ScriptLink``; the node's ``decision_scripts`` client, without socket timeout: each
call has one deadline of its own, ``SOCKET_TIMEOUT``), so 50 concurrent callers cost a
few calls, not 50. Slots are counted in this node's view of the ``outbound_slots``
object (a gauge table), so when the node dies, reaping frees its slots within lease
TTL + 1 s. A slot closed twice, or after its
view was reaped, changes nothing. On a re-sync the node re-opens the slots it still
holds, under its new view, without checking the caps (the connections are open already).

A slot taken also counts its connection in the outbound views (``mcluster/outbound/
views.py``) through ``count``, the node's ``record_each``: +1 when taken, -1 when given
back, once per slot; the views' own re-sync snapshots carry the connections still open.

Decision points (for adaptive shaping, issue 17): ``Node.open_connection`` asks OBTC,
then ``Slots.open`` takes the slot under ``OutboundPolicy.caps(route)`` in one script;
``SlotStats`` counts every outcome by the option that refused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from mcluster.agent import reaper
from mcluster.agent.outbox import RETRY_ERRORS, Outbox
from mcluster.agent.service import ServiceContext
from mcluster.config import ClusterConfig
from mcluster.errors import StaleReply
from mcluster.objects.kinds import GAUGE_TABLE
from mcluster.objects.outbound import Cap, OutboundPolicy, Route
from mcluster.objects.providers import normal_host
from mcluster.outbound.leases import OwnerLeases
from mcluster.outbound.views import Targets
from mcluster.store.connect.urls import SOCKET_TIMEOUT
from mcluster.store.keys import GLOBAL
from mcluster.store.script_link import ScriptLink
from mcluster.store.scripts import Scripts

OBJECT = "outbound_slots"
#: Any of these object types gives a node its connection slots.
SLOT_TYPES = frozenset({"outbound_binding_domains", "outbound_domains", "outbound_cidr"})
MAX_BATCH = 256  # operations in one slot_batch call
# slot_batch calls in flight at once, each on a connection of its own: with one, the
# node's Python and Redis take turns (a pair costs about 27 us of Python, then 23 us of
# Redis); with more, Python packs the next batch while Redis runs the last. Measured with
# 50 callers on one node: 1 lane 18-21k pairs/s, 2 lanes 20-22k, 4 lanes 23-25k.
LANES = 4
# What queued in one turn goes in two calls, not one, once there are 2 * SPLIT_AT
# operations: Redis runs the second half while Python answers the first half's callers
# and packs what they ask next. In one call, 50 callers moved as one wave, Python and
# Redis each idle while the other worked (together 1.1 of the 2 cores): 20-26k pairs/s,
# against 27-32k in two halves (benchmarks/outbound.py, interleaved runs on one node).
SPLIT_AT = 8

#: One operation of ``slot_batch``: kind ("o" open, "f" forced open, "c" close), slot, caps.
Op = tuple[str, str, Sequence[Cap]]


@dataclass(frozen=True)
class SlotDecision:
    """The answer to a connection open: a slot to close later, or why not. ``spill_over``
    names the report's sibling MX hosts that still have room when an MX host's cap
    refused it."""

    allowed: bool
    slot: str | None
    reason: str | None
    spill_over: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"allowed": self.allowed, "slot": self.slot, "reason": self.reason,
                "spill_over": list(self.spill_over)}  # fmt: skip


@dataclass(frozen=True)
class Held:
    """A slot this node holds: the caps it counts under and the views it counts in."""

    caps: list[Cap]
    views: Targets


@dataclass
class SlotStats:
    """Connection opens and closes of this node (``GET /metrics``)."""

    opened: int = 0
    closed: int = 0
    batches: int = 0  # slot_batch calls
    refused: Counter[str] = field(default_factory=Counter)  # by what refused: "OPTION (SCOPE)"


def no_count(views: Targets, delta: int) -> None:
    """``count`` of Slots that counts nowhere (no outbound views)."""


class Slots:
    """The connection slots this node holds."""

    def __init__(
        self,
        scripts: Callable[[], Scripts],
        box: Outbox,
        policy: OutboundPolicy,
        count: Callable[[Targets, int], None] = no_count,
    ):
        self._scripts = scripts
        self.box = box
        self.policy = policy
        self.count = count
        self.stats = SlotStats()
        self.held: dict[str, Held] = {}
        self._inflight = 0  # slot_batch calls on their way (at most LANES)
        self._queue: list[tuple[Op, asyncio.Future[str]]] = []
        self._flush_soon = False  # a send of the queue is due in this turn of the loop
        self._links: list[ScriptLink] = []  # connections of their own not in use now
        self._open_gate = asyncio.Event()  # cleared while a re-sync moves the slots
        self._open_gate.set()
        self._busy = 0  # opens and closes in flight
        self._idle = asyncio.Event()
        self._idle.set()
        self._retries: set[asyncio.Task[None]] = set()
        # Slot ids: a random prefix per Slots and a counter, unique without a uuid4 (an
        # os.urandom call) per open: that was about a tenth of a pair's CPU in a profile.
        self._prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)

    async def _begin(self) -> None:
        """An open or close begins, once no re-sync moves the slots; ``_end`` after it,
        always. (Two calls, not an asynccontextmanager: that was 15 % of a pair's CPU.
        The hot paths call ``_enter`` at once when the gate is open: no coroutine.)"""
        if not self._open_gate.is_set():
            await self._open_gate.wait()
        self._enter()

    def _enter(self) -> None:
        self._busy += 1
        self._idle.clear()

    def _end(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    @contextlib.asynccontextmanager
    async def held_still(self) -> AsyncIterator[None]:
        """While a re-sync moves the slots to a new view: no open or close runs, so every
        slot held is counted once, in the new view, by ``reopen``."""
        self._open_gate.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open_gate.set()

    def _keys(self) -> list[str]:
        k = self.box.keys
        view = self.box.view  # its slot records go with the view when it is drained
        return [reaper.slot_records(k, view), k.views, k.data(GLOBAL), k.data(view),
                k.meta(GLOBAL), k.meta(view)]  # fmt: skip

    async def open(
        self, route: Route, views: Targets = (), extra: Sequence[Cap] = ()
    ) -> SlotDecision:
        """Take a slot under every cap of ``route`` and the ``extra`` ones (shaping's); on
        success count it in ``views``."""
        caps = [*self.policy.caps(route), *extra]
        slot = f"{self._prefix}{next(self._ids):x}"
        if self._open_gate.is_set():
            self._enter()
        else:
            await self._begin()
        try:
            try:
                full = await self._submit(("o", slot, caps))
            except BaseException:  # cancelled, or no answer: Redis may hold the slot anyway
                self._close_soon(slot, self.box.view)
                raise
            if full == "STALE":  # nothing was taken
                raise StaleReply(f"STALE view {self.box.view} is not registered for {OBJECT}")
            allowed = full == ""
            if allowed:
                self.held[slot] = Held(caps, views)
                self.count(views, 1)
        finally:
            self._end()
        if not allowed:
            cap = next(c for c in caps if c.key == full)
            self.stats.refused[cap.source] += 1
            spill = await self._spill_over(route) if cap.per_host and route.mx_hosts else ()
            reason = f"{cap.source}: {cap.key} holds {cap.limit}"
            return SlotDecision(False, None, reason, spill)
        self.stats.opened += 1
        return SlotDecision(True, slot, None)

    async def _spill_over(self, route: Route) -> tuple[str, ...]:
        """The report's other MX hosts under whose every cap a connection would fit now
        (one read; a hint, not a reservation: the open there decides)."""
        me = normal_host(route.host or "")
        siblings = [h for h in dict.fromkeys(route.mx_hosts) if normal_host(h) != me]
        caps = [self.policy.caps(dataclasses.replace(route, host=h)) for h in siblings]
        keys = sorted({c.key for group in caps for c in group})
        if not keys:
            return tuple(siblings)
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT):  # its client has no socket timeout
                counts = await self._scripts().client.hmget(self.box.keys.data(GLOBAL), keys)
        except RETRY_ERRORS:  # the refusal stands; only the hint is lost (TimeoutError too)
            return ()
        used = {k: int(v or 0) for k, v in zip(keys, counts, strict=True)}
        return tuple(h for h, group in zip(siblings, caps, strict=True)
                     if all(used[c.key] < c.limit for c in group))  # fmt: skip

    async def _submit(self, op: Op) -> str:
        """Run one operation in ``slot_batch``: at once when no call is in flight (in the
        caller's task); else, while a lane is free, in one call with the operations of the
        same turn of the event loop; else in the next call, with every operation waiting
        then."""
        if self._inflight:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[str] = loop.create_future()
            self._queue.append((op, future))
            if self._inflight < LANES and not self._flush_soon:
                self._flush_soon = True
                loop.call_soon(self._flush)
            return await future
        self._inflight += 1
        # a task of its own, shielded: a cancelled caller never cuts a call in half (its
        # reply would be left on the connection), and the queue goes on after it
        call = asyncio.ensure_future(self._call([op]))
        call.add_done_callback(self._called)
        return (await asyncio.shield(call))[0]

    def _called(self, _: object) -> None:
        self._inflight -= 1
        self._flush()

    def _flush(self) -> None:
        """Send what queued on the lanes free (in tasks: the callers wait on futures)."""
        self._flush_soon = False
        while self._queue and self._inflight < LANES:
            batch = self._take(LANES - self._inflight - 1)
            self._inflight += 1
            task = asyncio.create_task(self._lane(batch))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    def _take(self, spare: int) -> list[tuple[Op, asyncio.Future[str]]]:
        """The next call's operations: all that queued, or half of it when there is enough
        for two calls (``SPLIT_AT``) and a ``spare`` lane to send the other half."""
        size = MAX_BATCH
        if len(self._queue) >= 2 * SPLIT_AT and spare > 0:
            size = min(MAX_BATCH, -(-len(self._queue) // 2))
        batch = self._queue[:size]
        del self._queue[:size]
        return batch

    async def _lane(self, batch: list[tuple[Op, asyncio.Future[str]]]) -> None:
        """Send ``batch``, answer its callers, and go on with what queued meanwhile, at
        once: a task per call cost each waiting operation a turn of the loop more, and
        (node alone, 50 callers) 3-19 % fewer pairs/s in interleaved runs."""
        try:
            while True:
                try:
                    results = await self._call([op for op, _ in batch])
                except BaseException as exc:  # every caller of the batch sees the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for (_, future), result in zip(batch, results, strict=True):
                        if not future.done():
                            future.set_result(result)
                if not self._queue:
                    return
                batch = self._take(LANES - self._inflight)
                if self._queue:  # the other half: on a lane of its own
                    self._flush()
        finally:
            self._called(None)

    async def _call(self, ops: list[Op]) -> list[str]:
        """One ``slot_batch`` call, on a connection of this object's own when the client
        allows (one call at a time on each: ``ScriptLink``), else through the pool."""
        args: list[str | int] = [self.box.view]
        for kind, slot, caps in ops:
            args += [kind, slot, len(caps)]
            for cap in caps:
                args += [cap.key, cap.limit]
        self.stats.batches += 1
        scripts = self._scripts()
        links = self._links
        while links and links[-1].scripts is not scripts:  # of a client since replaced
            links.pop()
        link = None  # Redis Cluster, Sentinel: through the pool (ScriptLink.usable)
        if links:
            link = links.pop()
        elif ScriptLink.usable(scripts):
            link = ScriptLink(scripts)
        # A deadline of its own, on a client without socket timeout (``decision_scripts``):
        # redis-py wraps each write of a client with one in ``wait_for``, a task per call.
        # Node alone, 50 callers, 5 interleaved runs: 29-43k pairs/s and p99 1.8-2.4 ms,
        # against 28-31k/s and p99 2.6-3.8 ms.
        async with asyncio.timeout(SOCKET_TIMEOUT):
            if link is None:
                reply = await scripts.run("slot_batch", self._keys(), args)
            else:
                try:
                    reply = await link.run("slot_batch", self._keys(), args)
                finally:  # after an error too: the link reconnects at its next call
                    links.append(link)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in reply]

    async def close(self, slot: str) -> bool:
        """Give a slot back; False when there was nothing to give back. When Redis does
        not answer, the error is raised and the close is retried in the background until
        it is done or a re-sync drains the view it was counted in: never a leaked slot."""
        if self._open_gate.is_set():
            self._enter()
        else:
            await self._begin()
        try:
            record = self.held.pop(slot, None)
            held = record is not None
            if record is not None:  # the views count it out now, once, whatever Redis says
                self.stats.closed += 1
                self.count(record.views, -1)
            view = self.box.view
            try:
                done = await self._submit(("c", slot, ()))
            except RETRY_ERRORS:
                if held:
                    self._close_soon(slot, view)
                raise
        finally:
            self._end()
        return done == "1"

    @property
    def closing(self) -> int:
        """Closes (and batches) still running in the background."""
        return len(self._retries)

    def _close_soon(self, slot: str, view: str) -> None:
        """Close ``slot`` in the background until done (a close of a slot Redis never
        took changes nothing), or until a re-sync drains ``view``."""
        task = asyncio.create_task(self._close_later(slot, view))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _close_later(self, slot: str, view: str) -> None:
        delay = 0.05
        while self.box.view == view:  # after a re-sync the old view is drained: done
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
            try:
                await self._begin()
                try:
                    if self.box.view == view:
                        await self._submit(("c", slot, ()))
                finally:
                    self._end()
                return
            except RETRY_ERRORS:
                continue
            except Exception:  # the node stopped (client closed): its views are drained
                return

    async def reopen(self) -> None:
        """After a re-sync (inside ``held_still``): count the slots held under the new view."""
        ops: list[Op] = [("f", slot, record.caps) for slot, record in self.held.items()]
        for start in range(0, len(ops), MAX_BATCH):
            await self._call(ops[start : start + MAX_BATCH])


class ConnectionSlots:
    """The node's connection slots as a ``Service`` (``agent/service.py``): the
    ``outbound_slots`` object (made before the join), and the slots held still while a
    re-sync moves them to the new view. A close forgets the slot's owner lease (the
    node's sweep of expired owners, ``outbound/leases.py``, closes through ``close``)."""

    name = "connections"

    def __init__(self, ctx: ServiceContext, policy: OutboundPolicy, leases: OwnerLeases) -> None:
        self.ctx = ctx
        self.policy = policy
        self.leases = leases
        self.slots: Slots | None = None  # made at start

    @staticmethod
    def wanted(config: ClusterConfig) -> bool:
        return bool({o.type for o in config.objects} & SLOT_TYPES)

    async def start(self) -> None:
        box = self.ctx.add_outbox(OBJECT, GAUGE_TABLE, 100, 1.0)
        self.ctx.manage(OBJECT, "outbound_binding_domains")
        # an open (+1) or close (-1) counts in each of its views; an object a config
        # reload removed since is skipped (its views were drained)
        self.slots = Slots(self.ctx.decision_scripts, box, self.policy, self.ctx.record_each)

    async def close(self, slot: str) -> bool:
        """Give a connection slot back; a second close changes nothing."""
        if self.slots is None:
            return False
        self.leases.drop(slot)
        return await self.slots.close(slot)

    async def stop(self) -> None:
        """Nothing: the slots go with this node's view as it leaves."""

    def on_rejoin(self) -> None:
        """Nothing yet: ``resyncing`` moves the slots once the re-sync holds the node."""

    @contextlib.asynccontextmanager
    async def resyncing(self) -> AsyncIterator[None]:
        """No slot opened or closed while they move; then count those held in the new view."""
        if self.slots is None:
            yield
            return
        async with self.slots.held_still():
            yield
            await self.slots.reopen()
