"""Replicated caches in the object registry, so ``cluster shared list`` shows them.

Every agent publishes its caches in ``NS:{cluster}:objects`` (name -> ``{"type":
"cache", "snapshot": bool}``) when it starts, as it does its other objects; a console
lists them from there and from its config (``--config``). A cache is not a view object
(``cluster shared show`` reads none): ``views.list_objects`` leaves it out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from mcluster.config import ClusterConfig, ReplicateObject
from mcluster.objects.cache import KIND
from mcluster.store.keys import ClusterKeys, text

SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class CacheInfo:
    """One replicated cache: its name and whether joining nodes load every pair."""

    name: str
    snapshot: bool

    @property
    def description(self) -> str:
        """Momentum's shape: ``lazy, cache w/ snapshots`` (``lazy, cache`` without)."""
        return f"lazy, {KIND} w/ snapshots" if self.snapshot else f"lazy, {KIND}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": KIND,
            "replication_type": KIND,
            "description": self.description,
            "snapshot": self.snapshot,
        }


def registry_entry(obj: ReplicateObject) -> str:
    return json.dumps({"type": KIND, SNAPSHOT: SNAPSHOT in obj.parameters})


async def publish(client: Redis, keys: ClusterKeys, caches: Iterable[ReplicateObject]) -> None:
    """Record every cache of a node's config in the object registry."""
    caches = list(caches)
    if caches:
        await client.hset(keys.objects, mapping={obj.name: registry_entry(obj) for obj in caches})


async def list_caches(
    client: Redis,
    keys: ClusterKeys,
    configured: Iterable[tuple[str, str]] = (),
    config: ClusterConfig | None = None,
) -> list[CacheInfo]:
    """The caches the registry holds, the configured (name, type) pairs name, and the
    config defines (its ``snapshot`` parameter wins over the registry's), by name."""
    found: dict[str, bool] = {}
    registry = cast(dict[bytes, bytes], await client.hgetall(keys.objects))
    for raw_name, raw in registry.items():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # not ours to judge: views.list_objects reads the same hash
        if isinstance(entry, dict) and entry.get("type") == KIND:
            found[text(raw_name)] = bool(entry.get(SNAPSHOT))
    for name, rtype in configured:
        if rtype == KIND:
            found.setdefault(name, False)
    for obj in config.of_type(KIND) if config is not None else ():
        found[obj.name] = SNAPSHOT in obj.parameters
    return [CacheInfo(name, snapshot) for name, snapshot in sorted(found.items())]
