"""The node-local replicas of the replicated caches, kept current from each cache's stream.

    hit = await node.caches.get("mycache", "k")   # CacheHit(value, source) or None
    await node.caches.set("mycache", "k", "v", "5M")

A hit is served from process memory (no network). A miss reads through to Redis once
(concurrent misses of one key share that read), then falls to the loader if one is set.
Every change (set, expiry, eviction) reaches every replica through the cache's change
stream; a write stamp on each pair settles the order between a read-through reply and a
change, so a replica never goes back to an older value. A replica that finds a gap in the
stream (it fell behind the stream's length, or Redis lost its data) reloads.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from mcluster.agent.outbox import RETRY_ERRORS, stop_if_cancelled
from mcluster.agent.results import ReadsLikeADict
from mcluster.config import ClusterConfig, ReplicateObject
from mcluster.errors import CacheError, NotFound
from mcluster.objects import cache, cache_registry
from mcluster.objects.cache import CacheKeys
from mcluster.store.keys import ClusterKeys, text
from mcluster.store.scripts import Scripts

log = logging.getLogger("mcluster.caches")
_monotonic = time.monotonic
_NEVER = math.inf

Loader = Callable[[str], "Awaitable[str | None] | str | None"]
#: Keys remembered as absent per cache (a miss that Redis confirmed); cleared when full.
ABSENT_LIMIT = 100_000
#: Staleness samples kept per cache (the most recent).
STALENESS_SAMPLES = 4096
#: Stream entries read per XREAD, and how long one XREAD blocks (ms).
READ_COUNT = 512
BLOCK_MS = 1000


class UnknownCache(NotFound, CacheError):
    """A cache that the config does not define."""


@dataclass(frozen=True)
class CacheHit:
    """A value and where it came from: ``replica``, ``redis`` or ``loader``."""

    value: str
    source: str


@dataclass(slots=True)
class Entry:
    hit: CacheHit  # made once, so a hit allocates nothing
    stamp: int
    deadline: float  # time.monotonic() when it expires; math.inf: never

    @property
    def value(self) -> str:
        return self.hit.value


@dataclass
class ReplicaStats:
    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    loads: int = 0
    sets: int = 0
    changes: int = 0
    expired: int = 0  # removals seen on the stream, whoever's set caused them
    evicted: int = 0
    reloads: int = 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(len(ordered) * q / 100))
    return ordered[min(len(ordered), rank) - 1]


async def clock_offset_ms(scripts: Scripts, samples: int = 5) -> float:
    """Redis time minus local time, in ms, from the quickest of a few ``TIME`` calls."""
    best: tuple[float, float] = (math.inf, 0.0)
    for _ in range(samples):
        start = time.time()
        redis_s, redis_us = await scripts.client.time()
        end = time.time()
        best = min(best, (end - start, (redis_s + redis_us / 1e6 - (start + end) / 2) * 1000))
    return best[1]


@dataclass
class Replica:
    """One cache's pairs on this node, and the follower of its change stream."""

    obj: ReplicateObject
    keys: CacheKeys
    node: str
    entries: dict[str, Entry] = field(default_factory=dict)
    absent: dict[str, int] = field(default_factory=dict)
    last_id: str = "0-0"
    wseq: int = 0
    stats: ReplicaStats = field(default_factory=ReplicaStats)
    staleness_ms: deque[float] = field(default_factory=lambda: deque(maxlen=STALENESS_SAMPLES))
    loader: Loader | None = None
    loader_ttl: int = 0
    inflight: dict[str, asyncio.Future[cache.Pair]] = field(default_factory=dict)
    #: Redis time minus local time (ms), measured when the replica loads.
    clock_offset_ms: float = 0.0

    @property
    def snapshot(self) -> bool:
        return "snapshot" in self.obj.parameters

    # -- applying what is known ------------------------------------------------------

    def put(self, key: str, value: str, stamp: int, ttl_ms: int, age_ms: float = 0.0) -> None:
        """Keep a pair unless the replica holds a newer write of it."""
        old = self.entries.get(key)
        if old is not None and old.stamp > stamp:
            return
        deadline = math.inf if ttl_ms <= 0 else time.monotonic() + (ttl_ms - age_ms) / 1000
        self.entries[key] = Entry(CacheHit(value, "replica"), stamp, deadline)
        self.absent.pop(key, None)

    def remove(self, key: str, stamp: int) -> None:
        """A pair left Redis at write stamp ``stamp`` (expired or evicted)."""
        old = self.entries.get(key)
        if old is not None and old.stamp > stamp:
            return
        self.entries.pop(key, None)
        self.mark_absent(key, stamp)

    def mark_absent(self, key: str, stamp: int) -> None:
        if len(self.absent) >= ABSENT_LIMIT:
            self.absent.clear()
        self.absent[key] = stamp

    def apply(self, entry_id: str, fields: dict[bytes, bytes]) -> bool:
        """Apply one stream entry; False when it shows a gap (the replica must reload)."""
        self.last_id = entry_id
        key = fields[b"k"].decode("utf-8", "surrogatepass")
        stamp = int(fields[b"st"])
        if fields[b"op"] == b"d":
            if fields.get(b"why") == b"evicted":
                self.stats.evicted += 1
            else:
                self.stats.expired += 1
            self.remove(key, stamp)
            return True
        if stamp != self.wseq + 1:
            return False
        self.wseq = stamp
        self.stats.changes += 1
        age = 0.0
        if fields.get(b"o", b"").decode() != self.node:
            age = max(0.0, time.time() * 1000 + self.clock_offset_ms - int(fields[b"at"]))
            self.staleness_ms.append(age)
        value = fields[b"v"].decode("utf-8", "surrogatepass")
        self.put(key, value, stamp, int(fields[b"t"]), age)
        return True

    def lookup(self, key: str) -> tuple[Entry | None, bool]:
        """(the live entry, known absent) from memory only."""
        entry = self.entries.get(key)
        if entry is not None:
            if entry.deadline > time.monotonic():
                return entry, False
            del self.entries[key]
            return None, False
        return None, key in self.absent

    # -- loading ---------------------------------------------------------------------

    async def load(self, scripts: Scripts) -> None:
        """Learn the stream position; with ``snapshot``, read every live pair first."""
        client = scripts.client
        self.clock_offset_ms = await clock_offset_ms(scripts)
        self.entries.clear()
        self.absent.clear()
        self.wseq, self.last_id, _ = await cache.read_pairs(scripts, self.keys, [])
        if not self.snapshot:
            return
        page: list[str] = []
        loaded = 0
        async for raw, _score in client.zscan_iter(self.keys.order, count=cache.READ_PAGE):
            page.append(text(raw))
            if len(page) >= cache.READ_PAGE:
                loaded += await self._load_page(scripts, page)
                page = []
        if page:
            loaded += await self._load_page(scripts, page)
        log.info("cache %s: loaded %d pairs (snapshot)", self.obj.name, loaded)

    async def _load_page(self, scripts: Scripts, page: list[str]) -> int:
        _, _, pairs = await cache.read_pairs(scripts, self.keys, page)
        loaded = 0
        for pair in pairs:
            if pair.value is not None:
                self.put(pair.key, pair.value, pair.stamp, pair.ttl_ms)
                loaded += 1
        return loaded

    async def follow(self, scripts: Scripts) -> None:
        """Apply the change stream forever; reload on a gap or after Redis came back."""
        delay = 0.05
        while True:
            stop_if_cancelled()
            try:
                await self._follow_once(scripts)
                delay = 0.05
                continue
            except RETRY_ERRORS as exc:
                log.warning("cache %s: change stream unreadable (%s); retrying", self.obj.name, exc)
            except Exception:  # a malformed entry, a refused command: never stop following
                log.exception("cache %s: following the change stream failed", self.obj.name)
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)
            await self._reload_if_reset(scripts)

    async def _follow_once(self, scripts: Scripts) -> None:
        """One XREAD (blocking up to ``BLOCK_MS``) and the entries it brought."""
        reply = await scripts.client.xread(
            {self.keys.stream: self.last_id}, count=READ_COUNT, block=BLOCK_MS
        )
        for _stream, entries in cast(list[Any], reply or []):
            for raw_id, fields in entries:
                if not self.apply(text(raw_id), fields):
                    log.warning("cache %s: gap in the change stream; reloading", self.obj.name)
                    await self.reload(scripts)
                    return

    async def reload(self, scripts: Scripts) -> None:
        await self.load(scripts)
        self.stats.reloads += 1

    async def _reload_if_reset(self, scripts: Scripts) -> None:
        try:
            wseq, _, _ = await cache.read_pairs(scripts, self.keys, [])
            if wseq < self.wseq:
                log.warning("cache %s: Redis lost its data; reloading", self.obj.name)
                await self.reload(scripts)
        except RETRY_ERRORS:
            pass  # still away: the next read says so
        except Exception:
            log.exception("cache %s: could not check for lost data", self.obj.name)

    # -- reads through ---------------------------------------------------------------

    async def read_through(self, scripts: Scripts, key: str) -> cache.Pair:
        """One Redis read for a missed key, shared by every caller missing it meanwhile."""
        pending = self.inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[cache.Pair] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        try:
            wseq, _, (pair,) = await cache.read_pairs(scripts, self.keys, [key])
            self.stats.misses += 1
            if pair.value is not None:
                self.put(key, pair.value, pair.stamp, pair.ttl_ms)
            elif key not in self.entries:
                self.mark_absent(key, wseq)
            future.set_result(pair)
            return pair
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            del self.inflight[key]


@dataclass(frozen=True, eq=False)
class CacheReplicaStats(ReadsLikeADict):
    """One replica's figures on this node (``Node.stats()``, ``GET /v1/stats``): its size,
    the staleness of the changes it applied (ms, p50/p99/max of the last samples) and its
    counters (``ReplicaStats``)."""

    replica_size: int
    known_absent: int
    snapshot: bool
    max_size: int
    staleness_samples: int
    staleness_p50: float | None
    staleness_p99: float | None
    staleness_max: float | None
    counters: Mapping[str, int]

    @staticmethod
    def of(replica: Replica) -> CacheReplicaStats:
        samples = list(replica.staleness_ms)
        return CacheReplicaStats(
            len(replica.entries), len(replica.absent), replica.snapshot, replica.obj.max_size,
            len(samples), percentile(samples, 50), percentile(samples, 99),
            max(samples) if samples else None, dict(vars(replica.stats)),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "replica_size": self.replica_size,
            "known_absent": self.known_absent,
            "snapshot": self.snapshot,
            "max_size": self.max_size,
            "staleness_ms": {
                "samples": self.staleness_samples,
                "p50": self.staleness_p50,
                "p99": self.staleness_p99,
                "max": self.staleness_max,
            },
        } | dict(self.counters)


@dataclass(frozen=True, eq=False)
class CacheStats(ReadsLikeADict):
    """``Caches.stats(name)`` (``GET /v1/caches/{cache}``): the cache's figures in Redis
    (size, sets, evicted, expired, wseq) and this node's replica's."""

    cache: str
    redis: Mapping[str, int]
    replica: CacheReplicaStats

    def to_json(self) -> dict[str, Any]:
        return {"cache": self.cache, "redis": dict(self.redis), "replica": self.replica.to_json()}


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the followers of a node and wait (briefly) for them to end; empties the list."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=1.0)
    tasks.clear()


class Caches:
    """Every replicated cache of the config on one node (``Node.caches``); a ``Service``
    (``agent/service.py``) of the node."""

    name = "caches"

    def __init__(
        self,
        config: ClusterConfig,
        keys: ClusterKeys,
        node: str,
        scripts: Callable[[], Scripts],
    ) -> None:
        self._scripts = scripts
        self._keys = keys
        self.replicas = {
            obj.name: Replica(obj, CacheKeys(keys.object(obj.name)), node)
            for obj in config.of_type("cache")
        }
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def names(self) -> list[str]:
        return list(self.replicas)

    def replica(self, name: str) -> Replica:
        found = self.replicas.get(name)
        if found is None:
            known = ", ".join(self.replicas) or "none"
            raise UnknownCache(f"unknown cache {name!r}; caches of this config: {known}")
        return found

    async def start(self) -> None:
        """Load every replica (snapshot caches read all live pairs), then follow."""
        scripts = self._scripts()
        await cache_registry.publish(
            scripts.client, self._keys, [r.obj for r in self.replicas.values()]
        )
        for replica in self.replicas.values():
            await replica.load(scripts)
        self._tasks = [
            asyncio.create_task(r.follow(scripts), name=f"cache:{name}")
            for name, r in self.replicas.items()
        ]

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)

    def on_rejoin(self) -> None:
        """Nothing: the caches are the cluster's, not this node's epoch's."""

    def set_loader(self, name: str, loader: Loader | None, ttl: str | int = 0) -> None:
        """Fill misses of cache ``name`` from ``loader(key)`` (a value, or None for none);
        a loaded value is set cluster-wide with ``ttl``."""
        replica = self.replica(name)
        replica.loader, replica.loader_ttl = loader, cache.parse_ttl(ttl)

    def peek(self, name: str, key: str) -> str | None:
        """The replica's value of ``key``, from memory only (None when not held)."""
        entry, _ = self.replica(name).lookup(key)
        return None if entry is None else entry.value

    async def get(self, name: str, key: str) -> CacheHit | None:
        """The value of ``key``: from the replica, else Redis (once), else the loader."""
        replica = self.replicas.get(name) or self.replica(name)
        entry = replica.entries.get(key)
        if entry is not None and (entry.deadline == _NEVER or entry.deadline > _monotonic()):
            replica.stats.hits += 1  # the hot path: two dict reads, no allocation
            return entry.hit
        entry, absent = replica.lookup(key)
        cache.parse_key(key)
        if not absent:
            pair = await replica.read_through(self._scripts(), key)
            if pair.value is not None:
                return CacheHit(pair.value, "redis")
        else:
            replica.stats.negative_hits += 1
        if replica.loader is None:
            return None
        loaded = replica.loader(key)
        value = await loaded if inspect.isawaitable(loaded) else loaded
        if value is None:
            return None
        replica.stats.loads += 1
        await self.set(name, key, value, replica.loader_ttl)
        return CacheHit(value, "loader")

    async def set(self, name: str, key: str, value: str, ttl: str | int = 0) -> cache.Written:
        """Set ``key`` cluster-wide; ``ttl`` in seconds, ``"5M"``, ``"2H"``, 0 = never."""
        replica = self.replica(name)
        cache.parse_key(key)
        cache.parse_value(value)
        ttl_s = cache.parse_ttl(ttl)
        written = await cache.write_pair(
            self._scripts(), replica.keys, key, value, ttl_s, replica.obj.max_size, replica.node
        )
        replica.stats.sets += 1
        replica.put(key, value, written.stamp, ttl_s * 1000)
        return written

    async def stats(self, name: str) -> CacheStats:
        """This node's replica figures and the cache's figures in Redis (one read)."""
        replica = self.replica(name)
        shared = await cache.meta(self._scripts(), replica.keys)
        return CacheStats(name, shared, CacheReplicaStats.of(replica))
