"""The typed stats and results of the agent's services read like the dicts they replaced
and give the faces the same JSON, key for key and in the same order."""

from __future__ import annotations

import json

from mcluster.agent.audit_recorder import AuditCounts, AuditStats
from mcluster.agent.caches import CacheReplicaStats, CacheStats
from mcluster.agent.results import NodeStats, OutboxStats
from mcluster.duravip.agent import DuraVipStatus


def test_audit_counts_round_trip_the_reads_json() -> None:
    shown = {"cidr": "10.0.0.0/24", "monitors": [
        {"window": 60, "windows": 2, "connections": [3, 1], "receptions": [0, 0],
         "rejections": [1, 0]},
    ]}  # fmt: skip
    counts = AuditCounts.from_json(shown)
    assert counts.by == "cidr" and counts.monitors[0].counts["connections"] == (3, 1)
    assert json.dumps(counts.to_json()) == json.dumps(shown)
    assert counts["monitors"][0]["connections"] == [3, 1]  # reads like the dict
    by_domain = {"domain": "aol.com", "monitors": [{"window": 300, "windows": 1,
                                                    "delivery": [4]}]}  # fmt: skip
    assert json.dumps(AuditCounts.from_json(by_domain).to_json()) == json.dumps(by_domain)


def test_cache_and_node_stats_json() -> None:
    replica = CacheReplicaStats(4, 1, True, 1000, 2, 1.5, 3.0, 3.0, {"hits": 7, "misses": 1})
    assert list(replica.to_json()) == [
        "replica_size", "known_absent", "snapshot", "max_size", "staleness_ms", "hits", "misses",
    ]  # fmt: skip
    assert replica["staleness_ms"] == {"samples": 2, "p50": 1.5, "p99": 3.0, "max": 3.0}
    stats = CacheStats("c1", {"size": 4, "sets": 9}, replica)
    assert stats.to_json() == {"cache": "c1", "redis": {"size": 4, "sets": 9},
                               "replica": replica.to_json()}  # fmt: skip
    audit = AuditStats({"recorded": 2, "applied": 2}, 1, 0)
    node = NodeStats({"o": OutboxStats({"recorded": 1}, 1, 1.0, 100)}, audit, {"c1": replica})
    assert list(node.to_json()) == ["o", "audit", "c1"]
    assert node.to_json()["audit"] == {"recorded": 2, "applied": 2, "seq": 1, "pending": 0}


def test_duravip_status_json() -> None:
    status = DuraVipStatus("n1", ("10.0.0.5",), {"10.0.0.5": 7}, {"10.0.0.5": "up ok"})
    assert status.to_json() == {
        "node": "n1",
        "addresses": ["10.0.0.5"],
        "owned": {"10.0.0.5": 7},
        "commands": {"10.0.0.5": "up ok"},
    }
    assert status["owned"] == {"10.0.0.5": 7}
