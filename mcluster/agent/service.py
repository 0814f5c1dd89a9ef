"""The ``Service`` protocol: a feature the node runs beside its replication.

A service is started just before the node joins (so that, say, a snapshot cache holds
every live pair by the time the node is a member), stopped when the node stops (its tasks
cancelled, before it leaves), and told when the node rejoined with a new epoch (a re-sync
or ``cluster reset``). It receives a ``ServiceContext``: the few things a feature may use
(the Redis client and scripts, the cluster's keys, the node's name, its membership and
config, and a way to start tasks the node owns), never the whole ``Node``. The manager's
``add_service`` and dramatiq's middleware are the models.

    class LogShipping:                       # mcluster/logs/shipper.py: copy it
        name = "logs"
        def __init__(self, ctx: ServiceContext, ...) -> None: ...
        async def start(self) -> None: self.ctx.spawn(self.run(), self.name)
        async def stop(self) -> None: ...
        def on_rejoin(self) -> None: ...
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from mcluster.config import ClusterConfig
from mcluster.store import members
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts

__all__ = ["Service", "ServiceContext"]


class Service(Protocol):
    """A feature the node starts before joining, stops before leaving, tells of rejoins."""

    name: str

    async def start(self) -> None:
        """Begin (just before the join): load state, start tasks through ``ctx.spawn``."""
        ...

    async def stop(self) -> None:
        """End: the node's tasks are cancelled already; release what is held."""
        ...

    def on_rejoin(self) -> None:
        """The node rejoined with a new epoch; anything tied to the old one is stale."""
        ...


@dataclass(frozen=True)
class ServiceContext:
    """What a service may use of its node."""

    keys: ClusterKeys
    node: str
    config: Callable[[], ClusterConfig]  # the running config (a reload replaces it)
    scripts: Callable[[], Scripts]
    member: Callable[[], members.Member | None]
    spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]

    @property
    def client(self) -> Redis:
        return self.scripts().client
