"""Gauge caches on one node (``Node.gauge_caches``): Momentum's ``ec_gauge_cache``.

    await node.gauge_caches.define("senders", maxelems=10000, ttl="1H", replicate=True)
    node.gauge_caches.inc("senders", "alice@example.com")     # O(1), no network
    await node.gauge_caches.get("senders", "alice@example.com")

A local gauge cache lives in this process only. A replicated one records like any other
object (an outbox, exactly-once batches into this node's view and the global view), so
``cluster shared show NAME [from NODE]`` shows it and a dead node's share is reaped; the
apply script notes each entry's last change and drops entries past their ttl and the
oldest beyond maxelems from every view. Keys need not be created: a missing key reads 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from mcluster.agent.caches import cancel_tasks
from mcluster.agent.outbox import RETRY_ERRORS, Outbox, stop_if_cancelled
from mcluster.agent.results import OutboxStats, ReadsLikeADict
from mcluster.agent.service import ServiceContext
from mcluster.errors import CacheError, InvalidType, NotFound
from mcluster.objects import gauge, gauge_cache, views
from mcluster.objects.gauge_cache import GaugeCacheDef
from mcluster.objects.kinds import GAUGE_CACHE, Kind
from mcluster.objects.views import Listing
from mcluster.store.keys import GLOBAL, ObjectKeys, text

log = logging.getLogger("mcluster.gauge_caches")
_ENTRY_FIELDS = {b"view", b"seq", b"mode"}


async def _stream_end(client: Redis, stream: str) -> str:
    """The id of the last entry of a stream ("0-0" when empty): where to follow from."""
    last = await client.xrevrange(stream, count=1)
    return text(cast(bytes, last[0][0])) if last else "0-0"


#: ``Node.add_object``: manage an object defined at run time (its outbox and view).
AddObject = Callable[[str, str, Kind], Awaitable[Outbox]]
#: ``Node.count`` and ``Node.show``: reads of one view of an object.
Count = Callable[[str, str, str], Awaitable[int]]
Show = Callable[[str, str, "int | None"], Awaitable[Listing]]

__all__ = [
    "GaugeCacheError",
    "GaugeCacheStats",
    "GaugeCaches",
    "LocalGaugeCache",
    "UnknownGaugeCache",
]


class UnknownGaugeCache(NotFound, CacheError):
    """A gauge cache this node has not defined."""


class GaugeCacheError(CacheError, ValueError):
    """A definition this node cannot take (replication off, a name in use, a conflict)."""


@dataclass
class LocalGaugeCache:
    """A gauge cache in this process: entries ordered by last change, oldest first."""

    definition: GaugeCacheDef
    entries: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)
    expired: int = 0
    evicted: int = 0
    anomalies: int = 0
    clock: Callable[[], float] = time.monotonic

    def _expire(self) -> None:
        ttl = self.definition.ttl_s
        if not ttl:
            return
        limit = self.clock() - ttl
        entries = self.entries
        while entries:
            key, (_, changed) = next(iter(entries.items()))
            if changed > limit:
                break
            del entries[key]
            self.expired += 1

    def change(self, key: str, delta: int) -> int:
        """Add ``delta`` (clamped at zero, as replicated ones are); returns the new count."""
        self._expire()
        old = self.entries.pop(key, (0, 0.0))[0]
        new = old + delta
        if new < 0:
            self.anomalies += -new
            new = 0
        if new:
            self.entries[key] = (new, self.clock())
        while len(self.entries) > self.definition.maxelems:
            self.entries.popitem(last=False)
            self.evicted += 1
        return new

    def get(self, key: str) -> int:
        self._expire()
        found = self.entries.get(key)
        return found[0] if found else 0

    def listing(self, limit: int | None) -> Listing:
        self._expire()
        rows = gauge.model_rows({k: v for k, (v, _) in self.entries.items()})
        return Listing(
            object=self.definition.name,
            type=gauge_cache.KIND,
            view="local",
            node=None,
            rows=rows if limit is None else rows[:limit],
            total_rows=len(rows),
            distinct_keys=len(rows),
            anomalies=self.anomalies,
        )


@dataclass(frozen=True, eq=False)
class GaugeCacheStats(ReadsLikeADict):
    """One gauge cache's definition and figures: a replicated one's shipping (``shipping``,
    as ``Node.stats()`` has it), a local one's entries, expired, evicted and anomalies."""

    definition: GaugeCacheDef
    shipping: OutboxStats | None = None
    entries: int = 0
    expired: int = 0
    evicted: int = 0
    anomalies: int = 0

    def to_json(self) -> dict[str, Any]:
        if self.definition.replicate:
            shipped = self.shipping.to_json() if self.shipping is not None else {}
            return self.definition.to_json() | shipped
        return self.definition.to_json() | {
            "entries": self.entries,
            "expired": self.expired,
            "evicted": self.evicted,
            "anomalies": self.anomalies,
        }


class GaugeCaches:
    """The gauge caches this node has defined. With replication on (``enabled``), a
    ``Service`` of the node (``agent/service.py``): stopping it ends the followers of the
    replicated ones' change streams."""

    name = "gauge_caches"

    def __init__(
        self, ctx: ServiceContext, add_object: AddObject, count: Count, show: Show
    ) -> None:
        self.ctx = ctx
        self._add_object = add_object
        self._count = count
        self._show = show
        self.enabled = any(
            gauge_cache.TYPE in obj.parameters for obj in ctx.config().of_type("metrics")
        )
        self.defs: dict[str, GaugeCacheDef] = {}
        self.local: dict[str, LocalGaugeCache] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Nothing: gauge caches are defined at run time, after the join."""

    def on_rejoin(self) -> None:
        """Nothing: a replicated one's outbox re-syncs with the node's others."""

    async def define(
        self, name: str, maxelems: int, ttl: str | int = 0, replicate: bool = False
    ) -> bool:
        """Define (or redefine the limits of) a gauge cache; True if it is new here."""
        definition = gauge_cache.make_def(name, maxelems, ttl, replicate)
        old = self.defs.get(name)
        if old is not None and old.replicate != replicate:
            raise GaugeCacheError(
                f"gauge cache {name!r} is already defined with replicate={old.replicate}"
            )
        if replicate:
            if not self.enabled:
                raise GaugeCacheError(
                    "replicated gauge caches need gauge cache replication: add "
                    'Replicate "metrics" { parameters = "gauge_cache" } to the cluster scope'
                )
            ctx = self.ctx
            if old is None and (name in ctx.outboxes or name in ctx.config().names):
                raise GaugeCacheError(f"{name!r} already names another replicated object")
            box = await self._add_object(name, gauge_cache.TYPE, GAUGE_CACHE)
            await gauge_cache.define(ctx.scripts(), box.keys, definition)
            if old is None:
                start = await _stream_end(ctx.client, box.keys.stream)
                follower = self.follow_drops(box, start)
                self._tasks.append(asyncio.create_task(follower, name=f"drops:{name}"))
        elif old is not None:
            self.local[name].definition = definition
        else:
            self.local[name] = LocalGaugeCache(definition)
        self.defs[name] = definition
        return old is None

    async def follow_drops(self, box: Outbox, last_id: str) -> None:
        """Forget the entries Redis dropped (ttl, maxelems) from this node's absolute counts,
        so a re-sync does not bring them back. (An entry this node changes in the very
        moment it is dropped may lose that change from its counts: a rare race.)"""
        client = self.ctx.client
        while True:
            stop_if_cancelled()
            try:
                reply = await client.xread({box.keys.stream: last_id}, count=512, block=1000)
            except RETRY_ERRORS as exc:
                log.warning("gauge cache %s: change stream unreadable (%s)", box.name, exc)
                await asyncio.sleep(0.5)
                continue
            except Exception:  # never stop following
                log.exception("gauge cache %s: following the change stream failed", box.name)
                await asyncio.sleep(0.5)
                continue
            for _stream, entries in cast(list[Any], reply or []):
                for raw_id, fields in entries:
                    last_id = text(raw_id)
                    if fields.get(b"mode") == b"x":
                        for key in fields.keys() - _ENTRY_FIELDS:
                            box.state.pop(key, None)

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)

    def _def(self, name: str) -> GaugeCacheDef:
        found = self.defs.get(name)
        if found is None:
            known = ", ".join(sorted(self.defs)) or "none"
            raise UnknownGaugeCache(f"unknown gauge cache {name!r}; defined here: {known}")
        return found

    def inc(self, name: str, key: str, by: int = 1) -> None:
        """Count ``by`` up on ``key`` (created if missing): O(1), in memory."""
        if type(by) is not int:
            raise InvalidType(f"by must be an integer, got {by!r}")
        definition = self._def(name)
        if definition.replicate:
            self.ctx.record(name, key, by)
        else:
            gauge.parse_key(key)
            self.local[name].change(key, by)

    def dec(self, name: str, key: str, by: int = 1) -> None:
        """Count ``by`` down on ``key`` (never below zero)."""
        if type(by) is not int:
            raise InvalidType(f"by must be an integer, got {by!r}")
        self.inc(name, key, -by)

    async def get(self, name: str, key: str, view: str = "global") -> int:
        """The count of ``key``: cluster-wide (``global``), or one node's share (a node
        name); a local gauge cache has one view. A missing or expired key reads 0."""
        definition = self._def(name)
        packed = gauge.parse_key(key)
        if not definition.replicate:
            return self.local[name].get(key)
        if view in ("global", GLOBAL):
            box = self.ctx.outboxes[name]
            return await gauge_cache.read(self.ctx.scripts(), box.keys, packed)
        return await self._count(name, key, view)

    async def show(
        self, name: str, view: str = "global", limit: int | None = views.DEFAULT_LIMIT
    ) -> Listing:
        """The entries of one view (as ``cluster shared show NAME [from NODE]``)."""
        if not self._def(name).replicate:
            return self.local[name].listing(limit)
        return await self._show(name, view, limit)

    def definitions(self) -> list[GaugeCacheDef]:
        """Every gauge cache defined here, by name."""
        return [d for _, d in sorted(self.defs.items())]

    def stats(self, name: str) -> GaugeCacheStats:
        """The figures of one gauge cache (``UnknownGaugeCache`` when not defined here)."""
        definition = self._def(name)
        if definition.replicate:
            box = self.ctx.outboxes.get(name)
            return GaugeCacheStats(definition, OutboxStats.of(box) if box is not None else None)
        local = self.local[name]
        return GaugeCacheStats(definition, None, len(local.entries), local.expired,
                               local.evicted, local.anomalies)  # fmt: skip

    async def maintain(self) -> list[tuple[Kind, ObjectKeys]]:
        """Run by the leader: purge every replicated gauge cache of the cluster (so entries
        expire when nothing is written) and return those this node does not hold, to be
        reaped with its own objects."""
        ctx = self.ctx
        registry = cast(dict[bytes, bytes], await ctx.client.hgetall(ctx.keys.objects))
        others: list[tuple[Kind, ObjectKeys]] = []
        for raw_name, raw in registry.items():
            if json.loads(raw).get("type") != gauge_cache.TYPE:
                continue
            okeys = ctx.keys.object(text(raw_name))
            await gauge_cache.purge(ctx.scripts(), okeys)
            if okeys.name not in ctx.outboxes:
                others.append((GAUGE_CACHE, okeys))
        return others
