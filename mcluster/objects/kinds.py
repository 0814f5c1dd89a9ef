"""The registry of object kinds: which replication type is stored how.

A new kind is one module (parse, batch, count, rows, leaves) plus its Lua script and a
line here; nothing else in the package changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from redis.asyncio import Redis

from mcluster.objects import cidrtree, gauge, gauge_cache
from mcluster.objects.cidrtree import Row
from mcluster.store.keys import GLOBAL, ObjectKeys

Argv = list[bytes | str | int]
#: Batches kept in an object's change stream (each holds a batch's changes).
STREAM_MAXLEN = 2000
BatchArgs = Callable[[ObjectKeys, str, Mapping[bytes, int]], tuple[list[str], Argv]]


@dataclass(frozen=True)
class Kind:
    """How one kind of object parses keys, writes batches and reads views."""

    name: str
    script: str
    parse_key: Callable[[str], bytes]
    batch_args: BatchArgs
    count: Callable[[Redis, ObjectKeys, str, str], Awaitable[int]]
    rows: Callable[[Redis, ObjectKeys, str], AsyncIterator[Row]]
    leaves: Callable[[Redis, ObjectKeys, str], AsyncIterator[bytes]]
    total_rows: Callable[[Mapping[bytes, bytes]], int]
    distinct_keys: Callable[[Mapping[bytes, bytes]], int]
    model_rows: Callable[[Mapping[str, int]], list[Row]]

    def apply_call(
        self, okeys: ObjectKeys, view: str, items: Mapping[bytes, int], seq: int, mode: str
    ) -> tuple[list[str], Argv]:
        """KEYS and ARGV of this kind's apply script (contract in ``lua_scripts/_batch.lua``):
        mode "d" deltas or "s" a snapshot of a live view, "r" zeroing a retired one."""
        data_keys, tail = self.batch_args(okeys, view, items)
        registry = okeys.reaping if mode == "r" else okeys.views
        keys = [okeys.seq, registry, okeys.stream, okeys.meta(GLOBAL), okeys.meta(view)]
        return keys + data_keys, [view, seq, mode, STREAM_MAXLEN, okeys.channel, *tail]

    @property
    def description(self) -> str:
        """What ``cluster shared list`` prints after the name, as Momentum did."""
        return f"lazy, {self.name} w/ snapshots"


CIDRTREE = Kind(
    name=cidrtree.KIND,
    script="cidrtree_apply",
    parse_key=cidrtree.parse_address,
    batch_args=cidrtree.batch_args,
    count=cidrtree.count,
    rows=cidrtree.rows,
    leaves=cidrtree.leaves,
    total_rows=cidrtree.total_rows,
    distinct_keys=cidrtree.distinct_keys,
    model_rows=cidrtree.model_rows,
)
GAUGE_TABLE = Kind(
    name=gauge.KIND,
    script="gauge_apply",
    parse_key=gauge.parse_key,
    batch_args=gauge.batch_args,
    count=gauge.count,
    rows=gauge.rows,
    leaves=gauge.leaves,
    total_rows=gauge.total_rows,
    distinct_keys=gauge.distinct_keys,
    model_rows=gauge.model_rows,
)
#: A replicated gauge cache is a gauge table whose script also drops old entries.
GAUGE_CACHE = replace(
    GAUGE_TABLE,
    name=gauge_cache.KIND,
    script="gauge_cache_apply",
    batch_args=gauge_cache.batch_args,
)
KINDS = {k.name: k for k in (CIDRTREE, GAUGE_TABLE, GAUGE_CACHE)}

#: Replication types stored as an additive view, by the kind that stores them.
TYPE_KINDS: dict[str, Kind] = {
    "inbound_cidr": CIDRTREE,
    "outbound_cidr": CIDRTREE,
    "outbound_domains": GAUGE_TABLE,
    "outbound_binding_domains": GAUGE_TABLE,
    gauge_cache.TYPE: GAUGE_CACHE,  # defined at run time, not by a Replicate stanza
}


def kind_for_type(replication_type: str) -> Kind | None:
    """The kind storing a replication type, or None for types of later releases."""
    return TYPE_KINDS.get(replication_type)
