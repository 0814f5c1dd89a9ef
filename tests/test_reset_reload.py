"""``cluster reset`` and config reload (SIGHUP, ``config reload``) on agent processes:
the views stay exact, a new object appears, a removed one is drained, new batching
options apply, and no count is lost."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mcluster.store.keys import text
from tests.agents import CONFIG, Farm, Load, until
from tests.operations import console

ADDED = '  Replicate "outbound_cidr" { max_delay = 0.3 }\n'


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    farm = Farm(tmp_path, heartbeat=0.5, lease_ttl=1.5)
    try:
        await farm.start("n1", "n2")
        yield farm
    finally:
        await farm.close()


async def _stats(farm: Farm, node: str) -> dict[str, Any]:
    async with farm.session.get(farm.agents[node].base + "/v1/stats") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
    return body


async def _views(farm: Farm, obj: str) -> set[str]:
    raw = await farm.client.hgetall(farm.keys.object(obj).views)
    return {text(v) for v in raw.values()}


async def _post(farm: Farm, node: str, obj: str, key: str, delta: int) -> int:
    events = {"events": [{"object": obj, "key": key, "delta": delta}]}
    async with farm.session.post(farm.agents[node].base + "/v1/events", json=events) as resp:
        return resp.status


def _write_config(farm: Farm, outbound_domains: str, extra_cluster: str = "") -> None:
    text_ = CONFIG.format(
        heartbeat=farm.heartbeat,
        lease_ttl=farm.lease_ttl,
        namespace=farm.namespace,
        extra_cluster=extra_cluster,
        extra="",
    )
    old = "max_delay = 0.2\n    max_pending = 20"
    assert old in text_
    farm.config_path.write_text(text_.replace(old, outbound_domains))


async def test_reset_keeps_views_exact(farm: Farm) -> None:
    async with Load(farm) as load:
        await until(lambda: load.posts > 20, 10, what="some load")
        before = farm.agents["n1"].private_name
        result = await console(farm, "cluster reset", "--node", "n1", "--json", timeout=20)
        answer = result.json()
        assert answer["node"] == "n1" and answer["ok"], answer
        assert "rejoined as #e" in answer["output"]
    await until(farm.verdict, 15, what="exact after the reset")
    assert farm.agents["n1"].private_name != before  # a new epoch
    found = (await console(farm, "cluster jobs", "--json")).json()["jobs"]
    assert [j["state"] for j in found if j["kind"] == "reset"] == ["done"]
    no_node = await console(farm, "cluster reset")
    assert no_node.code == 1 and "cluster reset needs --node NAME" in no_node.err


async def test_reload_adds_removes_and_changes_max_delay(farm: Farm) -> None:
    assert (await _stats(farm, "n1"))["outbound_domains"]["max_delay"] == 0.2
    assert await _post(farm, "n1", "outbound_cidr", "10.9.9.9", 1) == 400  # not configured
    async with Load(farm) as load:
        await until(lambda: load.posts > 20, 10, what="some load")
        _write_config(farm, "max_delay = 2.5\n    max_pending = 500", ADDED)
        farm.kill("n1", signal.SIGHUP)  # the agent reloads in the background
        reply = (await console(farm, "unicast n2 config reload", "--json")).json()["n2"]
        assert reply["ok"], reply
        assert "added: outbound_cidr" in reply["output"]
        assert "changed: outbound_domains" in reply["output"]

        async def applied() -> bool:
            stats = await _stats(farm, "n1")
            return bool(stats["outbound_domains"]["max_delay"] == 2.5 and "outbound_cidr" in stats)

        await until(applied, 10, what="n1 reloaded on SIGHUP")
        assert (await _stats(farm, "n2"))["outbound_domains"]["max_pending"] == 500
        assert await _post(farm, "n1", "outbound_cidr", "10.9.9.9", 2) == 202
        assert await _post(farm, "n2", "outbound_cidr", "10.9.9.1", 3) == 202
    await until(farm.verdict, 15, what="exact after the reload (no count lost)")
    assert await farm.count("outbound_cidr", "10.9.9.0/24") == 5
    assert await _views(farm, "outbound_cidr") == {"n1", "n2"}
    # Remove it again: both views are drained out of the global view.
    _write_config(farm, "max_delay = 2.5\n    max_pending = 500")
    reply = (await console(farm, "broadcast config reload", "--json")).json()
    assert all(a["ok"] and "removed: outbound_cidr" in a["output"] for a in reply.values())
    assert await _views(farm, "outbound_cidr") == set()
    assert await _post(farm, "n1", "outbound_cidr", "10.9.9.9", 1) == 400
    listed = (await console(farm, "cluster shared list", "--json")).json()["objects"]
    assert "outbound_cidr" not in {o["name"] for o in listed}
    await until(farm.verdict, 15, what="exact after the removal")


async def test_bad_config_changes_nothing(farm: Farm) -> None:
    good = farm.config_path.read_text()
    farm.config_path.write_text(good.replace("lease_ttl", "lease_ttl = = ", 1))
    reply = (await console(farm, "unicast n1 config reload", "--json")).json()["n1"]
    assert reply["ok"] is False and f"{farm.config_path}:" in reply["error"], reply
    farm.kill("n2", signal.SIGHUP)
    await until(lambda: farm.agents["n2"].log_lines("config reload failed"), 10, what="logged")
    farm.config_path.write_text(good.replace("lease_ttl = 1.5", "lease_ttl = 2"))
    reply = (await console(farm, "unicast n1 config reload", "--json")).json()["n1"]
    assert reply["ok"] and "needs restart: cluster option lease_ttl" in reply["output"], reply
    farm.config_path.write_text(good)
    await farm.post("n1", farm.events("n1", 20))
    await until(farm.verdict, 10, what="still exact")


def test_a_stanza_that_only_moved_needs_no_restart() -> None:
    """A line added above the metrics and cache stanzas moves them in the file: that is no
    change (it used to be listed under needs restart); a changed option is one."""
    from mcluster.agent.reload import _fixed_changes
    from mcluster.config import parse_config

    text_ = """
Datasource "sessions" {}
cluster {
  Replicate "inbound_cidr" {}
  Replicate "metrics" { parameters = "connect" }
  Replicate "sessions" { type = "cache" }
}
"""
    moved = text_.replace(
        '{}\n  Replicate "metrics"', '{}\n  # metrics for the audit\n  Replicate "metrics"'
    )
    assert moved != text_
    assert _fixed_changes(parse_config(text_, "a.conf"), parse_config(moved, "a.conf")) == []
    bigger = text_.replace('type = "cache" }', 'type = "cache" max_size = 10 }')
    changes = _fixed_changes(parse_config(text_, "a.conf"), parse_config(bigger, "a.conf"))
    assert changes == ["objects sessions"]
