"""Typed results: frozen dataclasses whose ``to_json()`` is the JSON the faces sent before
(same keys, same order), and that still read like the dicts they replaced."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mcluster import NodeStats, OutboxStats, ReloadResult, ResetResult


def test_reset_result() -> None:
    done = ResetResult("relay-0-1", "#e7-41#relay-0-1", 7, 1234)
    assert json.dumps(done.to_json()) == (
        '{"node": "relay-0-1", "private_name": "#e7-41#relay-0-1", "epoch": 7, "keys": 1234}'
    )
    assert done["epoch"] == 7 and done["keys"] == 1234 and dict(done) == done.to_json()
    with pytest.raises(dataclasses.FrozenInstanceError):
        done.epoch = 8  # type: ignore[misc]


def test_reload_result() -> None:
    done = ReloadResult("n", "/etc/mc.conf", ("a",), (), ("b",), ("x",))
    assert list(done.to_json()) == ["node", "file", "added", "removed", "changed", "needs_restart"]
    assert done["added"] == ["a"] and done["needs_restart"] == ["x"]  # lists, as before
    nothing = ReloadResult("m", None, reason="started without --config")
    assert nothing.to_json() == {"node": "m", "file": None, "reason": "started without --config"}
    assert nothing.get("file") is None and nothing.get("added") is None


def test_node_stats() -> None:
    counters = {"recorded": 3, "applied": 3, "batches": 1, "repeats": 0, "anomalies": 0,
                "retries": 0, "dropped": 0}  # fmt: skip
    stats = NodeStats(
        {"inbound_cidr": OutboxStats(counters, 1, 1.0, 100)},
        {"recorded": 2},
        {"mycache": {"replica_size": 4}},
    )
    assert list(stats) == ["inbound_cidr", "audit", "mycache"]
    assert stats["inbound_cidr"]["repeats"] == 0
    assert list(stats["inbound_cidr"])[-3:] == ["seq", "max_delay", "max_pending"]
    assert stats.objects["inbound_cidr"].seq == 1
    assert json.loads(json.dumps(stats.to_json()))["mycache"] == {"replica_size": 4}
