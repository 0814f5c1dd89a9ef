"""Objects split into shards: one hash slot per shard, so a big object spreads over masters.

``Replicate "outbound_domains" { shards = 8 }`` stores the object as 8 sub-objects: shard 0
keeps the tag ``{outbound_domains}`` (so ``shards = 1``, the default, is the plain layout)
and shard k > 0 has the tag ``{outbound_domains#k}``. Each shard has its own views, seq,
stream and global view, so a batch (one per shard) is still one script in one slot, and
global == sum of the node views holds shard by shard, hence for the whole. A node
registers its view in every shard, and the leader reaps a dead node's view in each.

Which shard holds a key: for a gauge table ``crc32(key) % shards``; for a CIDR tree
(``inbound_cidr``, ``outbound_cidr``) ``crc32(block) % shards`` where the block is the
address's top forced prefix, its /8 (IPv4) or /32 (IPv6): a whole /8 or /32 lives in one
shard. Reads gather: a gauge key's count is one read in its shard, a listing merges the
shards' sorted rows; a CIDR prefix of /8 (/32) or longer is one read in its shard, a
shorter one sums every shard's; a CIDR listing walks the sum of the shards' trees (see
:mod:`mcluster.objects.cidr_shards`); figures (distinct keys, rows, anomalies) are summed.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import cast

from redis.asyncio import Redis

from mcluster.errors import InvalidValue
from mcluster.objects import cidr_shards, cidrtree, gauge
from mcluster.objects.cidrtree import Row
from mcluster.objects.kinds import Kind
from mcluster.store import members
from mcluster.store.keys import ClusterKeys, ObjectKeys

#: The kinds that may be sharded (``kind.name``).
SHARDED_KINDS = (gauge.KIND, cidrtree.KIND)


def shard_of(packed: bytes, shards: int, kind: str = gauge.KIND) -> int:
    """The shard of a key as stored (``kind.parse_key``): a CIDR tree's address by its
    block (/8 or /32), a gauge key by itself."""
    if shards <= 1:
        return 0
    if kind == cidrtree.KIND:
        return cidr_shards.block_shard(packed, len(packed), shards)
    return zlib.crc32(packed) % shards


def box_name(name: str, shard: int) -> str:
    """The outbox (and stats) name of one shard: the object's own name for shard 0."""
    return name if shard == 0 else f"{name}#{shard}"


def shard_keys(keys: ClusterKeys, name: str, shards: int) -> list[ObjectKeys]:
    return [keys.object(name, shard) for shard in range(max(1, shards))]


def check_kind(name: str, kind: Kind, shards: int) -> None:
    if shards > 1 and kind.name not in SHARDED_KINDS:
        raise InvalidValue(
            f"object {name!r}: shards = {shards} is supported for gauge tables and CIDR "
            f"trees only (a {kind.name} is one slot); remove the option"
        )


async def count(client: Redis, kind: Kind, parts: Sequence[ObjectKeys], view: str, key: str) -> int:
    """A key's count: one read in the key's shard (a CIDR prefix shorter than its block:
    the sum of every shard's count)."""
    if kind.name == cidrtree.KIND:
        packed, plen = cidrtree.parse_prefix(key)
        if plen < 8 * cidr_shards.BLOCK[len(packed)] and len(parts) > 1:
            found = await asyncio.gather(*(kind.count(client, k, view, key) for k in parts))
            return sum(found)
        return await kind.count(client, parts[shard_of(packed, len(parts), kind.name)], view, key)
    okeys = parts[shard_of(kind.parse_key(key), len(parts))]
    return await kind.count(client, okeys, view, key)


async def meta(client: Redis, parts: Sequence[ObjectKeys], view: str) -> dict[bytes, bytes]:
    """The view's figures summed over the shards (every meta field is a count)."""
    total: dict[bytes, int] = {}
    async with client.pipeline(transaction=False) as pipe:
        for okeys in parts:
            pipe.hgetall(okeys.meta(view))
        replies: list[Mapping[bytes, bytes]] = await pipe.execute()
    for reply in replies:
        for field, value in reply.items():
            try:
                total[field] = total.get(field, 0) + int(value)
            except ValueError:
                continue
    return {k: str(v).encode() for k, v in total.items()}


async def rows(
    client: Redis, kind: Kind, parts: Sequence[ObjectKeys], view: str, limit: int | None
) -> list[Row]:
    """The view's rows in key order, merged from every shard (shards hold disjoint keys)."""
    if kind.name == cidrtree.KIND:
        return await cidr_shards.rows(client, parts, view, limit)
    per_shard = []
    for okeys in parts:
        per_shard.append([row async for row in kind.rows(client, okeys, view)])
    merged = heapq.merge(*per_shard, key=lambda row: row.key.encode("utf-8", "surrogatepass"))
    out: list[Row] = []
    for row in merged:
        if limit is not None and len(out) >= limit:
            break
        out.append(row)
    return out


async def layout_conflicts(
    client: Redis, keys: ClusterKeys, node: str, split: Mapping[str, int], names: Iterable[str]
) -> list[str]:
    """The objects ``node`` splits into another number of shards than the registry says
    (published by the last node to join), when another node is live: nodes that disagree
    write different layouts, and the views are not exact."""
    registry = cast(dict[bytes, bytes], await client.hgetall(keys.objects))
    differ = []
    for name in names:
        raw = registry.get(name.encode())
        theirs = int(json.loads(raw).get("shards", 1)) if raw is not None else None
        if theirs is not None and theirs != split.get(name, 1):
            differ.append(f"object {name!r}: shards = {split.get(name, 1)} here, {theirs} in Redis")
    if differ and any(
        m.node != node for m in await members.all_members(client, keys, live_only=True)
    ):
        return differ
    return []
