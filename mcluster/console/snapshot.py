"""What the live dashboard shows, read from Redis in one pass: a plain, frozen Snapshot.

Everything is read through the same readers as the console commands (``objects.views``,
``store.cluster_view``, ``store.members``), so the dashboard never disagrees with
``cluster shared show`` or ``cluster membership``. Rendering is ``console.dashboard``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from mcluster.objects import views
from mcluster.objects.cidrtree import Row
from mcluster.objects.rates import parse_rate
from mcluster.objects.views import NotFound, ObjectInfo
from mcluster.store import cluster_view, members
from mcluster.store.keys import ClusterKeys
from mcluster.store.replication_view import view_activity

#: Rows of an object's top shown per object, and global rows read to choose them from.
TOP_ROWS = 5
SCAN_ROWS = 200


@dataclass(frozen=True)
class MemberLine:
    node: str
    epoch: int
    heartbeat_ms_ago: int | None
    leader: bool


@dataclass(frozen=True)
class TopRow:
    """One key of an object: its global count and each node's (None: the node has no view)."""

    key: str
    global_count: int
    per_node: tuple[int | None, ...]  # in Snapshot.nodes order


@dataclass(frozen=True)
class ObjectTop:
    name: str
    type: str
    rows: tuple[TopRow, ...]
    total_rows: int


@dataclass(frozen=True)
class ThrottleLine:
    object: str
    name: str
    used: int
    limit: int  # per window
    rate: str

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit else 0.0


@dataclass(frozen=True)
class LagLine:
    """How long ago a node's last batch of an object was applied (its replication lag)."""

    object: str
    node: str
    seq: int
    last_batch_ms_ago: int | None


@dataclass(frozen=True)
class AnomalyLine:
    object: str
    view: str  # "global" or a node name
    count: int


@dataclass(frozen=True)
class JobLine:
    id: str
    what: str
    done: int
    total: int


@dataclass(frozen=True)
class Snapshot:
    namespace: str
    server_time_ms: int
    nodes: tuple[str, ...] = ()
    members: tuple[MemberLine, ...] = ()
    leader: str | None = None
    epoch: int | None = None
    objects: tuple[ObjectTop, ...] = ()
    throttles: tuple[ThrottleLine, ...] = ()
    lag: tuple[LagLine, ...] = ()
    anomalies: tuple[AnomalyLine, ...] = ()
    jobs: tuple[JobLine, ...] = ()
    error: str | None = None  # why the snapshot is empty (Redis unreachable, ...)


def top_rows(kind: str, rows: Iterable[Row], n: int = TOP_ROWS) -> list[Row]:
    """The rows worth a glance: a CIDR tree's widest networks first (largest count among
    equal prefixes), a table's largest counts."""
    if kind == "cidrtree":

        def widest(row: Row) -> tuple[int, int]:
            return ipaddress.ip_network(row.key, strict=False).prefixlen, -row.count

        return sorted(rows, key=widest)[:n]
    return sorted(rows, key=lambda r: (-r.count, r.key))[:n]


async def _node_count(
    client: Redis, keys: ClusterKeys, obj: str, key: str, node: str
) -> int | None:
    try:
        return await views.count(client, keys, obj, key, node)
    except NotFound:
        return None


async def _anomalies(client: Redis, keys: ClusterKeys, obj: str, node: str | None) -> int:
    try:
        return (await views.show(client, keys, obj, node, 0)).anomalies
    except NotFound:
        return 0


async def _object(
    client: Redis, keys: ClusterKeys, info: ObjectInfo, nodes: tuple[str, ...]
) -> tuple[ObjectTop, list[AnomalyLine]]:
    listing = await views.show(client, keys, info.name, None, SCAN_ROWS)
    rows = []
    for row in top_rows(listing.type, listing.rows):
        per_node = [await _node_count(client, keys, info.name, row.key, n) for n in nodes]
        rows.append(TopRow(row.key, row.count, tuple(per_node)))
    anomalies = [AnomalyLine(info.name, "global", listing.anomalies)] if listing.anomalies else []
    for node in nodes:
        count = await _anomalies(client, keys, info.name, node)
        if count:
            anomalies.append(AnomalyLine(info.name, node, count))
    return ObjectTop(info.name, listing.type, tuple(rows), listing.total_rows), anomalies


async def _throttles(client: Redis, keys: ClusterKeys, info: ObjectInfo) -> list[ThrottleLine]:
    listing = await views.show(client, keys, info.name, None, None)
    found = []
    for row in listing.rows:
        limit = parse_rate(row.limit).count if row.limit else 0
        if limit:
            found.append(ThrottleLine(info.name, row.key, row.count, limit, row.limit or ""))
    return found


async def read_snapshot(
    client: Redis, keys: ClusterKeys, configured: Iterable[tuple[str, str]] = ()
) -> Snapshot:
    """Everything the dashboard shows, as of now (Redis time)."""
    now_ms = await members.server_time_ms(client)
    every = await members.all_members(client, keys, live_only=True)
    lead = await members.leader(client, keys)
    leader = cluster_view.leader_node(lead[0]) if lead is not None else None
    nodes = tuple(m.node for m in every)
    member_lines = tuple(
        MemberLine(
            m.node,
            m.epoch,
            None if m.last_heartbeat_ms is None else max(0, now_ms - m.last_heartbeat_ms),
            m.node == leader,
        )
        for m in every
    )
    epoch = next((m.epoch for m in every if m.node == leader), None)
    objects, throttles, lag, anomalies = [], [], [], []
    for info in await views.list_objects(client, keys, configured):
        if info.kind is None:
            throttles += await _throttles(client, keys, info)
            continue
        top, found = await _object(client, keys, info, nodes)
        objects.append(top)
        anomalies += found
        for act in await view_activity(client, keys.object(info.name), now_ms):
            lag.append(LagLine(info.name, act.node, act.seq, act.last_batch_ms_ago))
    reaping = await cluster_view.reaping_progress(client, keys)
    jobs = [
        JobLine(
            f"reap {job['view']}", f"reaping {job['object']}", _int(job, "done"), _int(job, "total")
        )
        for job in reaping
    ]
    return Snapshot(
        namespace=keys.namespace,
        server_time_ms=now_ms,
        nodes=nodes,
        members=member_lines,
        leader=leader,
        epoch=epoch,
        objects=tuple(objects),
        throttles=tuple(sorted(throttles, key=lambda t: -t.fraction)),
        lag=tuple(lag),
        anomalies=tuple(anomalies),
        jobs=tuple(jobs),
    )


def _int(job: dict[str, object], field: str) -> int:
    value = job.get(field, 0)
    return int(value) if isinstance(value, int | str) else 0
