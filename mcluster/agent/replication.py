"""The replication core: a node's outboxes, their shards and views, and every change to them.

One ``Replication`` per node owns the outboxes (one per replicated object, one per shard
of a sharded object), the registry entries the node publishes (``managed``), this node's
view in each object, and the run loop of each outbox. The node's user verbs (``record``,
``flush``, ``count``) read it; a re-sync (``agent/resync.py``) and a config reload
(``agent/reload.py``) change it only through its methods, so no other module writes its
state.

The node's hot path (``Node.record``) holds the ``outboxes`` and ``shards`` dicts
themselves: they are created here once and only ever changed in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis

from mcluster.agent import reaper
from mcluster.agent.outbox import Outbox
from mcluster.config import ClusterConfig
from mcluster.objects import shards, views
from mcluster.objects.kinds import Kind, kind_for_type
from mcluster.store import members
from mcluster.store.jobs import Job
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts

__all__ = ["Replication"]

log = logging.getLogger("mcluster.agent")

#: Starts a task the node owns (it is cancelled when the node stops or crashes).
Spawn = Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]


class Replication:
    """The outboxes of one node and this node's views of their objects."""

    def __init__(
        self,
        keys: ClusterKeys,
        name: str,
        scripts: Callable[[], Scripts],
        spawn: Spawn,
        on_stale: Callable[[], None],
        max_buffered: int,
    ) -> None:
        self.keys = keys
        self.name = name
        self._scripts = scripts
        self._spawn = spawn
        self._on_stale = on_stale
        self._max_buffered = max_buffered
        #: Object (or shard ``obj#k``) -> its outbox.
        self.outboxes: dict[str, Outbox] = {}
        #: Sharded objects -> the outbox of shard k at index k (index 0: the object's own).
        self.shards: dict[str, list[Outbox]] = {}
        self._managed: dict[str, str] = {}  # what the object registry lists for this node
        self._runs: dict[str, asyncio.Task[None]] = {}  # outbox name -> its run loop

    @property
    def scripts(self) -> Scripts:
        return self._scripts()

    @property
    def client(self) -> Redis:
        return self.scripts.client

    @property
    def managed(self) -> dict[str, str]:
        """Object -> type, as published in the object registry (a copy)."""
        return dict(self._managed)

    # -- building -----------------------------------------------------------------------

    def add_outbox(
        self, name: str, kind: Kind, max_pending: int, max_delay: float, shard: int = 0
    ) -> Outbox:
        okeys, box_name = self.keys.object(name, shard), shards.box_name(name, shard)
        box = Outbox(box_name, kind, okeys, "", max_pending, max_delay,
                     max_buffered=self._max_buffered)  # fmt: skip
        box.on_stale = self._on_stale
        self.outboxes[box_name] = box
        return box

    def manage(self, name: str, type_: str) -> None:
        """List ``name`` in the object registry (an object without an outbox of its own:
        a throttle table, a family of OBTM/OBTC throttles)."""
        self._managed[name] = type_

    def build(self, config: ClusterConfig) -> None:
        """The outboxes of the config's replicated objects (sharded ones: one per shard)."""
        for obj in config.objects:
            kind = kind_for_type(obj.type)
            if kind is None:
                log.info("object %s: type %s is not replicated by this release", obj.name, obj.type)
                continue
            self._managed[obj.name] = obj.type
            self.add_outbox(obj.name, kind, obj.max_pending, obj.max_delay)
            if obj.shards > 1:  # gauge tables and CIDR trees (checked by the config)
                self.shards[obj.name] = [self.outboxes[obj.name]] + [
                    self.add_outbox(obj.name, kind, obj.max_pending, obj.max_delay, shard=k)
                    for k in range(1, obj.shards)
                ]

    async def register_views(self, member: members.Member) -> None:
        """A fresh view of every object for ``member`` (its lease is taken)."""
        client = self.client
        counts = {name: len(boxes) for name, boxes in self.shards.items()}
        for problem in await shards.layout_conflicts(client, self.keys, self.name, counts,
                                                      self._managed):  # fmt: skip
            log.error("%s: give every node the same shards (docs/architecture.md)", problem)
        await views.publish_objects(client, self.keys, self._managed, counts)
        for box in self.outboxes.values():
            await client.hset(box.keys.views, member.private_name, self.name)
            box.view, box.seq, box.acked = member.private_name, 0, 0
        log.info("joined as %s with %d objects", member.private_name, len(self.outboxes))

    def start(self) -> None:
        """Start every outbox's run loop (after the first join)."""
        for box in self.outboxes.values():
            self._run(box)

    def _run(self, box: Outbox) -> None:
        self._runs[box.name] = self._spawn(box.run(self.scripts), f"outbox:{box.name}")

    # -- changes while running (a reload, a gauge cache defined at run time) --------------

    async def add_object(
        self,
        name: str,
        type_: str,
        kind: Kind,
        max_pending: int,
        max_delay: float,
        member: members.Member,
    ) -> Outbox:
        """An object managed from now on: its outbox, its registry entry, this node's view."""
        box = self.outboxes.get(name)
        if box is not None:
            return box
        box = self.add_outbox(name, kind, max_pending, max_delay)
        self._managed[name] = type_
        await views.publish_objects(self.client, self.keys, {name: type_})
        await self.client.hset(box.keys.views, member.private_name, self.name)
        box.view = member.private_name
        self._run(box)
        return box

    def retune(self, name: str, max_delay: float, max_pending: int) -> None:
        """New ``max_delay``/``max_pending`` from the next batch; nothing pending is lost."""
        box = self.outboxes[name]
        box.max_delay, box.max_pending = max_delay, max_pending
        box.wake.set()  # the run loop takes the new max_delay from now

    async def remove_object(self, name: str) -> None:
        """Stop recording ``name`` (and its shards) and drain this node's views of it."""
        for part in self.shard_names(name):
            await self._remove_box(part)
        self.shards.pop(name, None)

    async def _remove_box(self, name: str) -> None:
        box = self.outboxes.pop(name)  # record() now refuses it as an unknown object
        self._managed.pop(name, None)
        box.stopping = True
        box.wake.set()
        run = self._runs.pop(name, None)
        if run is not None:
            await asyncio.wait([run], timeout=5.0)
            run.cancel()
        async with box.lock:
            await self.drain_own(box)
        with contextlib.suppress(Exception):
            if "#" not in name and not await self.client.hlen(box.keys.views):
                await self.client.hdel(self.keys.objects, name)
        log.info("object %s removed from the config: this node's view drained", name)

    async def drain_own(self, box: Outbox, job: Job | None = None) -> None:
        """Take this node's view of one object out of the cluster (refuse, then drain)."""
        scripts = self.scripts
        await reaper.retire(scripts, box.keys, box.view, self.name)
        await reaper.drain(scripts, self.keys, box.kind, box.keys, box.view, self.name, job)

    def shipments(self) -> list[Coroutine[Any, Any, None]]:
        """One ``ship`` per outbox: awaited together, everything recorded so far is applied
        (a ``StaleView`` from one of them: the node must re-sync first)."""
        scripts = self.scripts
        return [box.ship(scripts) for box in self.outboxes.values()]

    # -- lookups --------------------------------------------------------------------------

    def shard_names(self, obj: str) -> list[str]:
        """The outbox names of an object: its own, then its shards' (``obj#k``) if split."""
        return [obj] + [box.name for box in self.shards.get(obj, [])[1:]]

    def shard_box(self, obj: str, packed: bytes) -> Outbox:
        """The outbox of the shard holding ``packed`` (the object's own for one shard)."""
        parts = self.shards.get(obj)
        if parts is None:
            return self.outboxes[obj]
        return parts[shards.shard_of(packed, len(parts), parts[0].kind.name)]
