"""The outbox of one object on one node: coalesced deltas and the batches that ship them.

``record`` is O(1) in process memory: a key seen recently maps straight to its packed
form, and its delta is added to a dict. A batch carries (view, seq); the apply script
ignores a seq it has already applied, so a batch retried after a lost reply never counts
twice. One batch per object is in flight at a time, in seq order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from redis.exceptions import ClusterError, ResponseError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mcluster.agent.histogram import LATENCY_BOUNDS, SIZE_BOUNDS, Histogram
from mcluster.errors import Error, StaleReply
from mcluster.objects.kinds import Kind
from mcluster.store.keys import ObjectKeys
from mcluster.store.scripts import Scripts

log = logging.getLogger("mcluster.agent")

#: Most distinct keys in one batch (one EVALSHA, about 1-2 ms in Redis for IPv4), whatever
#: ``max_pending`` says: no single script call blocks Redis for long.
BATCH_LIMIT = 64
#: A snapshot creates every key afresh, which costs more per key: smaller batches.
SNAPSHOT_LIMIT = 32
#: Keys remembered as already validated, per object (cleared when full).
KNOWN_KEYS_LIMIT = 65536
#: Worth a retry: a lost connection or timeout, and the passing states of a Redis Cluster
#: (a slot moving: TRYAGAIN, redirects exhausted; a failover under way: CLUSTERDOWN).
RETRY_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
)
#: Called with the number of keys sent so far, after each batch of a snapshot.
OnChunk = Callable[[int], Awaitable[None]]


def key_cost(key: bytes) -> int:
    """Script work of one key, in IPv4 addresses: an IPv6 address walks 16 levels, not 4."""
    return 4 if len(key) == 16 else 1


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it is set.

    Uses ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` may swallow
    a cancellation that arrives as the wait ends, and a task then never stops.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


def stop_if_cancelled() -> None:
    """Raise CancelledError if the running task was asked to stop. An endless loop checks
    this each turn: on Python 3.11 ``asyncio.wait_for`` swallows a cancel that arrives as
    the awaited call ends, and redis-py writes every command through it (a client with a
    socket timeout), so a follower being cancelled would otherwise read on for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class StaleView(Error):
    """Redis refused a batch: this node's view is not registered (stale epoch)."""


@dataclass
class Stats:
    recorded: int = 0
    applied: int = 0
    batches: int = 0
    repeats: int = 0
    anomalies: int = 0
    retries: int = 0
    dropped: int = 0


@dataclass
class Outbox:
    """Pending deltas of one object and the shipping of them to Redis."""

    name: str
    kind: Kind
    keys: ObjectKeys
    view: str
    max_pending: int
    max_delay: float
    max_buffered: int = 1_000_000
    buffer: dict[bytes, int] = field(default_factory=dict)
    known: dict[str, bytes] = field(default_factory=dict)
    #: This node's absolute counts: everything recorded, clamped at zero batch by batch as
    #: Redis does. Re-published as a snapshot when the node rejoins or Redis lost data.
    state: dict[bytes, int] = field(default_factory=dict)
    seq: int = 0
    acked: int = 0
    on_stale: Callable[[], None] = lambda: None
    stats: Stats = field(default_factory=Stats)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set while the node re-syncs: a batch waiting to be retried is dropped (its deltas
    #: are in ``state``, which the snapshot publishes).
    resyncing: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by ``Node.stop``: the run loop ends after the batch it is sending.
    stopping: bool = False
    #: For ``GET /metrics``: apply latency and keys per batch; when the oldest delta
    #: waiting in the buffer, and the oldest one being shipped, were recorded.
    apply_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BOUNDS))
    batch_keys: Histogram = field(default_factory=lambda: Histogram(SIZE_BOUNDS))
    pending_since: float = 0.0
    shipping_since: float = 0.0
    #: The longest a delta waited from ``record`` to Redis applying it, since the node's
    #: last heartbeat reported it (``take_lag``).
    worst_lag: float = 0.0

    def admit(self, key: str) -> bytes:
        """Validate and pack a key (ValueError says why it is bad), remembering good ones."""
        packed = self.known.get(key)
        if packed is None:
            packed = self.kind.parse_key(key)
            if len(self.known) >= KNOWN_KEYS_LIMIT:
                self.known.clear()
            self.known[key] = packed
        return packed

    def add(self, packed: bytes, delta: int) -> None:
        buffer = self.buffer
        if len(buffer) >= self.max_pending:
            self.wake.set()
            if len(buffer) >= self.max_buffered and packed not in buffer:
                self.drop()
                return
        if not buffer:
            self.pending_since = time.monotonic()
        buffer[packed] = buffer.get(packed, 0) + delta
        self.stats.recorded += 1

    def drop(self) -> None:
        """Redis has been away so long that the buffer is full: count, log, drop."""
        self.stats.dropped += 1
        if self.stats.dropped & (self.stats.dropped - 1) == 0:  # 1, 2, 4, 8, ...
            log.error(
                "%s: %d events dropped: %d distinct keys wait for Redis (max_buffered_keys)",
                self.name, self.stats.dropped, len(self.buffer),
            )  # fmt: skip

    def fold(self, items: Mapping[bytes, int]) -> dict[bytes, int]:
        """Fold pending deltas into ``state``; return the non-zero ones as a batch."""
        state = self.state
        batch = {}
        for key, delta in items.items():
            if delta:
                new = state.get(key, 0) + delta
                if new > 0:
                    state[key] = new
                else:
                    state.pop(key, None)
                batch[key] = delta
        return batch

    async def ship(self, scripts: Scripts) -> None:
        """Send everything buffered now, in batches, retrying until Redis applies each."""
        async with self.lock:
            await self.ship_locked(scripts)

    async def ship_locked(self, scripts: Scripts) -> None:
        items, self.buffer = self.buffer, {}
        self.wake.clear()
        self.shipping_since = self.pending_since if items else 0.0
        try:
            await self.send_all(scripts, self.fold(items), "d")
            if self.shipping_since:
                self.worst_lag = max(self.worst_lag, time.monotonic() - self.shipping_since)
        finally:
            self.shipping_since = 0.0

    def lag(self, now: float) -> float:
        """Seconds the oldest delta not yet applied in Redis has waited (0: none waits)."""
        waiting = [t for t in (self.shipping_since, self.pending_since if self.buffer else 0) if t]
        return max(0.0, now - min(waiting)) if waiting else 0.0

    def take_lag(self, now: float) -> float:
        """The worst lag since the last call (shipped or still waiting), and start anew."""
        worst, self.worst_lag = max(self.worst_lag, self.lag(now)), 0.0
        return worst

    async def snapshot_locked(self, scripts: Scripts, on_chunk: OnChunk | None = None) -> None:
        """Publish the absolute state into a fresh (empty) view: a re-sync.
        ``on_chunk(keys sent so far)`` runs after each batch (a job's progress and abort)."""
        items, self.buffer = self.buffer, {}
        self.fold(items)
        await self.send_all(scripts, self.state, "s", on_chunk)

    async def send_all(
        self,
        scripts: Scripts,
        items: Mapping[bytes, int],
        mode: str,
        on_chunk: OnChunk | None = None,
    ) -> None:
        batch: dict[bytes, int] = {}
        sent = cost = 0
        limit = SNAPSHOT_LIMIT if mode == "s" else BATCH_LIMIT
        for key, value in items.items():
            batch[key] = value
            cost += key_cost(key)
            if cost >= limit:
                await self.send(scripts, batch, mode)
                sent += len(batch)
                batch, cost = {}, 0
                if mode == "s" and sent % (limit * 200) == 0:
                    log.info("%s: re-sync %d/%d keys published", self.name, sent, len(items))
                if on_chunk is not None:
                    await on_chunk(sent)
        if batch:
            await self.send(scripts, batch, mode)

    async def send(
        self, scripts: Scripts, items: Mapping[bytes, int], mode: str, backoff_max: float = 2.0
    ) -> None:
        """One batch under a new seq, retried with backoff until applied (exactly once)."""
        self.seq += 1
        keys, args = self.kind.apply_call(self.keys, self.view, items, self.seq, mode)
        delay = 0.02
        while True:
            started = time.monotonic()
            try:
                applied, anomalies, _ = await scripts.run(self.kind.script, keys, args)
                self.apply_seconds.observe(time.monotonic() - started)
                break
            except RETRY_ERRORS as exc:
                self.stats.retries += 1
                log.warning("%s: batch %d not confirmed (%s); retrying", self.name, self.seq, exc)
                if await wait_event(self.resyncing, delay):
                    raise StaleView(f"batch {self.seq} dropped: the node re-syncs") from exc
                delay = min(backoff_max, delay * 2)
            except StaleReply as exc:
                raise StaleView(str(exc)) from exc
        self.stats.batches += 1
        self.batch_keys.observe(len(items))
        self.acked = self.seq
        if applied:
            self.stats.applied += len(items)
            self.stats.anomalies += int(anomalies)
        else:
            self.stats.repeats += 1

    async def run(self, scripts: Scripts) -> None:
        """Ship when ``max_pending`` keys wait or ``max_delay`` seconds have passed."""
        while not self.stopping:
            await wait_event(self.wake, self.max_delay)
            try:
                await self.ship(scripts)
            except StaleView as exc:
                log.warning("%s: %s; the node re-syncs", self.name, exc)
                self.on_stale()
            except ResponseError as exc:
                log.error("%s: Redis refused a batch: %s", self.name, exc)
