"""Namespaces: farms on one Redis never see each other, and mcluster never wipes Redis."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.agents import Farm, until

ROOT = Path(__file__).resolve().parents[1]

#: A call of FLUSHALL/FLUSHDB: redis-py's methods, or the command named as a string
#: (execute_command, redis.call in Lua); a comment that mentions it is no call.
WIPE = re.compile(r"\.flush_?(all|db)\s*\(|['\"]flush_?(all|db)['\"]", re.IGNORECASE)


def test_mcluster_never_flushes_redis() -> None:
    samples = ["await c.flushall()", "c.flushdb(asynchronous=True)",
               "redis.call('FLUSHALL')", 'execute_command("FLUSHDB")']  # fmt: skip
    assert all(WIPE.search(s) for s in samples)
    files = [*(ROOT / "mcluster").rglob("*.py"), *(ROOT / "lua_scripts").glob("*.lua")]
    assert len(files) > 20
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if WIPE.search(line)
    ]
    assert not found, "\n".join(found)


async def test_two_farms_share_one_redis_in_separate_namespaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same object names, same node names, one Redis: each farm's views are exactly its
    own. Farm A takes its namespace from the config, farm B's n1 from --namespace (its
    config names another) and n2 from MCLUSTER_NAMESPACE."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Farm(tmp_path / "a")
    b = Farm(tmp_path / "b", redis_server=a.redis, seed=2)
    try:
        text = b.config_path.read_text()
        b.config_path.write_text(text.replace(f'"{b.namespace}"', '"decoy"'))
        await a.start("n1", "n2")
        await b.start("n1", args=["--namespace", b.namespace])
        monkeypatch.setenv("MCLUSTER_NAMESPACE", b.namespace)
        b.spawn("n2")
        monkeypatch.delenv("MCLUSTER_NAMESPACE")
        await b.wait_healthy("n2")
        for farm in (a, b):
            for node in ("n1", "n2"):
                await farm.post(node, farm.events(node, 60))
        for farm in (a, b):
            await until(farm.verdict, 30, what=f"farm {farm.namespace} exact")
        assert a.model != b.model  # different events, so a mix-up would show
        assert not await a.client.keys("decoy:*")
        a.kill("n2")
        await until(a.verdict, 30, what="farm A exact after its n2 died")
        assert (await b.verdict()).ok, "farm B changed when farm A lost a node"
    finally:
        await b.close()
        await a.close()
