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
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from redis.asyncio import Redis

from mcluster.agent import membership, reload, resync, slots
from mcluster.agent.audit_recorder import AuditRecorder, AuditStats
from mcluster.agent.caches import CacheReplicaStats, Caches
from mcluster.agent.gauge_caches import GaugeCaches
from mcluster.agent.lifecycle import Keeper
from mcluster.agent.outbox import RETRY_ERRORS, Outbox, StaleView
from mcluster.agent.replication import Replication
from mcluster.agent.results import NodeStats, OutboxStats, ReloadResult, ResetResult
from mcluster.agent.service import Service, ServiceContext, hooks
from mcluster.agent.slots import ConnectionSlots, SlotDecision
from mcluster.agent.status import StatusReporter
from mcluster.agent.throttles import Throttles, ThrottleService
from mcluster.config import ClusterConfig, load_config
from mcluster.config.connection import configured_redis_url, resolve_namespace
from mcluster.duravip.agent import DuraVipAgent
from mcluster.errors import AuditError, InvalidType, NotJoined, StaleReply, UnknownObject
from mcluster.logs.config import DEFAULT_STREAM_MAX, log_files
from mcluster.logs.shipper import LogShipping
from mcluster.objects import outbound, shards, throttle, views
from mcluster.objects.kinds import Kind
from mcluster.objects.outbound import OutboundPolicy, Route
from mcluster.objects.throttle import Decision, ThrottleDef
from mcluster.outbound.leases import OwnerLeases, check_owner
from mcluster.outbound.views import ConnectionViews
from mcluster.security.config_limits import ConfigLimitError
from mcluster.security.refusals import Refusals
from mcluster.shaping.config import shaping_config
from mcluster.shaping.model import Outcome, OutcomeResult
from mcluster.shaping.service import Shaper
from mcluster.store import members
from mcluster.store.connect.urls import decision_client, make_async_client, resolve_redis_url
from mcluster.store.keys import GLOBAL, ClusterKeys, check_name
from mcluster.store.scripts import Scripts

log = logging.getLogger("mcluster.agent")


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
        self.keys = ClusterKeys(resolve_namespace(namespace, self.config))
        self.address = address
        self._redis_url = redis_url
        self._client = client
        self.heartbeat_interval = self.config.get_float("heartbeat_interval", 1.0, above=0)
        self.lease_ttl = self.config.get_float("lease_ttl", 3.0, above=self.heartbeat_interval)
        # The leader lease is shorter, so a new leader takes over within one lease TTL.
        self.leader_ttl = max(
            self.lease_ttl - self.heartbeat_interval, 1.5 * self.heartbeat_interval
        )
        self.max_buffered = self.config.get_int("max_buffered_keys", 1_000_000, minimum=1)
        resync_hold = self.config.get_float("resync_hold", 30.0, above=0)
        #: Held by a re-sync and by a config reload: one changes the outboxes at a time.
        self.reconfiguring = asyncio.Lock()
        #: Called with the new config after a reload applied it (the policy service's).
        self.reload_hooks: list[Callable[[ClusterConfig], None]] = []
        #: Record, lease, heartbeat and leadership (``agent/membership.py``).
        self.membership = membership.Member(
            lambda: self.scripts, self.keys, self.name, lease_ttl=self.lease_ttl,
            leader_ttl=self.leader_ttl, address=address,
        )  # fmt: skip
        #: What the guards refused (``mcluster.security``); the agent shares it with them.
        self.refusals = Refusals()
        self._tasks: list[asyncio.Task[Any]] = []
        #: The outboxes, their shards and views, and every change to them.
        self.replication = Replication(
            self.keys, self.name, lambda: self.scripts, self._spawn,
            lambda: self.keeper.ask_resync(), self.max_buffered,
        )  # fmt: skip
        self.outboxes = self.replication.outboxes  # the same dicts, changed in place only:
        self._shards = self.replication.shards  # read by record(), the hot path
        self._scripts: Scripts | None = None
        self._decision_scripts: Scripts | None = None
        #: Which client (``owner``) holds which slot: freed when it stops renewing.
        self.owner_leases = OwnerLeases(self.lease_ttl)
        self.outbound = OutboundPolicy(self.config)
        self.connection_views = ConnectionViews(self.config)
        self.caches = Caches(self.config, self.keys, self.name, lambda: self.scripts)
        self.status = StatusReporter()  # its figures go with each heartbeat
        #: What a service may use of this node (``agent/service.py``).
        self.service_context = ctx = ServiceContext(
            keys=self.keys, node=self.name, config=lambda: self.config,
            scripts=lambda: self.scripts, member=lambda: self.member, spawn=self._spawn,
            decision_scripts=lambda: self.decision_scripts, is_leader=lambda: self.is_leader,
            outboxes=self.outboxes, record=self.record, record_each=self.record_each,
            add_outbox=self.replication.add_outbox, manage=self.replication.manage,
            heartbeat_interval=self.heartbeat_interval, lease_ttl=self.lease_ttl,
            address=address,
        )  # fmt: skip
        self.gauge_caches = GaugeCaches(ctx, self.add_object, self.count, self.show)
        self._audit = AuditRecorder.from_context(ctx, self.max_buffered)
        throttle.config_throttles(self.config)  # a bad Shared_Throttle fails here, not later
        shaping = shaping_config(self.config)
        self._throttles = ThrottleService(ctx, obtm=shaping.enabled)
        self._connections = ConnectionSlots(ctx, self.outbound, self.owner_leases)
        #: Adaptive shaping (``Shaping``/``Adaptive``/``Warmup`` scopes), None without them.
        self.shaping = (
            Shaper(ctx, shaping, self.outbound, lambda: self._throttles.families.get("OBTM"),
                   self._audit)
            if shaping.enabled else None
        )  # fmt: skip
        self.duravip = DuraVipAgent(ctx)  # and a bad DuraVIP too
        self.log_files = log_files(self.config, self.name)  # and a bad logs dictionary
        max_len = self.config.get_int("log_stream_max", DEFAULT_STREAM_MAX, minimum=1)
        #: The features the config turns on, run as services: started before the join,
        #: stopped (in the reverse order) before leaving, told of every re-sync.
        self.services: list[Service] = [
            *([self._connections] if ConnectionSlots.wanted(self.config) else []),
            *([self._throttles] if ThrottleService.wanted(self.config, shaping.enabled) else []),
            self.caches,
            LogShipping(ctx, self.log_files, max_len),
            *([self._audit] if self._audit is not None else []),
            *([self.gauge_caches] if self.gauge_caches.enabled else []),
            *([self.shaping] if self.shaping is not None else []),
            self.duravip,  # last: first to stop, so others take its addresses over at once
        ]
        #: The heartbeat, the re-syncs it calls for and the reaping (``agent/lifecycle.py``).
        self.keeper = Keeper(
            self.membership, self.outboxes, self.services, self.reconfiguring,
            heartbeat_interval=self.heartbeat_interval, resync_hold=resync_hold,
            resync_wait=30.0,  # the longest a flush or a connection open waits for a re-sync
            status=lambda: self.status.report(
                self.name, self.outboxes, self.caches.replicas
            ).to_json(),
            resync=lambda reason, kind: resync.resync(self, reason, kind),
            reap_also=self.gauge_caches.maintain, track=lambda task: self._tasks.append(task),
        )  # fmt: skip

    # -- life cycle -------------------------------------------------------------------

    @property
    def client(self) -> Redis:
        if self._client is None:
            configured = configured_redis_url(self.config)
            url = resolve_redis_url(self._redis_url, configured=configured)
            self._client = make_async_client(url)
        return self._client

    @property
    def scripts(self) -> Scripts:
        if self._scripts is None:
            self._scripts = Scripts(self.client)
        return self._scripts

    @property
    def decision_scripts(self) -> Scripts:
        """Scripts on a client without socket timeout, for throttle decisions."""
        if self._decision_scripts is None:
            self._decision_scripts = Scripts(decision_client(self.client))
        return self._decision_scripts

    @property
    def member(self) -> members.Member | None:
        """This node's member record, None while it has not joined."""
        return self.membership.record

    @member.setter
    def member(self, record: members.Member | None) -> None:
        self.membership.record = record

    @property
    def incarnation(self) -> str:
        return self.membership.incarnation

    @property
    def leader(self) -> str:
        """The private name of the leader the last heartbeat saw ('' when none)."""
        return self.membership.leader

    @property
    def is_leader(self) -> bool:
        return self.membership.is_leader

    @property
    def private_name(self) -> str:
        if self.member is None:
            raise NotJoined("the node has not joined yet")
        return self.member.private_name

    async def start(self) -> None:
        """Join: take a new epoch and a lease, register this node's views, start beating."""
        replication = self.replication
        replication.build(self.config)
        for service in self.services:  # before the join: a snapshot cache holds every
            await service.start()  # live pair by the time this node is a member
        await self._join()
        replication.start()
        self.keeper.start()  # the heartbeat, then the reaping
        # the slots and counts (POST /v1/events with an owner) of clients that stopped renewing
        leases = self.owner_leases.run(
            self.close_connection, lambda obj, key, d: self.shard_box(obj, key).add(key, d)
        )
        self._spawn(leases, "owner-leases")
        for after_join in hooks(self.services, "after_join"):  # audit, shaping, DuraVIP
            await after_join()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task of this node: cancelled when it stops."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def add_object(
        self, name: str, type_: str, kind: Kind, max_pending: int = 100, max_delay: float = 1.0
    ) -> Outbox:
        """Manage an object defined at run time (a replicated gauge cache): its outbox, its
        entry in the object registry and this node's view. The node must have joined."""
        box = self.outboxes.get(name)
        if box is not None:
            return box
        if self.member is None:
            raise NotJoined(f"cannot add object {name!r}: the node has not joined yet")
        return await self.replication.add_object(
            name, type_, kind, max_pending, max_delay, self.member
        )

    async def _join(self) -> None:
        """A new epoch and private name, the lease, and a fresh view in every object."""
        await self.membership.join(self.replication.register_views)

    @property
    def rejoins(self) -> int:
        """How many re-syncs this node has finished."""
        return self.keeper.rejoins

    @property
    def out_of_views(self) -> bool:
        """True after an aborted re-sync, until the next one."""
        return self.keeper.out_of_views

    @property
    def resync_hold(self) -> float:
        """Seconds out of the views after an aborted re-sync (cluster scope, default 30)."""
        return self.keeper.resync_hold

    @resync_hold.setter
    def resync_hold(self, seconds: float) -> None:
        self.keeper.resync_hold = seconds

    @property
    def resync_wait(self) -> float:
        """The longest a flush or a connection open waits for a re-sync."""
        return self.keeper.resync_wait

    @resync_wait.setter
    def resync_wait(self, seconds: float) -> None:
        self.keeper.resync_wait = seconds

    async def _rejoin(self, reason: str, kind: str = "resync") -> None:
        """One re-sync now (``Keeper.rejoin``); kept for the tests that call it."""
        await self.keeper.rejoin(reason, kind)

    async def reset(self) -> ResetResult:
        """``cluster reset``: leave and rejoin with a new epoch, re-publish the state (a
        ``reset`` job); returns once done. Retries an aborted re-sync at once."""
        if self.member is None:
            raise NotJoined("the node has not joined yet")
        await self.keeper.reset()
        assert self.member is not None
        keys = sum(len(box.state) for box in self.outboxes.values())
        return ResetResult(self.name, self.member.private_name, self.member.epoch, keys)

    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply it (``agent/reload.py``; SIGHUP)."""
        try:
            return await reload.reload_config(self)
        except ConfigLimitError as exc:  # a guard's refusal: counted for /metrics
            self.refusals.count("config", exc.reason)
            raise

    async def stop(self, *, drain: bool = True, timeout: float = 30.0) -> None:
        """Leave: ship what is pending, take this node's counts out of the global views.

        If Redis does not answer within ``timeout`` seconds the node leaves anyway and
        logs it; its contribution then stays until it is reaped.
        """
        self.keeper.stop()
        for before_stop in hooks(reversed(self.services), "before_stop"):  # DuraVIP first:
            await before_stop()  # it unplumbs and releases its addresses: others take over
        for box in self.outboxes.values():
            box.stopping = True  # ends after the batch it is sending: nothing half-sent
            box.wake.set()
        shipping = [t for t in self._tasks if t.get_name().startswith("outbox:")]
        if shipping:
            await asyncio.wait(shipping, timeout=min(timeout, 5.0))
        for task in self._tasks:
            task.cancel()  # the keeper's loops also stop, should a cancel be swallowed
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        for task in self._tasks:  # a re-sync that failed as Redis went away: seen, logged
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("%s ended with %r", task.get_name(), task.exception())
        self._tasks = []
        for service in reversed(self.services):
            await service.stop()
        member = self.member
        if member is not None:
            try:
                async with asyncio.timeout(timeout):
                    await self._leave(member, drain)
                log.info("left the cluster as %s", member.private_name)
            except (TimeoutError, *RETRY_ERRORS) as exc:
                log.error("could not flush and leave (%r); leaving anyway", exc)
            self.membership.record = None
        if self._decision_scripts is not None:
            if self._decision_scripts.client is not self._client:
                await self._decision_scripts.client.aclose()
            self._decision_scripts = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._scripts = None

    async def _leave(self, member: members.Member, drain: bool) -> None:
        if not self.out_of_views:  # after an aborted re-sync there is no view to ship to
            await self.flush()
        for before_leave in hooks(self.services, "before_leave"):  # the throttles hand
            await before_leave()  # back their reservations
        if drain:
            for box in self.outboxes.values():
                async with box.lock:
                    await self.replication.drain_own(box)
        await self.membership.release_leader()
        await self.membership.leave()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def throttles(self) -> Throttles:
        """Cluster-wide named throttles (needs ``Replicate "shared_named_throttles" {}``)."""
        named = self._throttles.named
        if named is None:
            raise UnknownObject(
                'shared named throttles are not enabled: add Replicate "shared_named_throttles" {}'
                " to the cluster scope"
            )
        return named

    def throttle_families(self) -> dict[str, Throttles]:
        """The throttle tables this node decides on, by family (for ``GET /metrics``)."""
        return self._throttles.by_family()

    @property
    def audit(self) -> AuditRecorder:
        """Audit metrics and named series (needs ``Replicate "metrics" { parameters =
        "connect;..." }`` or ``"audit_series"``, or ``Replicate "eccmgr_metrics" {}``)."""
        if self._audit is None:
            raise UnknownObject(
                'audit metrics are not enabled: add Replicate "metrics" { parameters = '
                '"connect;reception;rejection" } (or "audit_series") to the cluster scope'
            )
        return self._audit

    @property
    def audit_recorder(self) -> AuditRecorder | None:
        """The audit recorder when the config counts audit metrics, else None."""
        return self._audit

    async def outbound_message(self, route: Route) -> Decision:
        """OBTM: may one more message go out on this route? (cluster-wide, exact)"""
        if self.shaping is not None and self.shaping.shaped(route):  # suspensions, AIMD, ...
            return await self.shaping.message(route)
        return await self._throttle_route("OBTM", outbound.OBTM_OPTION, route)

    async def outbound_outcome(self, outcome: Outcome) -> OutcomeResult:
        """Record a delivery attempt's result: the delivery/transfail/permfail metrics, and
        the shaping rules it matches (``POST /v1/outbound/outcome``)."""
        if self.shaping is None:
            result = OutcomeResult(outcome.checked().event, False, None, ())
            if self._audit is not None:
                with contextlib.suppress(AuditError):  # an event type the config skips
                    self._audit.record(outcome.event, domain=outcome.domain,
                                       binding=outcome.binding)  # fmt: skip
                    result = OutcomeResult(outcome.event, True, None, ())
            return result
        return await self.shaping.outcome(outcome)

    async def _throttle_route(self, family: str, option: str, route: Route) -> Decision:
        """OBTM or OBTC: one count on every bucket of the route (``OutboundPolicy.buckets``:
        the fall-back one and the MX host's and provider's), all or nothing."""
        throttles = self._throttles.families.get(family)
        buckets = self.outbound.buckets(option, route) if throttles is not None else []
        if throttles is None or not buckets:
            return Decision(True, 0, ())
        return await throttles.acquire_buckets(
            [ThrottleDef(name=path, rate=str(rate)) for path, rate in buckets]
        )

    async def open_connection(self, route: Route, owner: str | None = None) -> SlotDecision:
        """OBTC and the connection caps: a slot when every one has room, else a reason.

        Once admitted, the connection counts in every outbound view it belongs to
        (``mcluster/outbound/views.py``) until ``close_connection``, or until this node's
        views are reaped. With an ``owner`` (``mcluster/outbound/leases.py``), also until
        that owner goes longer than lease TTL without renewing (``renew_owner``)."""
        if owner is None:
            return await self._open_connection(route)
        check_owner(owner)
        self.owner_leases.renew(owner)  # an open renews what the owner holds already
        decision = await self._open_connection(route)
        if decision.allowed and decision.slot is not None:
            self.owner_leases.add(owner, decision.slot)
        return decision

    def renew_owner(self, owner: str) -> int:
        """Renew the lease of ``owner`` on its slots and counts; how many slots it holds."""
        check_owner(owner)
        return self.owner_leases.renew(owner)

    async def _open_connection(self, route: Route) -> SlotDecision:
        if self._slots is None:
            raise UnknownObject(
                'connection caps need Replicate "outbound_binding_domains" {} (or '
                "outbound_domains / outbound_cidr) in the cluster scope"
            )
        slots_ = self._slots
        if "OBTC" in self._throttles.families:  # no coroutine on the hot path without it
            decision = await self._throttle_route("OBTC", outbound.OBTC_OPTION, route)
            if not decision.allowed:
                slots_.stats.refused[outbound.OBTC_OPTION] += 1
                reason = f"{outbound.OBTC_OPTION}: retry after {decision.retry_after_ms} ms"
                return SlotDecision(False, None, reason)
        group = self.outbound.group(route)
        views = self.connection_views.targets(route.binding, route.domain, group, route.ip)
        shaped = await self.shaping.connection_caps(route) if self.shaping is not None else []
        rejoins = self.rejoins
        try:
            return await slots_.open(route, views, shaped)
        except StaleReply:
            pass
        try:  # this node's view was retired: re-sync, retry once
            await self.keeper.wait_resync(rejoins)
        except TimeoutError:
            slots_.stats.refused["re-syncing"] += 1
            return SlotDecision(False, None, "this node is re-syncing with the cluster")
        return await slots_.open(route, views, shaped)

    def connection_stats(self) -> slots.SlotStats | None:
        """Opens, closes and refusals of this node's connection slots (None: no slots)."""
        return self._slots.stats if self._slots is not None else None

    async def close_connection(self, slot: str) -> bool:
        """Give a connection slot back; a second close changes nothing."""
        return await self._connections.close(slot)

    @property
    def _slots(self) -> slots.Slots | None:
        """The connection slots this node holds (None: no slots, or not started)."""
        return self._connections.slots

    # -- the hot path ----------------------------------------------------------------

    def outbox(self, obj: str) -> Outbox:
        box = self.outboxes.get(obj) if "#" not in obj else None  # not a shard's own box
        if box is None:
            known = ", ".join(sorted(n for n in self.outboxes if "#" not in n)) or "none"
            raise UnknownObject(f"unknown object {obj!r}; this node records: {known}")
        return box

    def record(self, obj: str, key: str, delta: int = 1) -> None:
        """Count ``delta`` on ``key`` of object ``obj``: O(1), in memory, no network."""
        box = self.outboxes.get(obj) or self.outbox(obj)
        if type(delta) is not int:
            raise InvalidType(f"delta must be an integer, got {delta!r}")
        packed = box.known.get(key) or box.admit(key)
        if self._shards:  # inline: the hot path of every MTA event
            box = self.shard_box(obj, packed)
        box.add(packed, delta)

    def record_each(self, counts: Iterable[tuple[str, str]], delta: int) -> None:
        """``record`` of ``delta`` on each (object, key) of ``counts``, in one call (the
        hot path of a connection open and close: four views each); an object this node
        no longer has is skipped (a config reload removed it and drained its views)."""
        boxes = self.outboxes
        for obj, key in counts:
            box = boxes.get(obj)
            if box is None:
                continue
            packed = box.known.get(key) or box.admit(key)
            if self._shards:
                box = self.shard_box(obj, packed)
            box.add(packed, delta)

    def shard_names(self, obj: str) -> list[str]:
        """The outbox names of an object: its own, then its shards' (``obj#k``) if split."""
        return self.replication.shard_names(obj)

    def shard_box(self, obj: str, packed: bytes) -> Outbox:
        """The outbox of the shard holding ``packed`` (the object's own for one shard)."""
        return self.replication.shard_box(obj, packed)

    async def flush(self) -> None:
        """Return once everything recorded before this call is applied in Redis.

        If Redis refuses a batch because this node's view was retired, the node re-syncs
        (its snapshot holds everything recorded) and the flush returns after that.
        """
        rejoins = self.rejoins
        shipping = self.replication.shipments()
        if self._audit is not None:
            shipping.append(self._audit.ship())
        results = await asyncio.gather(*shipping, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, StaleView):
                raise result
        if any(isinstance(result, StaleView) for result in results):
            await self.keeper.wait_resync(rejoins)

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
        box = self.outboxes.get(obj)
        if box is not None and view in ("global", GLOBAL):  # 1 read (sharded: 1 per shard)
            parts = [b.keys for b in self._shards.get(obj, [box])]
            return await shards.count(self.client, box.kind, parts, GLOBAL, key)
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

    def stats(self) -> NodeStats:
        """This node's figures: shipping per object, the audit recorder, cache replicas."""
        objects = {name: OutboxStats.of(box) for name, box in self.outboxes.items()}
        audit = AuditStats.of(self._audit) if self._audit is not None else None
        caches = {name: CacheReplicaStats.of(r) for name, r in self.caches.replicas.items()}
        return NodeStats(objects, audit, caches)
