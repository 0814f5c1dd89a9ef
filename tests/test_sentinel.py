"""Sentinel: agents on ``redis+sentinel://`` follow a failover that lost acknowledged
writes (replication held back, then the master killed under load), notice the loss and
re-sync, so the views are exact again within down-after-milliseconds + 2 s of the
promotion."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.agents import Load, until
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
