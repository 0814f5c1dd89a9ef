"""Gauge caches (Momentum's ``ec_gauge_cache`` / ``msys.gauge_cache``): named counters with
a ttl counted from each entry's last change and at most ``maxelems`` entries, the oldest
dropped first.

A replicated gauge cache (``define(..., replicate=True)``, which needs ``Replicate
"metrics" { parameters = "gauge_cache" }``) is stored as a gauge table (a global view and
one view per node, see ``gauge.py``) plus, for cache ``G`` in namespace ``mc``:

- ``mc:{G}:g:d:t``  zset  key -> Redis ms of the entry's last change
- ``mc:{G}:conf``   hash  ttl_ms, maxelems (the last ``define`` wins)

Dropping an entry (ttl or maxelems) removes it from the global view and every node view
in one script call (``lua_scripts/_gauge_cache_drop.lua``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcluster.errors import InvalidValue
from mcluster.objects import cache
from mcluster.store.keys import GLOBAL, ObjectKeys, check_name
from mcluster.store.scripts import Scripts

KIND = "gauge cache"
#: The replication type gauge caches are registered under (``cluster shared list``).
TYPE = "gauge_cache"
#: Largest maxelems of one gauge cache (its entries share one hash slot).
MAX_ELEMS = 10_000_000
STREAM_MAXLEN = 2000


@dataclass(frozen=True)
class GaugeCacheDef:
    """``define(name, maxelems, ttl, replicate)``: ttl in seconds, 0 = never expires."""

    name: str
    maxelems: int
    ttl_s: int
    replicate: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "maxelems": self.maxelems,
            "ttl": self.ttl_s,
            "replicate": self.replicate,
        }


def make_def(
    name: str, maxelems: int, ttl: str | int = 0, replicate: bool = False
) -> GaugeCacheDef:
    """A checked definition; ValueError names the bad argument."""
    if not isinstance(name, str):
        raise InvalidValue(f"name must be a string, got {type(name).__name__}")
    check_name("gauge cache", name)
    if type(maxelems) is not int or not 1 <= maxelems <= MAX_ELEMS:
        raise InvalidValue(f"maxelems must be an integer 1..{MAX_ELEMS}, got {maxelems!r}")
    if type(replicate) is not bool:
        raise InvalidValue(f"replicate must be true or false, got {replicate!r}")
    return GaugeCacheDef(name, maxelems, cache.parse_ttl(ttl), replicate)


def changed_key(keys: ObjectKeys) -> str:
    return keys.data(GLOBAL, ":t")


def conf_key(keys: ObjectKeys) -> str:
    return f"{keys.base}:conf"


def view_prefix(keys: ObjectKeys) -> str:
    """Node view keys are ``prefix + VIEW + ':d'`` (see ``ObjectKeys.view_base``)."""
    return f"{keys.base}:n:"


def batch_args(
    keys: ObjectKeys, view: str, items: Mapping[bytes, int]
) -> tuple[list[str], list[bytes | str | int]]:
    """KEYS and the ARGV tail (prefix, then key, value pairs) for ``gauge_cache_apply``."""
    argv: list[bytes | str | int] = [view_prefix(keys)]
    for key, value in items.items():
        argv += [key, value]
    data = [keys.data(GLOBAL), keys.data(view), changed_key(keys), conf_key(keys)]
    return [*data, keys.views, keys.reaping], argv


async def define(scripts: Scripts, keys: ObjectKeys, definition: GaugeCacheDef) -> None:
    """Store ttl and maxelems where the scripts read them."""
    mapping = {"ttl_ms": definition.ttl_s * 1000, "maxelems": definition.maxelems}
    await scripts.client.hset(conf_key(keys), mapping=mapping)  # type: ignore[arg-type]


async def read(scripts: Scripts, keys: ObjectKeys, key: bytes) -> int:
    """An entry of the global view (0 when absent or past its ttl)."""
    args = [keys.data(GLOBAL), changed_key(keys), conf_key(keys)]
    return int(await scripts.run("gauge_cache_get", args, [key]))


async def purge(scripts: Scripts, keys: ObjectKeys) -> tuple[int, int]:
    """Drop entries past their ttl and beyond maxelems: (expired, evicted)."""
    call_keys = [
        keys.meta(GLOBAL),
        keys.data(GLOBAL),
        changed_key(keys),
        conf_key(keys),
        keys.views,
        keys.reaping,
        keys.stream,
    ]
    expired, evicted = await scripts.run(
        "gauge_cache_purge", call_keys, [view_prefix(keys), STREAM_MAXLEN]
    )
    return int(expired), int(evicted)
