"""Sentinel: agents on ``redis+sentinel://`` follow a failover that lost acknowledged
writes (replication held back, then the master killed under load), notice the loss and
re-sync, so the views are exact again within down-after-milliseconds + 2 s of the
promotion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

from mcluster.objects.kinds import CIDRTREE, GAUGE_TABLE, Kind
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts
from tests.agents import Load, until
from tests.redis_servers import RedisServer
from tests.sentinels import SentinelGroup, UrlFarm

DOWN_AFTER_MS = 1000


@pytest.fixture
async def group() -> AsyncIterator[SentinelGroup]:
    group = await SentinelGroup.start(down_after_ms=DOWN_AFTER_MS)
    yield group
    await group.stop()


@pytest.mark.slow
async def test_agents_follow_a_failover_that_lost_writes(
    group: SentinelGroup, tmp_path: Path
) -> None:
    farm = UrlFarm(tmp_path, redis_server=group.master, heartbeat=0.5, lease_ttl=1.5)
    farm.client_url = group.url
    try:
        await farm.start("n1", "n2", redis_url=group.url, timeout=60)
        async with Load(farm):
            await asyncio.sleep(1.0)
            await until(farm.verdict, 30, what="views exact before the failover")
            group.proxy.cut = True  # from now on the replica misses what the master applies
            await asyncio.sleep(1.0)
            await farm.flush_all()  # acknowledged by the master, never replicated
            assert group.proxy.dropped > 0
            group.kill_master()
            promoted = await group.wait_promoted(30)
            await asyncio.sleep(0.5)  # load goes on against the new master
        exact = await until(farm.verdict, 30, what="views exact after the failover")
        settled = time.monotonic() - group.killed_at
        resyncs = [ln for a in farm.agents.values() for ln in a.log_lines("re-syncing")]
        print(
            f"promoted {promoted:.2f} s after the kill; views exact {settled:.2f} s after "
            f"the kill ({exact:.2f} s of checking); re-syncs: {resyncs}"
        )
        assert resyncs, "no agent noticed the lost writes:\n" + farm.logs()
        assert settled - promoted <= DOWN_AFTER_MS / 1000 + 2 + 0.5, (settled, promoted)
    finally:
        await farm.close()


@pytest.mark.parametrize("kind", [CIDRTREE, GAUGE_TABLE], ids=["cidrtree", "gauge"])
async def test_a_batch_after_lost_batches_is_refused(
    any_redis: RedisServer, namespace: str, kind: Kind
) -> None:
    """Redis 7 and 6.2: a delta batch whose predecessors Redis does not hold (lost in a
    failover) is refused as STALE, never applied on top of the gap; in order it applies."""
    client = make_async_client(any_redis.url)
    scripts = Scripts(client)
    okeys = ClusterKeys(namespace).object("o")
    key = kind.parse_key("10.0.0.1" if kind is CIDRTREE else "example.com")
    try:
        await client.hset(okeys.views, "v1", "n1")

        async def apply(seq: int, delta: int) -> Any:
            call_keys, args = kind.apply_call(okeys, "v1", {key: delta}, seq, "d")
            return await scripts.run(kind.script, call_keys, args)

        assert (await apply(1, 3))[0] == 1
        with pytest.raises(ResponseError, match="STALE view v1 lost batches: Redis holds batch 1"):
            await apply(3, -2)
        assert int(await client.hget(okeys.seq, "v1") or 0) == 1
        assert list(await apply(2, -2)) == [1, 0, 2]  # no anomaly: nothing clamped
        assert list(await apply(2, -2)) == [0, 0, 2]  # a repeat is still a repeat
    finally:
        await client.aclose()
