"""What each node reports with its heartbeat: its replication lag and replica staleness.

The heartbeat script stores ``NODE -> "MS JSON"`` in ``NS:{cluster}:status`` (MS: the
Redis time of the heartbeat that wrote it), so the figures cost no extra round trip and a
reader knows how old they are. The JSON (``NodeStatus.to_json``) holds:

- ``lag_ms``: the worst replication lag of the node since its previous heartbeat: how
  long the oldest delta recorded on it waited before Redis applied it (the batch that
  carried it updates the global view in the same script, so that is when it became
  visible cluster-wide), or how long the oldest delta still waiting has waited;
  ``lag_object`` names the object.
- ``staleness_ms``: the worst p99 over the node's cache replicas of replica staleness
  (time from a ``set`` on another node to this replica applying it, over its last
  changes), ``staleness_cache`` names it; None when no replica has a sample.

The dashboard (``console/snapshot``) reads every entry in one ``HGETALL``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from mcluster.store.keys import ClusterKeys, text

log = logging.getLogger("mcluster.status")


@dataclass(frozen=True)
class NodeStatus:
    """One node's reported figures; ``at_ms`` is the Redis time they were stored."""

    node: str
    at_ms: int
    lag_ms: float
    lag_object: str | None = None
    staleness_ms: float | None = None
    staleness_cache: str | None = None

    def to_json(self) -> str:
        """The JSON a node sends with its heartbeat (``node`` and ``at_ms`` are not in it)."""
        return json.dumps(
            {
                "lag_ms": round(self.lag_ms, 1),
                "lag_object": self.lag_object,
                "staleness_ms": None if self.staleness_ms is None else round(self.staleness_ms, 1),
                "staleness_cache": self.staleness_cache,
            }
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse(node: str, raw: str) -> NodeStatus | None:
    """A stored ``"MS JSON"`` entry, or None (logged) when it is not one."""
    stamp, _, body = raw.partition(" ")
    try:
        fields = json.loads(body)
        at_ms = int(stamp)
    except ValueError:
        fields, at_ms = None, 0
    lag = _number(fields.get("lag_ms")) if isinstance(fields, dict) else None
    if not isinstance(fields, dict) or lag is None:
        log.warning("node %s: unreadable status %r left out", node, raw[:200])
        return None
    lag_object, cache = fields.get("lag_object"), fields.get("staleness_cache")
    return NodeStatus(
        node=node,
        at_ms=at_ms,
        lag_ms=lag,
        lag_object=lag_object if isinstance(lag_object, str) else None,
        staleness_ms=_number(fields.get("staleness_ms")),
        staleness_cache=cache if isinstance(cache, str) else None,
    )


async def read_all(client: Redis, keys: ClusterKeys) -> dict[str, NodeStatus]:
    """Every node's last reported status, by node (nodes that never reported are absent)."""
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.status))
    found = {}
    for field, value in raw.items():
        status = parse(text(field), text(value))
        if status is not None:
            found[status.node] = status
    return found
