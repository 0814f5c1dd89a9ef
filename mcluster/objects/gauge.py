"""Gauge tables (``outbound_domains``, ``outbound_binding_domains``): counts keyed by string.

Storage (per view, see ``lua_scripts/gauge_apply.lua``): one Redis hash key -> count.
Keys of ``outbound_binding_domains`` are ``binding::domain``, Momentum's scope notation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from redis.asyncio import Redis

from mcluster.errors import InvalidValue
from mcluster.objects.cidrtree import Row
from mcluster.store.keys import ObjectKeys

KIND = "gauge table"
MAX_KEY_BYTES = 1024
_SCAN_PAGE = 1000


def parse_key(text: str) -> bytes:
    """A gauge key as stored: UTF-8, 1 to 1024 bytes, no control characters."""
    if not isinstance(text, str):
        raise InvalidValue(f"key must be a string, got {type(text).__name__}")
    raw = text.encode("utf-8", "surrogatepass")
    if not raw:
        raise InvalidValue("key must not be empty")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidValue(f"key is {len(raw)} bytes long; the limit is {MAX_KEY_BYTES}")
    if any(ch < " " or ch == "\x7f" for ch in text):
        raise InvalidValue(f"key {text[:40]!r} contains control characters")
    return raw


def batch_args(
    keys: ObjectKeys, view: str, items: Mapping[bytes, int]
) -> tuple[list[str], list[bytes | str | int]]:
    """KEYS and the ARGV tail (key, value pairs) for ``gauge_apply``."""
    argv: list[bytes | str | int] = []
    for key, value in items.items():
        argv += [key, value]
    return [keys.data("g"), keys.data(view)], argv


async def count(client: Redis, keys: ObjectKeys, view: str, text: str) -> int:
    value = await client.hget(keys.data(view), parse_key(text))
    return int(value) if value is not None else 0


def total_rows(meta: Mapping[bytes, bytes]) -> int:
    return int(meta.get(b"n", b"0"))


def distinct_keys(meta: Mapping[bytes, bytes]) -> int:
    return total_rows(meta)


async def rows(client: Redis, keys: ObjectKeys, view: str) -> AsyncIterator[Row]:
    """All rows sorted by key; read in bounded HSCAN pages, never one big HGETALL."""
    found: dict[bytes, int] = {}
    async for key, value in client.hscan_iter(keys.data(view), count=_SCAN_PAGE):
        if int(value):
            found[key] = int(value)
    for key in sorted(found):
        yield Row(key.decode("utf-8", "replace"), found[key])


def model_rows(counts: Mapping[str, int]) -> list[Row]:
    return [Row(k, c) for k, c in sorted(counts.items(), key=lambda kv: kv[0].encode()) if c]


async def leaves(client: Redis, keys: ObjectKeys, view: str) -> AsyncIterator[bytes]:
    """Every key with a non-zero count in a view, in bounded HSCAN pages."""
    async for key, value in client.hscan_iter(keys.data(view), count=_SCAN_PAGE):
        if int(value):
            yield key
