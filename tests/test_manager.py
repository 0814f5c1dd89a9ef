"""The manager process, ``broadcast`` and ``unicast``: nodes and manager as processes."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ReadOnlyError

from mcluster.console import ConsoleContext, run_command
from mcluster.console.commands import UsageError
from mcluster.console.serve import answer
from mcluster.manager import manager as manager_module
from mcluster.manager.manager import Manager
from mcluster.store import jobs, members, requests
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys
from tests.agents import Farm, until
from tests.operations import ManagerProcess, console, spawn_manager
from tests.redis_servers import RedisServer

NODES = ("n1", "n2", "n3")
NOT_INSIDE = "runs from a console, not inside a member"


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[tuple[Farm, ManagerProcess]]:
    farm = Farm(tmp_path, heartbeat=0.5, lease_ttl=1.5)
    manager = spawn_manager(farm)  # first: it must still never become the leader
    try:
        await until(lambda: _member_types(farm), 20, what="manager is a member")
        await farm.start(*NODES)
        yield farm, manager
    finally:
        manager.proc.kill()
        manager.proc.wait()
        await farm.close()


async def _member_types(farm: Farm) -> dict[str, str]:
    result = await console(farm, "cluster membership", "--json")
    return {m["node"]: m["type"] for m in result.json()}


async def test_manager_is_a_member_and_never_leads(farm: tuple[Farm, ManagerProcess]) -> None:
    f, manager = farm
    types = await _member_types(f)
    assert types == {"mgr": "Manager", "n1": "Momentum", "n2": "Momentum", "n3": "Momentum"}
    rows = (await console(f, "cluster membership", "--json")).json()
    mgr = next(r for r in rows if r["node"] == "mgr")
    assert (mgr["subcluster"], mgr["address"], mgr["groups"]) == (None, None, ["ec_cluster"])
    text = (await console(f, "cluster membership")).out
    assert "Node Type: Manager\n" in text and "Address: 0.0.0.0:0\n" in text
    lead = await f.leader()
    assert lead is not None and lead[0].endswith(("#n1", "#n2", "#n3"))
    # The manager's job watcher records a job whose runner is gone as lost.
    orphan = await jobs.Job.start(f.client, f.keys, "reap", "x", runner="gone",
                                  runner_private="#e0-1#gone")  # fmt: skip

    async def settled() -> bool:
        raw = await f.client.hget(f.keys.jobs, str(orphan.id))
        return raw is not None and jobs.JobRecord.model_validate_json(raw).state == "lost"

    await until(settled, manager_module.JOBS_EVERY + 5, what="the orphan job recorded as lost")
    assert manager.stop() == 0
    assert "mgr" not in await _member_types(f)  # it left at once, no lease to wait out


async def test_broadcast_nodename_and_a_stopped_node(farm: tuple[Farm, ManagerProcess]) -> None:
    f, _ = farm
    result = await console(f, "broadcast cluster nodename", "--json", timeout=2)
    assert result.json() == {n: {"ok": True, "output": n} for n in NODES}
    f.pause("n2")  # SIGSTOP: still a member (its lease lives), but it cannot answer
    try:
        result = await console(f, "broadcast cluster nodename", "--json", timeout=1.5)
        assert result.json() == {
            "n1": {"ok": True, "output": "n1"},
            "n2": {"ok": False, "error": "timeout"},
            "n3": {"ok": True, "output": "n3"},
        }
        # Not waited for beyond the timeout: the broadcast job's own start and end.
        job = next(j for j in await jobs.list_jobs(f.client, f.keys) if j.kind == "broadcast")
        assert job.state == "done" and job.ended_ms is not None
        assert 1500 <= job.ended_ms - job.started_ms < 1500 + 500
        text = await console(f, "broadcast cluster nodename", timeout=1)
        assert "n2: no answer within 1 s (timeout)" in text.out
        assert "n1:\n    n1\n" in text.out
    finally:
        f.resume("n2")
    # Resumed, n2 finds the requests it missed and drops them unrun: they are too late.
    await until(lambda: f.agents["n2"].log_lines("came too late; not run"), 10, what="n2 drops")
    result = await console(f, "broadcast cluster nodename", "--json", timeout=2)
    assert result.json()["n2"] == {"ok": True, "output": "n2"}
    # A node that left cleanly is not asked; one killed is reported after it was reaped.
    f.kill("n1", signal.SIGTERM)
    assert f.agents["n1"].proc.wait(timeout=15) == 0
    f.kill("n3")
    await until(lambda: _reaped(f, "n3"), 10, what="n3 reaped")
    result = await console(f, "broadcast cluster nodename", "--json", timeout=1)
    assert result.json() == {
        "n2": {"ok": True, "output": "n2"},
        "n3": {"ok": False, "error": "timeout"},
    }


async def _reaped(f: Farm, node: str) -> bool:
    return node not in await f.member_nodes()


async def test_unicast(farm: tuple[Farm, ManagerProcess]) -> None:
    f, _ = farm
    result = await console(f, "unicast n3 cluster nodename", "--json")
    assert result.json() == {"n3": {"ok": True, "output": "n3"}}
    result = await console(f, "unicast mgr cluster nodename", "--json")
    assert result.json() == {"mgr": {"ok": True, "output": "mgr"}}
    info = (await console(f, "unicast n1 cluster info", "--json")).json()
    assert info["n1"]["ok"] and "Daemon: 127.0.0.1:" in info["n1"]["output"]
    bad = (await console(f, "unicast n1 cluster shared show nothing", "--json")).json()
    assert bad["n1"]["ok"] is False and "nothing" in bad["n1"]["error"]
    reloaded = (await console(f, "unicast mgr config reload", "--json")).json()["mgr"]
    assert reloaded["ok"] and reloaded["output"].startswith(f"reloaded {f.config_path}\n")
    missing = await console(f, "unicast n9 cluster nodename")

    assert missing.code == 2 and "unknown node 'n9'" in missing.err


# -- in process: the request protocol and the command's checks ---------------------------------


async def test_requests_protocol(redis_server: RedisServer, namespace: str) -> None:
    client = make_async_client(redis_server.url)
    keys = ClusterKeys(namespace)
    stopping = asyncio.Event()

    async def handler(command: str) -> requests.Answer:
        if command == "boom":
            raise RuntimeError("kaput")
        return {"ok": True, "output": command.upper()}

    server = asyncio.create_task(requests.serve(client, keys, "a", handler, stopping.is_set))
    try:
        await client.rpush(keys.requests("a"), b"not json")  # ignored, the server goes on
        got = [x async for x in requests.ask(client, keys, ["a", "ghost"], "hello", 1.0)]
        assert got == [("a", {"ok": True, "output": "HELLO"}), ("ghost", {"ok": False,
                       "error": "timeout"})]  # fmt: skip
        got = [x async for x in requests.ask(client, keys, ["a"], "boom", 1.0)]
        assert got == [("a", {"ok": False, "error": "RuntimeError: kaput"})]
        assert [x async for x in requests.ask(client, keys, [], "hello", 1.0)] == []
        # A request nobody pops expires with its list.
        ttl = await client.pttl(keys.requests("ghost"))
        assert 0 < ttl <= 1000 + requests.LINGER_MS
    finally:
        stopping.set()
        await asyncio.wait_for(server, 5)
        await client.aclose()


async def test_finished_broadcast_job_shows_every_node(
    redis_server: RedisServer, namespace: str
) -> None:
    """A finished broadcast's progress is N/N (answers and timeouts), not N-1/N: the
    job's last tick used to run before the last answer was counted."""
    client = make_async_client(redis_server.url)
    keys = ClusterKeys(namespace)
    stopping = asyncio.Event()

    async def handler(command: str) -> requests.Answer:
        return {"ok": True, "output": command}

    servers = [
        asyncio.create_task(requests.serve(client, keys, node, handler, stopping.is_set))
        for node in ("a", "b", "c")
    ]
    try:
        await until(lambda: _responding(client, keys, 3), 5, what="three responders")
        ctx = ConsoleContext(client, keys, timeout=2.0)
        result = await run_command(ctx, "broadcast cluster nodename")
        assert result.data == {n: {"ok": True, "output": "cluster nodename"} for n in "abc"}
        [job] = [j for j in await jobs.list_jobs(client, keys) if j.kind == "broadcast"]
        assert (job.state, job.done, job.total) == ("done", 3, 3)
        # A node that does not answer counts too: it was given up on at the timeout.
        await client.hset(keys.responders, "ghost", await _seen_now(client))
        ctx = ConsoleContext(client, keys, timeout=0.5)
        result = await run_command(ctx, "broadcast cluster nodename")
        assert result.data["ghost"] == requests.timeout_answer()  # type: ignore[index]
        newest = (await jobs.list_jobs(client, keys))[0]
        assert (newest.state, newest.done, newest.total) == ("done", 4, 4)
    finally:
        stopping.set()
        await asyncio.wait(servers, timeout=5)
        await client.aclose()


async def _responding(client: Any, keys: ClusterKeys, count: int) -> bool:
    return len(await requests.responders(client, keys)) >= count


async def _seen_now(client: Any) -> str:
    return json.dumps({"type": "Momentum", "seen_ms": await members.server_time_ms(client)})


async def test_broadcast_usage(redis_server: RedisServer, namespace: str) -> None:
    client = make_async_client(redis_server.url)
    ctx = ConsoleContext(client, ClusterKeys(namespace))
    try:
        with pytest.raises(UsageError, match="broadcast needs a command"):
            await run_command(ctx, "broadcast")
        with pytest.raises(UsageError, match="runs console commands, not 'broadcast'"):
            await run_command(ctx, "broadcast broadcast cluster nodename")
        with pytest.raises(UsageError, match="unicast needs a node and a command"):
            await run_command(ctx, "unicast")
        result = await run_command(ctx, "broadcast cluster nodename")  # nobody to ask
        assert result.data == {}
        inside = ConsoleContext(client, ctx.keys, "a", local=_Local())
        nested = await answer(inside, "broadcast x")
        assert nested == {"ok": False, "error": f"broadcast {NOT_INSIDE}"}
    finally:
        await client.aclose()


class _Local:
    name = "a"

    async def reset(self) -> dict[str, Any]:
        return {}

    async def reload(self) -> dict[str, Any]:
        return {}


async def test_manager_in_process_never_leads(any_redis: RedisServer, namespace: str) -> None:
    """heartbeat.lua with a leader TTL of 0 (Redis 7 and 6.2): a lease, never the leader."""
    manager = Manager(None, any_redis.url, name="mgr", namespace=namespace)
    seen: list[str] = []

    async def service() -> None:
        seen.append("ran")
        raise RuntimeError("first run fails")  # restarted after RESTART_PAUSE

    manager.add_service("flaky", service)
    await manager.start()
    try:
        keys = manager.keys
        for _ in range(3):
            manager._wake.set()  # beat now
            await asyncio.sleep(0.05)
        assert await members.leader(manager.client, keys) is None
        every = await members.all_members(manager.client, keys)
        assert [(m.node, m.node_type, m.live) for m in every] == [("mgr", "Manager", True)]
        assert seen  # it ran; its failure stopped neither it for good nor the manager
        first = manager.member
        assert first is not None
        result = await manager.reset()
        assert result["epoch"] > first.epoch
        stored = await members.get(manager.client, keys, "mgr")
        # the record's last heartbeat moves with every beat: compare who it is
        assert stored is not None and manager.member is not None
        assert (stored.private_name, stored.epoch) == (
            manager.member.private_name,
            manager.member.epoch,
        )
    finally:
        await manager.stop()
    check = make_async_client(any_redis.url)
    assert await check.hkeys(ClusterKeys(namespace).members) == []
    await check.aclose()


async def test_manager_heartbeat_outlives_any_redis_error(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error other than a lost connection (a READONLY replica after a failover, OOM, a
    script error) once ended the manager's heartbeat for good: it lost its lease silently."""
    real = manager_module.membership.beat
    calls: list[str] = []

    async def beat(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            calls.append("failed")
            raise ReadOnlyError("You can't write against a read only replica.")
        calls.append("ok")
        return await real(*args, **kwargs)

    monkeypatch.setattr(manager_module.membership, "beat", beat)
    manager = Manager(None, redis_server.url, name="mgr", namespace=namespace)
    await manager.start()
    try:

        async def beats_again() -> bool:
            manager._wake.set()  # beat now
            return calls.count("ok") >= 2

        await until(beats_again, 5.0, what="the manager beats again after the error")
        assert calls[0] == "failed"
        every = await members.all_members(manager.client, manager.keys)
        assert [(m.node, m.live) for m in every] == [("mgr", True)]
    finally:
        await manager.stop()
