"""Shared test helpers: a config, a model of what the views must hold, crash() and until()."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from mcluster.agent.node import Node
from mcluster.config import ClusterConfig, parse_config
from mcluster.faces.policy import Garbage, PolicyService, cut_request
from mcluster.objects.policy import policy_config
from mcluster.security.clients import policy_guard
from tests.redis_cluster import AnyRedis, RedisCluster

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


def cpu_wait(*pids: int) -> float:
    """Seconds this process and the processes ``pids`` (say the redis-servers) have spent
    runnable but waiting for a CPU: the second field of /proc/PID/schedstat (the main
    thread's, where asyncio runs), summed; 0.0 where Linux does not report it.

    A bound on how soon something happens (a new leader, a reaping, a deadline) is about
    lease time and Redis time; on a loaded machine (tests run under ``nice -n 19``) the
    processes also wait for a CPU, and that wait is not the product's to answer for."""
    total = 0.0
    for pid in ("self", *pids):
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return total


async def until_running(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, pids: tuple[int, ...] = ()
) -> float:
    """``until``, with ``timeout`` counting only the time the processes could run (see
    ``cpu_wait``): returns the seconds taken, less the CPU waits meanwhile."""
    start, waited = time.monotonic(), cpu_wait(*pids)
    while not await check():
        took = time.monotonic() - start - (cpu_wait(*pids) - waited)
        if took > timeout:
            raise AssertionError(f"not within {timeout} s (CPU waits excluded): {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start - (cpu_wait(*pids) - waited)


def redis_pids(server: AnyRedis) -> tuple[int, ...]:
    """The redis-server processes behind ``server`` (every node of a Redis Cluster)."""
    nodes = server.nodes if isinstance(server, RedisCluster) else [server]
    return tuple(n.proc.pid for n in nodes)


@contextlib.asynccontextmanager
async def started_nodes(
    text: str, redis_url: str, namespace: str, count: int = 3
) -> AsyncIterator[list[Node]]:
    """Nodes ``relay-0-1`` .. ``relay-0-COUNT`` of one config text, started in that order,
    stopped in that order at the end."""
    config = parse_config(text)
    made = [
        Node(config, f"relay-0-{i}", redis_url, namespace=namespace) for i in range(1, count + 1)
    ]
    for node in made:
        await node.start()
    try:
        yield made
    finally:
        for node in made:
            await node.stop()


@contextlib.asynccontextmanager
async def policy_service(text: str, redis_url: str, namespace: str) -> AsyncIterator[PolicyService]:
    """A node ``relay-1`` of the config ``text`` and its policy service on a free loopback
    port (``svc.port``), its Policy scope and guard taken from the same config."""
    config = parse_config(text)
    async with Node(config, "relay-1", redis_url, namespace=namespace) as node:
        svc = PolicyService(node, policy_config(config), policy_guard(config))
        await svc.start("127.0.0.1", 0)
        try:
            yield svc
        finally:
            await svc.stop()


def requests_of(*chunks: bytes, into: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """The requests in a stream that arrives in ``chunks`` (appended to ``into`` as they
    come), cut as a policy connection cuts them (``cut_request`` on its buffer after each
    read); Garbage as the connection raises it, and for a request left unfinished when
    the stream ends."""
    out: list[dict[str, str]] = [] if into is None else into
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while True:
            attrs, used = cut_request(buffer)
            if attrs is None:
                break
            out.append(attrs)
            buffer = buffer[used:]
    if buffer:
        raise Garbage("the connection closed in the middle of a request")
    return out
