"""The ``Service`` protocol: a feature the node runs beside its replication.

A service is started just before the node joins (so that, say, a snapshot cache holds
every live pair by the time the node is a member), stopped when the node stops (its tasks
cancelled, before it leaves), and told when the node re-syncs to a new epoch (a lost
lease, lost data, or ``cluster reset``). It receives a ``ServiceContext``: the few things a
feature may use (the Redis client and scripts, the cluster's keys, the node's name, its
membership and config, its outboxes to read, and a way to start tasks the node owns),
never the whole ``Node``. The manager's ``add_service`` and dramatiq's middleware are the
models.

    class LogShipping:                       # mcluster/logs/shipper.py: copy it
        name = "logs"
        def __init__(self, ctx: ServiceContext, ...) -> None: ...
        async def start(self) -> None: self.ctx.spawn(self.run(), self.name)
        async def stop(self) -> None: ...
        def on_rejoin(self) -> None: ...

``start``, ``stop`` and ``on_rejoin`` are the protocol. A service that must act at one
more moment of the node's life defines the optional hook for it; the node calls a hook
only on the services that define it, in the order of ``Node.services`` (``before_stop``
and ``stop``: the reverse order):

=================  ===========================================================  =========
hook               when                                                         used by
=================  ===========================================================  =========
``after_join()``   async; after the first join, once the node is a member        audit,
                   (tasks that speak for a member: shipping, leader work)       shaping,
                                                                                DuraVIP
``before_stop()``  async; first thing of ``Node.stop``, before the node's tasks   DuraVIP,
                   are cancelled (give up now what others should take over)     audit
``before_leave()`` async; while the node leaves, after its last flush and before  throttles
                   its views are drained (hand back what it reserved)
``resyncing()``    an async context manager held while a re-sync moves the node  slots
                   to a new epoch (entered before the outboxes' locks, left
                   after them, before waiting callers hear of the re-sync)
``on_reset(why)``  async; ``cluster reset``: the node is about to leave its old  DuraVIP
                   epoch (before its old views are drained)
``rejoined()``     a re-sync joined with the new epoch (before the state is      DuraVIP
                   published again)
=================  ===========================================================  =========
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis

from mcluster.agent.outbox import Outbox
from mcluster.config import ClusterConfig
from mcluster.objects.kinds import Kind
from mcluster.store import members
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts

__all__ = ["OPTIONAL_HOOKS", "Service", "ServiceContext", "hooks"]

#: The hooks a service may define beyond the protocol (see the table above).
OPTIONAL_HOOKS = ("after_join", "before_stop", "before_leave", "resyncing", "on_reset", "rejoined")


def hooks(services: Iterable[Service], name: str) -> list[Callable[..., Any]]:
    """The optional hook ``name`` of each service that defines it, in ``services`` order."""
    if name not in OPTIONAL_HOOKS:
        raise ValueError(f"{name!r} is not a service hook: {', '.join(OPTIONAL_HOOKS)}")
    return [hook for s in services if (hook := getattr(s, name, None)) is not None]


class Service(Protocol):
    """A feature the node starts before joining, stops before leaving, tells of re-syncs."""

    name: str

    async def start(self) -> None:
        """Begin (just before the join): load state, start tasks through ``ctx.spawn``."""
        ...

    async def stop(self) -> None:
        """End: the node's tasks are cancelled already; release what is held."""
        ...

    def on_rejoin(self) -> None:
        """A re-sync begins: the node rejoins with a new epoch, and anything tied to the
        old one is stale."""
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
    #: Scripts on a client without socket timeout (decisions with deadlines of their own).
    decision_scripts: Callable[[], Scripts]
    is_leader: Callable[[], bool]
    #: The node's outboxes by object (and shard ``obj#k``): to read, never to change.
    outboxes: Mapping[str, Outbox]
    #: ``Node.record``: count ``delta`` on a key of an object, in memory.
    record: Callable[[str, str, int], None]
    #: ``Node.record_each``: ``record`` on each (object, key), skipping unknown objects.
    record_each: Callable[[Iterable[tuple[str, str]], int], None]
    #: ``Replication.add_outbox`` and ``manage``: an object of the service's own, before
    #: the join (``add_outbox(name, kind, max_pending, max_delay)``; ``manage(name, type)``).
    add_outbox: Callable[[str, Kind, int, float], Outbox]
    manage: Callable[[str, str], None]
    heartbeat_interval: float
    lease_ttl: float
    address: str | None = None  # HOST:PORT the node's agent listens on, when it says

    @property
    def client(self) -> Redis:
        return self.scripts().client
