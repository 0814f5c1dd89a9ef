"""Replicated caches (``Replicate "mycache" { type = "cache" }``): shared key-value pairs.

Storage (see ``lua_scripts/cache_set.lua``), for cache ``C`` in namespace ``mc``:

- ``mc:{C}:g:d:v``  hash  key -> value
- ``mc:{C}:g:d:w``  zset  key -> write stamp (``wseq`` when it was last written): the
  eviction order of ``max_size`` (least recently written first)
- ``mc:{C}:g:d:x``  zset  key -> expiry time (Redis ms), only keys with a ttl
- ``mc:{C}:g:meta`` hash  wseq, sets, evicted, expired
- ``mc:{C}:stream`` the change stream every node's replica follows

A cache is shared state, not a sum of node contributions: a pair stays when the node
that wrote it dies.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from mcluster.errors import InvalidValue
from mcluster.objects.gauge import parse_key
from mcluster.store.keys import GLOBAL, ObjectKeys, text
from mcluster.store.scripts import Scripts

KIND = "cache"
#: Entries kept in a cache's change stream (approximate): a replica further behind reloads.
STREAM_MAXLEN = 10_000
MAX_VALUE_BYTES = 512 * 1024
#: Keys per ``cache_read`` call when a replica loads a snapshot.
READ_PAGE = 256

_TTL = re.compile(r"^\s*(\d{1,9})\s*([MmHhSs]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}

__all__ = [
    "KIND",
    "CacheKeys",
    "Pair",
    "Written",
    "parse_key",
    "parse_ttl",
    "parse_value",
    "read_pairs",
    "write_pair",
]


def parse_ttl(ttl: str | int) -> int:
    """A ttl as Momentum writes it, in seconds: ``300``, ``"300"``, ``"5M"``, ``"2H"``;
    ``0`` or ``"0"`` means the pair never expires. ValueError says what is wrong."""
    if type(ttl) is int:
        if ttl < 0:
            raise InvalidValue(f"bad ttl {ttl}: must be >= 0 seconds (0 = never expires)")
        return ttl
    if not isinstance(ttl, str):
        raise InvalidValue(f'bad ttl {ttl!r}: must be seconds or a string such as "5M"')
    match = _TTL.match(ttl)
    if match is None:
        raise InvalidValue(
            f'bad ttl {ttl!r}: expected seconds ("300"), minutes ("5M"), hours ("2H") '
            'or "0" for never'
        )
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_value(value: str) -> str:
    """A cache value: text of at most 512 KiB."""
    if not isinstance(value, str):
        raise InvalidValue(f"value must be a string, got {type(value).__name__}")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_VALUE_BYTES:
        raise InvalidValue(f"value is {size} bytes long; the limit is {MAX_VALUE_BYTES}")
    return value


@dataclass(frozen=True)
class CacheKeys:
    """The Redis keys of one cache."""

    object: ObjectKeys

    @property
    def values(self) -> str:
        return self.object.data(GLOBAL, ":v")

    @property
    def order(self) -> str:
        return self.object.data(GLOBAL, ":w")

    @property
    def expiry(self) -> str:
        return self.object.data(GLOBAL, ":x")

    @property
    def meta(self) -> str:
        return self.object.meta(GLOBAL)

    @property
    def stream(self) -> str:
        return self.object.stream

    @property
    def all(self) -> list[str]:
        return [self.values, self.order, self.expiry, self.meta, self.stream]


@dataclass(frozen=True)
class Written:
    """What ``cache_set`` did: the pair's write stamp, Redis time, pairs removed."""

    stamp: int
    at_ms: int
    evicted: int
    expired: int


@dataclass(frozen=True)
class Pair:
    """One key read from Redis: value (None when absent), write stamp, remaining ttl ms."""

    key: str
    value: str | None
    stamp: int
    ttl_ms: int


async def write_pair(
    scripts: Scripts,
    keys: CacheKeys,
    key: str,
    value: str,
    ttl_s: int,
    max_size: int,
    origin: str,
) -> Written:
    """Set one pair (one script call): expired and evicted pairs leave with it."""
    reply = await scripts.run(
        "cache_set", keys.all, [key, value, ttl_s * 1000, max_size, STREAM_MAXLEN, origin]
    )
    stamp, at_ms, evicted, expired = (int(x) for x in reply)
    return Written(stamp, at_ms, evicted, expired)


async def read_pairs(
    scripts: Scripts, keys: CacheKeys, names: Sequence[str]
) -> tuple[int, str, list[Pair]]:
    """(write stamp of the cache, last stream id, the pairs) in one script call."""
    reply = cast(list[Any], await scripts.run("cache_read", keys.all, list(names)))
    wseq, last_id = int(reply[0]), text(reply[1])
    pairs = []
    for i, name in enumerate(names):
        raw, stamp, ttl = reply[2 + 3 * i : 5 + 3 * i]
        value = None if raw is None else cast(bytes, raw).decode("utf-8", "surrogatepass")
        pairs.append(Pair(name, value, int(stamp), int(ttl)))
    return wseq, last_id, pairs


async def meta(scripts: Scripts, keys: CacheKeys) -> dict[str, int]:
    """The cache's figures in Redis: size, sets, evicted, expired, wseq."""
    client = scripts.client
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.meta))
    figures = {k.decode(): int(v) for k, v in raw.items()}
    figures["size"] = int(await client.hlen(keys.values))
    return figures
