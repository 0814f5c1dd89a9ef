"""Jobs: progress, abort and lost runners; reaping and re-syncs as jobs; aborting a long
re-sync of a real agent process leaves every view exact."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mcluster.agent import reaper
from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.console import ConsoleContext, run_command
from mcluster.console.commands import CommandError, NotFound
from mcluster.objects.kinds import CIDRTREE, GAUGE_TABLE
from mcluster.store import jobs, members
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys, text
from mcluster.store.scripts import script_source
from tests.agents import Farm, RedisProxy, until
from tests.helpers import crash
from tests.operations import console
from tests.redis_servers import RedisServer
from tests.test_membership import FAST


@pytest.fixture
async def ctx(redis_server: RedisServer, namespace: str) -> AsyncIterator[ConsoleContext]:
    client = make_async_client(redis_server.url)
    yield ConsoleContext(client, ClusterKeys(namespace), timeout=1.0)
    await client.aclose()


async def test_job_progress_abort_and_lost(ctx: ConsoleContext) -> None:
    client, keys = ctx.client, ctx.keys
    await client.set(keys.lease("n1"), "#e1-1#n1")
    job = await jobs.Job.start(client, keys, "resync", "test", runner="n1",
                               runner_private="#e1-1#n1", total=10)  # fmt: skip
    await job.step(3, force=True)
    listed = await run_command(ctx, "cluster jobs")
    [row] = listed.data["jobs"]  # type: ignore[call-overload]
    assert (row["id"], row["state"], row["done"], row["total"]) == (job.id, "running", 3, 10)
    await jobs.request_abort(client, keys, job.id)
    with pytest.raises(jobs.JobAborted):
        async with job:
            await job.step(4, force=True)
    record = await jobs.get(client, keys, job.id)
    assert (record.state, record.done) == ("aborted", 4)
    assert not await client.smembers(keys.jobs_abort)
    with pytest.raises(CommandError, match=f"job {job.id} is aborted: nothing to abort"):
        await run_command(ctx, f"cluster abort {job.id}")
    with pytest.raises(NotFound, match="no job 999"):
        await run_command(ctx, "cluster abort 999")
    with pytest.raises(CommandError, match="needs one job id"):
        await run_command(ctx, "cluster abort x")
    # A runner whose lease moved on (or a console past its deadline) left a lost job.
    orphan = await jobs.Job.start(client, keys, "reap", "x", runner="n1", runner_private="#e0-9#n1")
    now = await members.server_time_ms(client)
    late = await jobs.Job.start(client, keys, "broadcast", "y", runner="c", deadline_ms=now - 9000)
    states = {j.id: j.state for j in await jobs.list_jobs(client, keys)}
    assert states == {job.id: "aborted", orphan.id: "lost", late.id: "lost"}
    # The manager's job watcher records them as lost, ended: they are trimmed in time.
    assert await jobs.settle_lost(client, keys) == [late.id, orphan.id]
    stored = await client.hget(keys.jobs, str(orphan.id))
    assert stored is not None and jobs.JobRecord.model_validate_json(stored).ended_ms
    assert await jobs.settle_lost(client, keys) == []
    with pytest.raises(RuntimeError):
        async with orphan:
            raise RuntimeError("boom")
    assert (await jobs.get(client, keys, orphan.id)).detail == "RuntimeError: boom"
    text_out = await run_command(ctx, "cluster jobs")
    assert "lost" in str(text_out.data)


async def _a_and_b(
    text: str, urls: tuple[str, str], namespace: str, addresses: list[str]
) -> tuple[Node, Node]:
    """Nodes a and b started (on ``urls``); b recorded each address once and flushed."""
    cfg = parse_config(text)
    a = Node(cfg, "a", urls[0], namespace=namespace)
    b = Node(cfg, "b", urls[1], namespace=namespace)
    await a.start()
    await b.start()
    for address in addresses:
        b.record("inbound_cidr", address, 1)
    await b.flush()
    return a, b


async def test_reaping_is_a_job(redis_server: RedisServer, namespace: str) -> None:
    urls = (redis_server.url, redis_server.url)
    a, b = await _a_and_b(FAST, urls, namespace, [f"10.1.{i}.1" for i in range(100)])
    try:
        await crash(b)
        keys = a.keys

        async def reaped() -> list[jobs.JobRecord]:
            done = [j for j in await jobs.list_jobs(a.client, keys) if j.kind == "reap"]
            return [j for j in done if j.state == "done"]

        await until(reaped, 5, what="a reaping job done")
        [job] = await reaped()
        assert (job.runner, job.total, job.done) == ("a", 100, 100)
        assert "inbound_cidr view #e" in job.what and job.what.endswith("of b")
        assert await a.count("inbound_cidr", "10.0.0.0/8") == 0
    finally:
        await a.stop()


# -- a real agent's long re-sync, aborted ---------------------------------------------------------


async def _views(farm: Farm, obj: str) -> dict[str, str]:
    raw = await farm.client.hgetall(farm.keys.object(obj).views)
    return {text(k): text(v) for k, v in raw.items()}


async def _running_resync(farm: Farm) -> jobs.JobRecord | None:
    for job in await jobs.list_jobs(farm.client, farm.keys):
        mine = job.kind == "resync" and job.state == "running" and job.runner == "n1"
        if mine and job.detail.startswith("publishing") and job.done > 0:
            return job
    return None


async def test_abort_a_long_resync_keeps_views_exact(tmp_path: Path) -> None:
    farm = Farm(tmp_path, heartbeat=0.5, lease_ttl=1.5, extra_cluster="  resync_hold = 1\n")
    proxy = RedisProxy(farm.redis.port)
    await proxy.start()
    try:
        await farm.start("n1", redis_url=proxy.url)
        await farm.start("n2")
        for part in range(4):  # 4,000 distinct addresses: a snapshot of 125 script calls
            events = [{"object": "inbound_cidr", "key": f"10.{part}.{i // 250}.{i % 250}",
                       "delta": 1 + i % 3} for i in range(1000)]  # fmt: skip
            await farm.post("n1", events)
        await farm.post("n1", farm.events("n1", 40))
        await farm.post("n2", farm.events("n2", 40))
        await until(farm.verdict, 10, what="exact before the re-sync")
        apply_sha = hashlib.sha1(script_source("cidrtree_apply").encode()).hexdigest()
        proxy.delay_command[apply_sha.encode()] = 0.05  # every chunk of n1 takes 50 ms more
        await farm.client.delete(farm.keys.lease("n1"))  # n1 finds its lease lost: re-sync
        job = await until_value(lambda: _running_resync(farm), 20, "n1's re-sync publishing")
        ctx = ConsoleContext(farm.client, farm.keys, timeout=10.0)
        record = (await run_command(ctx, f"cluster abort {job.id}")).data
        assert isinstance(record, dict) and record["state"] == "aborted", record
        assert record["detail"].startswith("rolled back"), record
        assert 0 < record["done"] < record["total"]
        # Rolled back: n1 has no view at all, and the global views hold n2's counts only.
        n2 = farm.agents["n2"].private_name
        for obj, kind in (("inbound_cidr", CIDRTREE), ("outbound_domains", GAUGE_TABLE)):
            assert await _views(farm, obj) == {n2: "n2"}
            glob = await farm.listing(obj, "global", via="n2")
            assert glob["rows"] == farm.rows(kind, farm.model_total(obj, ["n2"])), obj
        proxy.delay_command.clear()
        # After resync_hold (1 s) n1 re-syncs again, and every view is exact.
        await until(farm.verdict, 30, what="exact after the retried re-sync")
        states = [j["state"] for j in (await console(farm, "cluster jobs", "--json")).json()["jobs"]
                  if j["kind"] == "resync" and j["runner"] == "n1"]  # fmt: skip
        assert states[:2] == ["done", "aborted"]
    finally:
        await farm.close()
        await proxy.stop()


async def until_value(probe: Any, timeout: float, what: str) -> jobs.JobRecord:
    found: list[jobs.JobRecord] = []

    async def check() -> bool:
        value = await probe()
        if value is not None:
            found.append(value)
        return value is not None

    await until(check, timeout, what=what, interval=0.05)
    return found[-1]


async def test_abort_a_broadcast(ctx: ConsoleContext) -> None:
    client, keys = ctx.client, ctx.keys
    now = await members.server_time_ms(client)
    entry = json.dumps({"type": "Momentum", "seen_ms": now})
    await client.hset(keys.responders, "ghost", entry)  # seen lately, never answers
    slow = dataclasses.replace(ctx, timeout=30.0)
    asking = asyncio.create_task(run_command(slow, "broadcast cluster nodename"))

    async def running() -> list[jobs.JobRecord]:
        found = await jobs.list_jobs(client, keys)
        return [j for j in found if j.kind == "broadcast" and j.running]

    await until(running, 5, what="the broadcast job runs")
    [job] = await running()
    assert (job.what, job.total, job.done) == ("cluster nodename", 1, 0)
    started = asyncio.get_running_loop().time()
    result = await run_command(dataclasses.replace(ctx, timeout=5.0), f"cluster abort {job.id}")
    assert result.data["state"] == "aborted"  # type: ignore[call-overload]
    answered = await asyncio.wait_for(asking, 5)
    assert answered.data == {"ghost": {"ok": False, "error": "aborted"}}
    assert asyncio.get_running_loop().time() - started < 3  # not the 30 s timeout


PAUSE = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.6
  resync_hold = 2
  Replicate "inbound_cidr" {}
}
"""


async def test_abort_pauses_reaping_then_a_new_job_takes_the_rest(
    redis_server: RedisServer, namespace: str
) -> None:
    """Aborting a reap job stops it after its chunk (what it drained stays drained and the
    global view stays the sum of the views), pauses that view for ``resync_hold`` s (no
    new job meanwhile), then a new reap job drains the rest: a dead node's counts leave."""
    proxy = RedisProxy(redis_server.port)
    await proxy.start()
    addresses = [f"10.2.{i // 250}.{i % 250}" for i in range(1000)]
    a, b = await _a_and_b(PAUSE, (proxy.url, redis_server.url), namespace, addresses)
    try:
        view = b.private_name
        apply_sha = hashlib.sha1(script_source("cidrtree_apply").encode()).hexdigest()
        proxy.delay_command[apply_sha.encode()] = 0.05  # every chunk of a's takes 50 ms more
        await crash(b)

        async def reaping() -> jobs.JobRecord | None:
            found = await jobs.list_jobs(a.client, a.keys)
            return next((j for j in found if j.kind == "reap" and j.running and j.done), None)

        job = await until_value(reaping, 10, "a reap job under way")
        ctx = ConsoleContext(a.client, a.keys, timeout=5.0)
        record = (await run_command(ctx, f"cluster abort {job.id}")).data
        assert isinstance(record, dict) and record["state"] == "aborted", record
        done = record["done"]
        assert 0 < done < 1000 and record["total"] == 1000
        assert (
            record["detail"]
            == f"paused for 2 s, then a new job reaps the {1000 - done:,} keys left"
        )
        # Consistent: exactly the drained keys left the global view; the view stays retired.
        okeys = a.keys.object("inbound_cidr")
        assert await a.count("inbound_cidr", "10.0.0.0/8") == 1000 - done
        assert await a.client.hexists(okeys.reaping, view)
        assert 0 < await a.client.pttl(reaper.paused_key(a.keys, okeys, view)) <= 2000
        proxy.delay_command.clear()
        # Paused: no reap job for that view while the pause key lives; then one drains the rest.
        while await a.client.exists(reaper.paused_key(a.keys, okeys, view)):
            found = await jobs.list_jobs(a.client, a.keys)
            assert [j.id for j in found if j.kind == "reap"] == [job.id]
            await asyncio.sleep(0.05)

        async def resumed() -> jobs.JobRecord | None:
            found = await jobs.list_jobs(a.client, a.keys)
            return next((j for j in found if j.kind == "reap" and j.state == "done"), None)

        again = await until_value(resumed, 10, "a new reap job done")
        assert again.id > job.id and again.what == job.what
        assert await a.count("inbound_cidr", "10.0.0.0/8") == 0
        assert not await a.client.hexists(okeys.reaping, view)
    finally:
        await a.stop()
        await proxy.stop()
