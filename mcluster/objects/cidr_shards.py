"""A CIDR tree split into shards, read as one: the listing of the sum of the shards' trees.

A sharded CIDR tree (``Replicate "inbound_cidr" { shards = N }``) keeps each address in
the shard of its block: its /8 (IPv4) or /32 (IPv6), the top forced prefix of the
listing (see :mod:`mcluster.objects.shards`). Every shard is a complete CIDR tree of its
own addresses, so the tree of all addresses is the sum of the shards' trees: a bucket
above the block (IPv4: the root; IPv6: the buckets of /0, /8, /16 and /24) is the sum of
the shards' same buckets, field by field, and a bucket at or under the block is the one
shard's own. :class:`ShardedWalker` walks that sum with the unsharded walker's code, so
the rows, their order and the listing limit are exactly those of one tree; the meta
figures (n4, n6, f, bf, anomalies) add up, hence the row count too.

Cost: each summed bucket is read once per shard (one pipelined round trip per level per
shard); every other bucket is read once, from its shard.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from mcluster.objects.cidrtree import Row, Walker
from mcluster.store.keys import ObjectKeys

#: Bytes of an address that pick its shard: the /8 of IPv4, the /32 of IPv6.
BLOCK = {4: 1, 16: 4}


def block_shard(prefix: bytes, family: int, shards: int) -> int:
    """The shard of the block ``prefix`` starts with (at least BLOCK[family] bytes)."""
    return zlib.crc32(prefix[: BLOCK[family]]) % shards if shards > 1 else 0


def _add(total: dict[bytes, bytes], bucket: Mapping[bytes, bytes]) -> None:
    for field, value in bucket.items():
        total[field] = str(int(total.get(field, b"0")) + int(value)).encode()


class ShardedWalker(Walker):
    """The walk of one family over the sum of the shards' trees."""

    def __init__(self, client: Redis, parts: Sequence[ObjectKeys], view: str, family: int) -> None:
        super().__init__(client, parts[0], view, family)
        self.parts = [Walker(client, okeys, view, family) for okeys in parts]

    async def fetch(self, prefixes: Sequence[bytes]) -> list[dict[bytes, bytes]]:
        """The buckets of ``prefixes`` in the summed tree: above the block, every shard's
        bucket added up; at or under it, the one shard's."""
        wanted: dict[int, list[int]] = {}
        for i, prefix in enumerate(prefixes):
            if len(prefix) < BLOCK[self.family]:
                for k in range(len(self.parts)):
                    wanted.setdefault(k, []).append(i)
            else:
                wanted.setdefault(block_shard(prefix, self.family, len(self.parts)), []).append(i)
        order = list(wanted.items())
        fetched = await asyncio.gather(
            *(self.parts[k].fetch([prefixes[i] for i in idx]) for k, idx in order)
        )
        result: list[dict[bytes, bytes] | None] = [None] * len(prefixes)
        for (_, idx), buckets in zip(order, fetched, strict=True):
            for i, bucket in zip(idx, buckets, strict=True):
                summed = result[i]
                if summed is None:  # a bucket under the block comes from one shard: as is
                    result[i] = bucket
                else:
                    result[i] = summed = dict(summed)
                    _add(summed, bucket)
        return [bucket or {} for bucket in result]


async def rows(
    client: Redis, parts: Sequence[ObjectKeys], view: str, limit: int | None
) -> list[Row]:
    """The first ``limit`` rows (None: all) of a sharded CIDR tree's view, in order."""
    out: list[Row] = []
    if limit is not None and limit <= 0:
        return out
    for family in (4, 16):
        async for row in ShardedWalker(client, parts, view, family).rows():
            out.append(row)
            if limit is not None and len(out) >= limit:
                return out
    return out
