"""Reading views: the objects a cluster manages, a view's rows, a key's count.

Every face (console, HTTP API, Python API) reads through these functions, so they all
print and return the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from mcluster.errors import NotFound
from mcluster.objects import shards, throttle
from mcluster.objects.cidrtree import Row
from mcluster.objects.kinds import Kind, kind_for_type
from mcluster.store import members
from mcluster.store.keys import GLOBAL, ClusterKeys, ObjectKeys

DEFAULT_LIMIT = 200
THROTTLE_TABLE = "throttle table"


@dataclass(frozen=True)
class ObjectInfo:
    """One managed object: its name, replication type and the kind that stores it."""

    name: str
    replication_type: str
    kind: Kind | None  # None for the throttle table
    shards: int = 1  # > 1: split over that many hash slots (mcluster/objects/shards.py)

    @property
    def type_name(self) -> str:
        return self.kind.name if self.kind is not None else THROTTLE_TABLE

    @property
    def description(self) -> str:
        return f"lazy, {self.type_name} w/ snapshots"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "replication_type": self.replication_type,
            "description": self.description,
        }


@dataclass(frozen=True)
class Listing:
    """The rows of one view of one object (``cluster shared show``)."""

    object: str
    type: str
    view: str
    node: str | None
    rows: list[Row]
    total_rows: int
    distinct_keys: int
    anomalies: int

    @property
    def omitted(self) -> int:
        return max(0, self.total_rows - len(self.rows))

    def to_json(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "type": self.type,
            "view": self.view,
            "node": self.node,
            "rows": [
                {"key": r.key, "count": r.count} | ({"limit": r.limit} if r.limit else {})
                for r in self.rows
            ],
            "total_rows": self.total_rows,
            "omitted_rows": self.omitted,
            "distinct_keys": self.distinct_keys,
            "anomalies": self.anomalies,
        }


def registry_entry(replication_type: str, shards: int = 1) -> str:
    return json.dumps({"type": replication_type} | ({"shards": shards} if shards > 1 else {}))


async def publish_objects(
    client: Redis, keys: ClusterKeys, objects: dict[str, str], split: Mapping[str, int] = {}
) -> None:
    """Record name -> replication type (and shard count), so a console without the config
    can list and read them."""
    if objects:
        await client.hset(
            keys.objects,
            mapping={n: registry_entry(t, split.get(n, 1)) for n, t in objects.items()},
        )


async def list_objects(
    client: Redis, keys: ClusterKeys, configured: Iterable[tuple[str, str]] = ()
) -> list[ObjectInfo]:
    """Objects known from the registry in Redis and from a config (name, type) list."""
    found: dict[str, str] = {}
    split: dict[str, int] = {}
    registry = cast(dict[bytes, bytes], await client.hgetall(keys.objects))
    for key, raw in registry.items():
        entry = json.loads(raw)
        found[key.decode()] = str(entry["type"])
        split[key.decode()] = int(entry.get("shards", 1))
    found.update(dict(configured))
    infos = []
    for name, rtype in sorted(found.items()):
        kind = kind_for_type(rtype)
        if kind is not None or rtype in throttle.FAMILIES:
            infos.append(ObjectInfo(name, rtype, kind, split.get(name, 1)))
    return infos


async def find_object(
    client: Redis, keys: ClusterKeys, name: str, configured: Iterable[tuple[str, str]] = ()
) -> ObjectInfo:
    infos = await list_objects(client, keys, configured)
    for info in infos:
        if info.name == name:
            return info
    known = ", ".join(i.name for i in infos) or "none"
    raise NotFound(f"unknown object {name!r}; managed objects: {known}")


async def resolve_view(
    client: Redis, keys: ClusterKeys, okeys: ObjectKeys, node: str | None
) -> tuple[str, str]:
    """(view id, label) for ``node``: None is the global view."""
    if node is None or node == "global":
        return GLOBAL, "global"
    raw = cast(dict[bytes, bytes], await client.hgetall(okeys.views))
    views = {v.decode(): n.decode() for v, n in raw.items()}
    if node in views:  # a private name given directly
        return node, node
    member = await members.get(client, keys, node)
    if member is not None and member.private_name in views:
        return member.private_name, member.private_name
    candidates = sorted((v for v, n in views.items() if n == node), key=_epoch_of)
    if candidates:
        return candidates[-1], candidates[-1]
    known = ", ".join(sorted(set(views.values()))) or "none"
    raise NotFound(f"unknown node {node!r} for object {okeys.name!r}; nodes with a view: {known}")


def _epoch_of(view: str) -> int:
    try:
        return int(view.split("#")[1].split("-")[0].lstrip("e"))
    except (IndexError, ValueError):
        return -1


async def show(
    client: Redis,
    keys: ClusterKeys,
    name: str,
    node: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
    configured: Iterable[tuple[str, str]] = (),
) -> Listing:
    """The first ``limit`` rows (None: all) of one view, and how many there are in all."""
    info = await find_object(client, keys, name, configured)
    okeys = keys.object(name)
    if info.kind is None:
        return await _throttle_table(client, okeys, limit, node)
    view, label = await resolve_view(client, keys, okeys, node)
    if info.shards > 1:
        parts = shards.shard_keys(keys, name, info.shards)
        meta = await shards.meta(client, parts, view)
        rows = await shards.rows(client, info.kind, parts, view, limit)
    else:
        meta = cast(dict[bytes, bytes], await client.hgetall(okeys.meta(view)))
        rows = await _rows(client, info.kind, okeys, view, limit)
    return Listing(
        object=name,
        type=info.kind.name,
        view=label,
        node=None if view == GLOBAL else node,
        rows=rows,
        total_rows=info.kind.total_rows(meta),
        distinct_keys=info.kind.distinct_keys(meta),
        anomalies=int(meta.get(b"anom", b"0")),
    )


async def count(
    client: Redis,
    keys: ClusterKeys,
    name: str,
    key: str,
    node: str | None = None,
    configured: Iterable[tuple[str, str]] = (),
) -> int:
    """Exact count of a key (or, in a CIDR tree, any prefix) in one view."""
    info = await find_object(client, keys, name, configured)
    okeys = keys.object(name)
    if info.kind is None:  # a throttle's use, cluster-wide or one node's share
        used = {n: u for n, u, _ in await throttle.usage(client, okeys, _share(node))}
        return used.get(key, 0)
    view, _ = await resolve_view(client, keys, okeys, node)
    if info.shards > 1:
        return await shards.count(
            client, info.kind, shards.shard_keys(keys, name, info.shards), view, key
        )
    return await info.kind.count(client, okeys, view, key)


async def _rows(
    client: Redis, kind: Kind, okeys: ObjectKeys, view: str, limit: int | None
) -> list[Row]:
    rows: list[Row] = []
    if limit is None or limit > 0:
        async for row in kind.rows(client, okeys, view):
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _share(node: str | None) -> str | None:
    """Whose share of a throttle table to read: None (or "global") is the cluster's."""
    return None if node in (None, "global") else node


async def _throttle_table(
    client: Redis, okeys: ObjectKeys, limit: int | None, node: str | None
) -> Listing:
    """The throttles with their use in the current window (cluster-wide, or one node's
    share with ``node``) and their rate."""
    node = _share(node)
    used = await throttle.usage(client, okeys, node)
    rows = [Row(n, count, rate) for n, count, rate in used]
    return Listing(
        object=okeys.name,
        type=THROTTLE_TABLE,
        view=node or "global",
        node=node,
        rows=rows[:limit] if limit is not None else rows,
        total_rows=len(rows),
        distinct_keys=len(rows),
        anomalies=0,
    )
