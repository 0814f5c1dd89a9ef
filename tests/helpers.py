"""Shared test helpers: a config, a model of what the views must hold, crash() and until()."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mcluster.agent.node import Node
from mcluster.config import ClusterConfig, parse_config

CONFIG_TEXT = """
cluster {
  Replicate "inbound_cidr" {}
  Replicate "outbound_domains" {}
  Replicate "outbound_binding_domains" {}
}
"""


def config() -> ClusterConfig:
    return parse_config(CONFIG_TEXT, "test.conf")


@dataclass
class Model:
    """What every view must hold: per node per object per key, clamped at zero per batch."""

    counts: dict[tuple[int, str], dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    pending: dict[tuple[int, str], dict[str, int]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    anomalies: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def record(self, node: int, obj: str, key: str, delta: int) -> None:
        box = self.pending[(node, obj)]
        box[key] = box.get(key, 0) + delta

    def flush(self) -> None:
        for (node, obj), deltas in self.pending.items():
            view = self.counts[(node, obj)]
            for key, delta in deltas.items():
                new = view.get(key, 0) + delta
                if new < 0:
                    self.anomalies[node] += -new
                    new = 0
                view[key] = new
        self.pending.clear()

    def node_view(self, node: int, obj: str) -> dict[str, int]:
        return {k: v for k, v in self.counts[(node, obj)].items() if v}

    def global_view(self, obj: str, nodes: int) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for n in range(nodes):
            for k, v in self.node_view(n, obj).items():
                total[k] += v
        return dict(total)


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    """Poll ``check`` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def crash(node: Node) -> None:
    """Stop a node's tasks without leaving: to the cluster it simply went silent."""
    for task in node._tasks:
        task.cancel()
    for task in node._tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    node._tasks = []
    node.member = None
    await node.stop()
