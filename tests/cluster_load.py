"""Steady load on a farm of in-process nodes, and the check that every view is exact.

Used by the Cluster chaos tests and ``benchmarks/cluster.py``: three nodes record into a
CIDR tree and a gauge table (about 1,000 events/s each) while Redis changes under them;
``wait_exact`` then polls until global == sum of node views == what the nodes recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects.kinds import CIDRTREE, GAUGE_TABLE
from tests.helpers import Model, until

CONFIG = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 5
  Replicate "inbound_cidr" { max_delay = 0.05 }
  Replicate "outbound_domains" { max_delay = 0.05 }
}
"""
#: The same objects split into shards (over several masters on a Cluster).
SHARDED_CONFIG = CONFIG.replace("max_delay = 0.05 }", "max_delay = 0.05 shards = 4 }")
DOMAINS = ["aol.com", "gmail.com", "yahoo.com", "omniti.com"]
OBJECTS = (("inbound_cidr", CIDRTREE), ("outbound_domains", GAUGE_TABLE))


class Load:
    """``count`` nodes and a driver task recording random events until ``stop``."""

    def __init__(
        self,
        url: str,
        namespace: str,
        count: int = 3,
        seed: int = 7,
        config: str = CONFIG,
        blocks: tuple[int, ...] = (10,),
    ) -> None:
        cfg = parse_config(config)
        self.blocks = blocks  # the /8s the addresses are drawn from
        self.nodes = [Node(cfg, f"relay-0-{i + 1}", url, namespace=namespace) for i in range(count)]
        self.model = Model()
        self.rng = random.Random(seed)
        self._stop = asyncio.Event()
        self._driver: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for node in self.nodes:
            await node.start()
        self._stop.clear()
        self._driver = asyncio.create_task(self._drive())

    async def _drive(self) -> None:
        rng, nodes = self.rng, self.nodes
        while not self._stop.is_set():
            i = rng.randrange(len(nodes))
            block = rng.choice(self.blocks)
            addr = f"{block}.{rng.randrange(3)}.{rng.randrange(256)}.{rng.randrange(256)}"
            for obj, key in (("inbound_cidr", addr), ("outbound_domains", rng.choice(DOMAINS))):
                nodes[i].record(obj, key, 1)
                self.model.record(i, obj, key, 1)
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        """Stop recording (the nodes stay)."""
        self._stop.set()
        if self._driver is not None:
            await self._driver
            self._driver = None
        self.model.flush()

    async def exact(self) -> bool:
        await asyncio.gather(*(n.flush() for n in self.nodes))
        count = len(self.nodes)
        for obj, kind in OBJECTS:
            expected = [("global", self.model.global_view(obj, count))]
            expected += [(f"relay-0-{i + 1}", self.model.node_view(i, obj)) for i in range(count)]
            for view, counts in expected:
                listing = await self.nodes[0].show(obj, view, limit=None)
                if listing.rows != kind.model_rows(counts):
                    return False
        return True

    async def wait_exact(self, timeout: float = 60.0) -> float:
        """Stop recording, then seconds until every view is exact."""
        await self.stop()
        return await until(self.exact, timeout, "every view exact again")

    async def close(self) -> None:
        await self.stop()
        for node in self.nodes:
            await node.stop()


@contextlib.asynccontextmanager
async def under_load(url: str, namespace: str, **options: Any) -> AsyncIterator[Load]:
    """A running Load; when the block ends, every view must be exact within 60 s."""
    load = Load(url, namespace, **options)
    await load.start()
    try:
        await asyncio.sleep(0.5)  # batches are flowing before Redis changes
        yield load
        await load.wait_exact(60.0)
    finally:
        await load.close()
