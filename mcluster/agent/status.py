"""The figures a node reports with each heartbeat (``store/node_status``): its worst
replication lag since the previous heartbeat and the worst p99 staleness of its cache
replicas. Cheap: a max over the outboxes, and a percentile recomputed only for a replica
that applied changes since the last report.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from mcluster.agent.caches import Replica, percentile
from mcluster.agent.outbox import Outbox
from mcluster.store.node_status import NodeStatus


@dataclass
class StatusReporter:
    """Makes a node's status; keeps each replica's last p99 until it changes again."""

    _p99: dict[str, tuple[int, float | None]] = field(default_factory=dict)

    def staleness(self, name: str, replica: Replica) -> float | None:
        """The p99 staleness of one replica over its last samples (None: no sample)."""
        version = replica.stats.changes + replica.stats.reloads
        seen = self._p99.get(name)
        if seen is None or seen[0] != version:
            seen = self._p99[name] = (version, percentile(list(replica.staleness_ms), 99))
        return seen[1]

    def report(
        self, node: str, outboxes: Mapping[str, Outbox], replicas: Mapping[str, Replica]
    ) -> NodeStatus:
        now = time.monotonic()
        lag, lag_object = 0.0, None
        for box in outboxes.values():
            waited = box.take_lag(now)
            if lag_object is None or waited > lag:
                lag, lag_object = waited, box.keys.name
        stale, stale_cache = None, None
        for name, replica in replicas.items():
            p99 = self.staleness(name, replica)
            if p99 is not None and (stale is None or p99 > stale):
                stale, stale_cache = p99, name
        return NodeStatus(node, 0, lag * 1000, lag_object, stale, stale_cache)
