"""What the live dashboard shows, read from Redis in one pass: a plain, frozen Snapshot.

Everything is read through the same readers as the console commands (``objects.views``,
``store.cluster_view``, ``store.members``), so the dashboard never disagrees with
``cluster shared show`` or ``cluster membership``. Rendering is ``console.dashboard``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from mcluster.errors import NotFound
from mcluster.objects import shards, views
from mcluster.objects.cidrtree import Row
from mcluster.objects.policy import FAMILY as POLICY_FAMILY
from mcluster.objects.rates import parse_rate
from mcluster.objects.views import ObjectInfo
from mcluster.quotas.usage import KeyUse, nearest
from mcluster.shaping.model import ActiveAction
from mcluster.shaping.service import ShapingKeys, active_actions
from mcluster.store import cluster_view, members, node_status
from mcluster.store.jobs import list_jobs
from mcluster.store.keys import GLOBAL, ClusterKeys
from mcluster.store.members import MANAGER_TYPE

#: Rows of an object's top shown per object, and global rows read to choose them from
#: (a CIDR tree lists its rows depth first: a few thousand reach past the first /8).
TOP_ROWS = 5
SCAN_ROWS = 2000
RESCAN = 10.0  # seconds between two choices of an object's top rows (a full scan)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class MemberLine:
    node: str
    epoch: int
    heartbeat_ms_ago: int | None
    leader: bool
    manager: bool = False  # the cluster manager: a member with no views


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
class ReplicationLine:
    """A node's replication lag and replica staleness, as it reported them with its last
    heartbeat (``store/node_status``); ``reported_ms_ago`` is how old that report is."""

    node: str
    lag_ms: float | None = None  # None: the node has not reported yet
    lag_object: str | None = None
    staleness_ms: float | None = None  # None: no cache replica change seen
    staleness_cache: str | None = None
    reported_ms_ago: int | None = None


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
    replication: tuple[ReplicationLine, ...] = ()  # per node, in Snapshot.nodes order
    anomalies: tuple[AnomalyLine, ...] = ()
    jobs: tuple[JobLine, ...] = ()
    shaping: tuple[ActiveAction, ...] = ()  # shaping actions in force (docs/shaping.md)
    quotas: tuple[KeyUse, ...] = ()  # policy quota keys nearest their limit (postfix.md)
    error: str | None = None  # why the snapshot is empty (Redis unreachable, ...)


def top_rows(kind: str, rows: Iterable[Row], n: int = TOP_ROWS) -> list[Row]:
    """The rows worth a glance: a CIDR tree's widest networks (from /8, or /16 for IPv6),
    leaving out a network that only repeats the count of a wider one holding it; a
    table's largest counts."""
    if kind != "cidrtree":
        return sorted(rows, key=lambda r: (-r.count, r.key))[:n]
    nets = []
    for row in rows:
        net = ipaddress.ip_network(row.key, strict=False)
        if net.prefixlen >= (8 if net.version == 4 else 16):
            nets.append((net.prefixlen, -row.count, net, row))
    chosen: list[tuple[IPNetwork, Row]] = []
    for _, _, net, row in sorted(nets, key=lambda x: x[:2]):
        if any(row.count == top.count and _within(net, wide) for wide, top in chosen):
            continue  # one branch of the trie: the same connections as the wider row
        chosen.append((net, row))
        if len(chosen) == n:
            break
    return [row for _, row in chosen]


def _within(net: IPNetwork, wide: IPNetwork) -> bool:
    return net.version == wide.version and net.subnet_of(wide)  # type: ignore[arg-type]


async def _in_view(client: Redis, keys: ClusterKeys, info: ObjectInfo, node: str) -> str | None:
    """The view id of ``node`` for an object, or None when the node has no view of it."""
    try:
        view, _ = await views.resolve_view(client, keys, keys.object(info.name), node)
    except NotFound:
        return None
    return view


@dataclass
class _Chosen:
    """The keys of an object's top, chosen from a full scan of its global view."""

    scanned_at: float
    keys: list[str]
    total_rows: int  # the object's rows when they were chosen


async def _object(
    client: Redis,
    keys: ClusterKeys,
    info: ObjectInfo,
    nodes: tuple[str, ...],
    chosen: dict[str, _Chosen],
    rescan: float,
) -> tuple[ObjectTop, list[AnomalyLine]]:
    """An object's top rows and anomalies. The rows are chosen from a scan of up to
    SCAN_ROWS rows, redone every ``rescan`` seconds (and while fewer than TOP_ROWS were
    found and the object changed); their counts are read every time, for every node."""
    assert info.kind is not None
    kind, parts = info.kind, shards.shard_keys(keys, info.name, info.shards)
    head = await views.show(client, keys, info.name, None, 0)  # figures only, no rows
    now = time.monotonic()
    pick = chosen.get(info.name)
    if (
        pick is None
        or now - pick.scanned_at >= rescan
        or (len(pick.keys) < TOP_ROWS and head.total_rows != pick.total_rows)  # filling up
    ):
        listing = await views.show(client, keys, info.name, None, SCAN_ROWS)
        top = [r.key for r in top_rows(head.type, listing.rows)]
        pick = chosen[info.name] = _Chosen(now, top, head.total_rows)
    node_views = await asyncio.gather(*(_in_view(client, keys, info, n) for n in nodes))
    columns: list[str | None] = [GLOBAL, *node_views]
    counts = await asyncio.gather(
        *(
            shards.count(client, kind, parts, view, key)  # gathered if sharded
            for key in pick.keys
            for view in columns
            if view is not None
        )
    )
    found = iter(counts)
    rows = []
    for key in pick.keys:
        row = [next(found) if view is not None else None for view in columns]
        rows.append(TopRow(key, row[0] or 0, tuple(row[1:])))
    if head.type != "cidrtree":
        rows.sort(key=lambda r: (-r.global_count, r.key))
    anomalies = [AnomalyLine(info.name, "global", head.anomalies)] if head.anomalies else []
    heads = await asyncio.gather(
        *(views.show(client, keys, info.name, view, 0) for view in node_views if view)
    )
    with_view = [node for node, view in zip(nodes, node_views, strict=True) if view]
    for node, meta in zip(with_view, heads, strict=True):
        if meta.anomalies:
            anomalies.append(AnomalyLine(info.name, node, meta.anomalies))
    return ObjectTop(info.name, head.type, tuple(rows), head.total_rows), anomalies


def _replication(node: str, r: node_status.NodeStatus | None, now_ms: int) -> ReplicationLine:
    if r is None:
        return ReplicationLine(node)
    age = max(0, now_ms - r.at_ms)
    return ReplicationLine(node, r.lag_ms, r.lag_object, r.staleness_ms, r.staleness_cache, age)


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
    return await SnapshotReader(client, keys, list(configured)).read()


@dataclass
class SnapshotReader:
    """Reads snapshots again and again (the dashboard keeps one): the rows an object shows
    are chosen again every ``rescan`` seconds, their counts are read every time."""

    client: Redis
    keys: ClusterKeys
    configured: list[tuple[str, str]] = field(default_factory=list)
    rescan: float = RESCAN
    chosen: dict[str, _Chosen] = field(default_factory=dict)

    async def read(self) -> Snapshot:
        client, keys = self.client, self.keys
        now_ms = await members.server_time_ms(client)
        every = await members.all_members(client, keys, live_only=True)
        lead = await members.leader(client, keys)
        leader = cluster_view.leader_node(lead[0]) if lead is not None else None
        nodes = tuple(m.node for m in every if m.node_type != MANAGER_TYPE)
        member_lines = tuple(
            MemberLine(
                m.node,
                m.epoch,
                None if m.last_heartbeat_ms is None else max(0, now_ms - m.last_heartbeat_ms),
                m.node == leader,
                m.node_type == MANAGER_TYPE,
            )
            for m in every
        )
        epoch = next((m.epoch for m in every if m.node == leader), None)
        objects, throttles, anomalies = [], [], []
        for info in await views.list_objects(client, keys, self.configured):
            if info.kind is None:
                throttles += await _throttles(client, keys, info)
                continue
            top, found = await _object(client, keys, info, nodes, self.chosen, self.rescan)
            objects.append(top)
            anomalies += found
        reported = await node_status.read_all(client, keys)
        replication = [_replication(node, reported.get(node), now_ms) for node in nodes]
        jobs = [
            JobLine(f"#{job.id}", f"{job.kind} {job.what}", job.done, job.total)
            for job in await list_jobs(client, keys)
            if job.state == "running"
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
            replication=tuple(replication),
            anomalies=tuple(anomalies),
            jobs=tuple(jobs),
            shaping=await active_actions(client, ShapingKeys.of(keys), now_ms),
            quotas=tuple(await nearest(client, keys.object(POLICY_FAMILY))),
        )
