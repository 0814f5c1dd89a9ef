"""CIDR trees (``inbound_cidr``, ``outbound_cidr``): counts keyed by IPv4/IPv6 address.

Storage (per view, see ``lua_scripts/cidrtree_apply.lua``): a 256-ary tree of Redis
hashes. The bucket of prefix P (the first i bytes of an address) maps each next byte to
the count of all addresses under it. The leaves are two-byte fields of the last bucket
(the /16 for IPv4, the /112 for IPv6), beside the counts of their /24 (/120): so sparse
addresses do not cost a Redis key each. The count of any prefix is one ``HMGET`` of at
most 128 fields of one bucket.

Rows (what ``cluster shared show`` prints): the nodes of the path-compressed binary trie
over the addresses with a non-zero count, plus the /8 and /24 (IPv6 /32 and /64) that
hold them, ordered by address then prefix length. A trie over n addresses has 2n - 1
nodes; a forced prefix is already one of them exactly when it branches (both halves are
non-empty), which is what the meta figures ``f`` and ``bf`` track.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from mcluster.errors import InvalidValue
from mcluster.store.keys import ObjectKeys

KIND = "cidrtree"
FORCED = {4: (8, 24), 16: (32, 64)}
_ROOT_BUCKET_FIELDS = 256
#: Fields of a bucket read with one HGETALL; bigger (dense) last buckets are paged.
LARGE_BUCKET = 2048


def parse_address(text: str) -> bytes:
    """Packed bytes of one IPv4/IPv6 address; ValueError names what is wrong."""
    if not isinstance(text, str):
        raise InvalidValue(f"address must be a string, got {type(text).__name__}")
    if "/" in text:
        raise InvalidValue(f"{text!r} is a CIDR block; events need a single IP address")
    try:
        return ipaddress.ip_address(text.strip()).packed
    except ValueError:
        raise InvalidValue(f"{text!r} is not a valid IPv4 or IPv6 address") from None


def parse_prefix(text: str) -> tuple[bytes, int]:
    """Network bytes and prefix length of ``a.b.c.d/n`` (host bits are masked) or an address."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise InvalidValue(f"{text!r} is not a valid IP address or CIDR block") from None
    return net.network_address.packed, net.prefixlen


def format_prefix(packed: bytes, plen: int) -> str:
    addr = ipaddress.ip_address(packed)
    return f"{addr}/{plen}"


def bucket_suffix(prefix: bytes, family: int) -> str:
    return f":{family}:{prefix.hex()}"


def bucket_key(keys: ObjectKeys, view: str, prefix: bytes, family: int) -> str:
    return keys.data(view, bucket_suffix(prefix, family))


def batch_args(
    keys: ObjectKeys, view: str, items: Mapping[bytes, int]
) -> tuple[list[str], list[bytes | str | int]]:
    """KEYS and the per-address ARGV tail for ``cidrtree_apply`` (after its 5 fixed args)."""
    pair_of: dict[tuple[int, bytes], int] = {}
    data_keys: list[str] = []
    argv: list[bytes | str | int] = []
    for packed, value in items.items():
        family = len(packed)
        numbers = []
        for level in range(family - 1):  # the leaves live in the last bucket
            prefix = packed[:level]
            number = pair_of.get((family, prefix))
            if number is None:
                number = pair_of[(family, prefix)] = len(pair_of)
                suffix = bucket_suffix(prefix, family)
                data_keys += [keys.data("g", suffix), keys.data(view, suffix)]
            numbers.append(number)
        argv += [str(ipaddress.ip_address(packed)), value, packed, ",".join(map(str, numbers))]
    return data_keys, argv


def count_plan(packed: bytes, plen: int) -> tuple[bytes, list[bytes]]:
    """The bucket prefix and the fields whose counts add up to prefix ``packed/plen``:
    child bytes, or for prefixes longer than /24 (IPv6 /120) two-byte leaf fields."""
    if plen == 0:
        return b"", [bytes([b]) for b in range(_ROOT_BUCKET_FIELDS)]
    level = (plen - 1) // 8
    span = 1 << (8 * (level + 1) - plen)
    first = packed[level] & ~(span - 1) & 0xFF
    if level == len(packed) - 1:  # leaves: in the bucket above, after their /24's byte
        head = packed[level - 1 : level]
        return packed[: level - 1], [head + bytes([b]) for b in range(first, first + span)]
    return packed[:level], [bytes([b]) for b in range(first, first + span)]


async def count(client: Redis, keys: ObjectKeys, view: str, text: str) -> int:
    """Exact count of an address or prefix in one view: one HMGET, no scan."""
    packed, plen = parse_prefix(text)
    prefix, fields = count_plan(packed, plen)
    values = await client.hmget(bucket_key(keys, view, prefix, len(packed)), fields)
    return sum(int(v) for v in values if v is not None)


def total_rows(meta: Mapping[bytes, bytes]) -> int:
    """Rows of the listing, from a view's meta figures (2n - 1 per family, plus forced)."""
    figures = {k.decode(): int(v) for k, v in meta.items()}
    rows = sum(2 * figures.get(f, 0) - 1 for f in ("n4", "n6") if figures.get(f, 0) > 0)
    return rows + figures.get("f", 0) - figures.get("bf", 0)


def distinct_keys(meta: Mapping[bytes, bytes]) -> int:
    return sum(int(meta.get(f, b"0")) for f in (b"n4", b"n6"))


@dataclass(frozen=True)
class Row:
    """One row of a listing: a key (prefix or gauge key) and its count."""

    key: str
    count: int
    limit: str | None = None  # a throttle's rate, shown beside its use


def _leaf_groups(bucket: Mapping[bytes, bytes]) -> dict[bytes, dict[bytes, bytes]]:
    """The leaves of a last bucket, grouped by their /24 (IPv6 /120) byte."""
    groups: dict[bytes, dict[bytes, bytes]] = {}
    for key, value in bucket.items():
        if len(key) == 2:
            groups.setdefault(key[:1], {})[key[1:]] = value
    return groups


def _children(bucket: Mapping[bytes, bytes]) -> list[tuple[int, int]]:
    """Sorted (byte, count) children of a bucket, skipping its lo/hi bookkeeping fields."""
    return sorted((k[0], int(v)) for k, v in bucket.items() if len(k) == 1 and int(v) != 0)


class Walker:
    """Depth-first walk of one view's buckets yielding rows in order."""

    def __init__(self, client: Redis, keys: ObjectKeys, view: str, family: int) -> None:
        self.client, self.keys, self.view, self.family = client, keys, view, family
        self.forced = FORCED[family]

    async def fetch(self, prefixes: Sequence[bytes]) -> list[dict[bytes, bytes]]:
        """The contents of some buckets: one pipelined HGETALL each, except that a last
        bucket (which holds leaves, up to 65,536) bigger than ``LARGE_BUCKET`` fields is
        read in HSCAN pages, so no single command reads a dense /16 whole."""
        keys = [bucket_key(self.keys, self.view, p, self.family) for p in prefixes]
        sizes = [0] * len(keys)
        last = [i for i, p in enumerate(prefixes) if len(p) + 2 == self.family]
        if last:
            async with self.client.pipeline(transaction=False) as pipe:
                for i in last:
                    pipe.hlen(keys[i])
                for i, size in zip(last, await pipe.execute(), strict=True):
                    sizes[i] = int(size)
        async with self.client.pipeline(transaction=False) as pipe:
            for key, size in zip(keys, sizes, strict=True):
                if size <= LARGE_BUCKET:
                    pipe.hgetall(key)
            small = iter(await pipe.execute())
        result: list[dict[bytes, bytes]] = []
        for key, size in zip(keys, sizes, strict=True):
            if size <= LARGE_BUCKET:
                result.append(next(small))
            else:
                pages = self.client.hscan_iter(key, count=LARGE_BUCKET // 2)
                result.append({k: v async for k, v in pages})
        return result

    def row(self, prefix: bytes, plen: int, total: int) -> Row:
        packed = prefix + bytes(self.family - len(prefix))
        return Row(format_prefix(packed, plen), total)

    async def rows(self) -> AsyncIterator[Row]:
        (root,) = await self.fetch([b""])
        async for row in self.bucket(b"", root):
            yield row

    async def bucket(self, prefix: bytes, contents: Mapping[bytes, bytes]) -> AsyncIterator[Row]:
        """Rows inside the bucket of ``prefix`` (which the caller has not emitted)."""
        children = _children(contents)
        if not children:
            return
        plen = 8 * len(prefix)
        branches = children[0][0] < 128 <= children[-1][0]
        if plen in self.forced and not branches:
            yield self.row(prefix, plen, sum(c for _, c in children))
        inner = [bytes([b]) for b, _ in children] if len(prefix) + 1 < self.family else []
        if len(prefix) + 2 == self.family:  # the children's leaves are two-byte fields here
            fetched = _leaf_groups(contents)
        else:  # fetch the child buckets of this bucket in one round trip
            fetched = dict(zip(inner, await self.fetch([prefix + b for b in inner]), strict=True))
        async for row in self.subtrie(prefix, children, fetched):
            yield row

    async def subtrie(
        self,
        prefix: bytes,
        children: list[tuple[int, int]],
        fetched: Mapping[bytes, Mapping[bytes, bytes]],
    ) -> AsyncIterator[Row]:
        """The trie over a bit-aligned run of children of one bucket."""
        if len(children) == 1:
            byte, total = children[0]
            child = prefix + bytes([byte])
            if len(child) == self.family:
                yield self.row(child, 8 * self.family, total)
            else:
                async for row in self.bucket(child, fetched[bytes([byte])]):
                    yield row
            return
        first, last = children[0][0], children[-1][0]
        common = 8 - (first ^ last).bit_length()
        node = bytes([first & (0xFF << (8 - common)) & 0xFF]) if common else b"\x00"
        yield self.row(prefix + node, 8 * len(prefix) + common, sum(c for _, c in children))
        split = (first | (0x80 >> common)) & (0xFF << (7 - common)) & 0xFF
        low = [c for c in children if c[0] < split]
        async for row in self.subtrie(prefix, low, fetched):
            yield row
        async for row in self.subtrie(prefix, children[len(low) :], fetched):
            yield row


async def rows(client: Redis, keys: ObjectKeys, view: str) -> AsyncIterator[Row]:
    """All rows of a view in order: IPv4 first, then IPv6."""
    for family in (4, 16):
        async for row in Walker(client, keys, view, family).rows():
            yield row


def model_rows(counts: Mapping[str, int]) -> list[Row]:
    """The rows computed straight from address counts (for tests and small views)."""
    out: dict[tuple[int, bytes, int], int] = {}
    for family, width in ((4, 32), (16, 128)):
        leaves = sorted(
            (int.from_bytes(p, "big"), c)
            for a, c in counts.items()
            if c and len(p := ipaddress.ip_address(a).packed) == family
        )
        for value, c in leaves:
            for plen in FORCED[family]:
                net = value >> (width - plen) << (width - plen)
                out[(family, net.to_bytes(family, "big"), plen)] = (
                    out.get((family, net.to_bytes(family, "big"), plen), 0) + c
                )
        _model_trie(leaves, width, family, out)
    ordered = sorted(out.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))
    return [Row(format_prefix(k[1], k[2]), c) for k, c in ordered]


def _model_trie(
    leaves: list[tuple[int, int]], width: int, family: int, out: dict[tuple[int, bytes, int], Any]
) -> None:
    if not leaves:
        return
    first, last = leaves[0][0], leaves[-1][0]
    common = width - (first ^ last).bit_length()
    net = first >> (width - common) << (width - common) if common else 0
    out[(family, net.to_bytes(family, "big"), common)] = sum(c for _, c in leaves)
    if len(leaves) == 1:
        return
    bit = 1 << (width - common - 1)
    low = [leaf for leaf in leaves if not leaf[0] & bit]
    _model_trie(low, width, family, out)
    _model_trie(leaves[len(low) :], width, family, out)


async def leaves(client: Redis, keys: ObjectKeys, view: str) -> AsyncIterator[bytes]:
    """Every address with a non-zero count in a view (packed), reading buckets in batches."""
    for family in (4, 16):
        walker = Walker(client, keys, view, family)
        stack = [b""]
        while stack:
            batch = stack[-256:]
            del stack[-256:]
            for prefix, bucket in zip(batch, await walker.fetch(batch), strict=True):
                if len(prefix) + 2 == family:  # the last bucket: its leaves are here
                    for key, value in sorted(bucket.items()):
                        if len(key) == 2 and int(value):
                            yield prefix + key
                    continue
                for byte, _ in _children(bucket):
                    stack.append(prefix + bytes([byte]))
