"""The node runtime: one MTA node's agent inside a Python process.

    async with mcluster.Node(config, name="relay-0-1", redis_url=url) as node:
        node.record("inbound_cidr", "10.0.0.180", +1)   # O(1), no network
        await node.flush()                               # applied in Redis
        await node.count("inbound_cidr", "10.0.0.0/24", view="global")

Joining takes a fresh epoch and registers this node's views; leaving cleanly drains the
node's contribution out of every global view and unregisters them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis

from mcluster import __version__
from mcluster.agent.outbox import BATCH_LIMIT, Outbox
from mcluster.config import ClusterConfig, load_config
from mcluster.objects import views
from mcluster.objects.kinds import kind_for_type
from mcluster.store import members
from mcluster.store.keys import GLOBAL, ClusterKeys, check_name
from mcluster.store.scripts import Scripts
from mcluster.store.urls import make_async_client, resolve_redis_url

log = logging.getLogger("mcluster.agent")


class UnknownObject(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class Node:
    """A cluster member that records events and ships them as exactly-once batches."""

    def __init__(
        self,
        config: ClusterConfig | str | os.PathLike[str],
        name: str,
        redis_url: str | None = None,
        *,
        namespace: str | None = None,
        address: str | None = None,
        client: Redis | None = None,
    ) -> None:
        self.config = config if isinstance(config, ClusterConfig) else load_config(Path(config))
        self.name = check_name("node", name)
        ns = namespace or str(self.config.options.get("namespace", "mc"))
        self.keys = ClusterKeys(ns)
        self.address = address
        self._redis_url = redis_url
        self._client = client
        self.member: members.Member | None = None
        self.outboxes: dict[str, Outbox] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle -------------------------------------------------------------------

    @property
    def client(self) -> Redis:
        if self._client is None:
            self._client = make_async_client(resolve_redis_url(self._redis_url))
        return self._client

    @property
    def private_name(self) -> str:
        if self.member is None:
            raise RuntimeError("the node has not joined yet")
        return self.member.private_name

    async def start(self) -> None:
        """Join: take a new epoch, publish the objects, register this node's views."""
        client = self.client
        epoch = await members.new_epoch(client, self.keys)
        member = members.new_member(self.name, epoch, os.getpid(), __version__, self.address)
        scripts = Scripts(client)
        managed: dict[str, str] = {}
        for obj in self.config.objects:
            kind = kind_for_type(obj.type)
            if kind is None:
                log.info("object %s: type %s is not replicated by this release", obj.name, obj.type)
                continue
            okeys = self.keys.object(obj.name)
            await client.hset(okeys.views, member.private_name, self.name)
            managed[obj.name] = obj.type
            self.outboxes[obj.name] = Outbox(
                obj.name, kind, okeys, member.private_name, obj.max_pending, obj.max_delay
            )
        await views.publish_objects(client, self.keys, managed)
        await members.join(client, self.keys, member)
        self.member = member
        self._tasks = [asyncio.create_task(box.run(scripts)) for box in self.outboxes.values()]
        log.info("joined as %s with %d objects", member.private_name, len(self.outboxes))

    async def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Leave: ship what is pending, take this node's counts out of the global views.

        If Redis does not answer within ``timeout`` seconds the node leaves anyway and
        logs it; its contribution then stays until it is reaped.
        """
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.member is not None:
            try:
                await asyncio.wait_for(self._leave(self.member, drain), timeout)
                log.info("left the cluster as %s", self.member.private_name)
            except TimeoutError:
                log.error("could not flush and leave within %.0f s; leaving anyway", timeout)
            self.member = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _leave(self, member: members.Member, drain: bool) -> None:
        await self.flush()
        if drain:
            for box in self.outboxes.values():
                await self._drain(box)
        await members.leave(self.client, self.keys, member)

    async def _drain(self, box: Outbox) -> None:
        """Set every count of this node's view to zero in chunks, then unregister it."""
        scripts = Scripts(self.client)
        async with box.lock:
            previous: dict[bytes, int] = {}
            while True:
                chunk: dict[bytes, int] = {}
                async for key in box.kind.leaves(self.client, box.keys, box.view):
                    chunk[key] = 0
                    if len(chunk) >= BATCH_LIMIT:
                        break
                if not chunk:
                    break
                if chunk == previous:
                    raise RuntimeError(f"{box.name}: draining view {box.view} makes no progress")
                await box.send(scripts, chunk, "s")
                previous = chunk
            await scripts.run(
                "view_close", [box.keys.views, box.keys.seq, box.keys.meta(box.view)], [box.view]
            )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- the hot path ----------------------------------------------------------------

    def outbox(self, obj: str) -> Outbox:
        box = self.outboxes.get(obj)
        if box is None:
            known = ", ".join(sorted(self.outboxes)) or "none"
            raise UnknownObject(f"unknown object {obj!r}; this node records: {known}")
        return box

    def record(self, obj: str, key: str, delta: int = 1) -> None:
        """Count ``delta`` on ``key`` of object ``obj``: O(1), in memory, no network."""
        box = self.outboxes.get(obj) or self.outbox(obj)
        if type(delta) is not int:
            raise TypeError(f"delta must be an integer, got {delta!r}")
        box.add(box.known.get(key) or box.admit(key), delta)

    async def flush(self) -> None:
        """Return once everything recorded before this call is applied in Redis."""
        scripts = Scripts(self.client)
        await asyncio.gather(*(box.ship(scripts) for box in self.outboxes.values()))

    # -- reads ------------------------------------------------------------------------

    def _configured(self) -> list[tuple[str, str]]:
        return [(o.name, o.type) for o in self.config.objects]

    def _view_node(self, view: str) -> str | None:
        return None if view in ("global", GLOBAL) else view

    async def objects(self) -> list[views.ObjectInfo]:
        """The objects of the cluster (``cluster shared list``)."""
        return await views.list_objects(self.client, self.keys, self._configured())

    async def count(self, obj: str, key: str, view: str = "global") -> int:
        """Exact count of a key or prefix in the global view or a node's view."""
        return await views.count(
            self.client, self.keys, obj, key, self._view_node(view), self._configured()
        )

    async def show(
        self, obj: str, view: str = "global", limit: int | None = views.DEFAULT_LIMIT
    ) -> views.Listing:
        """The rows of one view, as ``cluster shared show`` prints them."""
        return await views.show(
            self.client, self.keys, obj, self._view_node(view), limit, self._configured()
        )

    def stats(self) -> dict[str, Any]:
        return {name: vars(box.stats) | {"seq": box.seq} for name, box in self.outboxes.items()}
