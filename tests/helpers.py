"""Shared test helpers: a config, a model of what the views must hold, a reply-dropping proxy."""

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


class DroppingProxy:
    """A loopback TCP proxy to Redis that can swallow the reply to one EVALSHA.

    When armed, it forwards the next EVALSHA to Redis, waits until Redis has answered
    (so the script really ran), then closes the client's connection instead of passing
    the reply on: the client sees a lost reply and must retry.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        drop_next_reply = asyncio.Event()

        async def upstream() -> None:
            while data := await creader.read(65536):
                if self.armed and b"EVALSHA" in data.upper():
                    self.armed = False
                    drop_next_reply.set()
                swriter.write(data)
                await swriter.drain()
            swriter.close()

        async def downstream() -> None:
            while data := await sreader.read(65536):
                if drop_next_reply.is_set() and not data.startswith(b"-"):
                    self.dropped += 1
                    cwriter.close()
                    swriter.close()
                    return
                if drop_next_reply.is_set():  # an error (NOSCRIPT): drop the retry's reply
                    self.armed = True
                    drop_next_reply.clear()
                cwriter.write(data)
                await cwriter.drain()
            cwriter.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            pass
        finally:
            cwriter.close()
            swriter.close()


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
