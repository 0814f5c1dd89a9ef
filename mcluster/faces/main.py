"""``mcluster agent``: the long-running sidecar beside one MTA node."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from mcluster.agent.node import Node
from mcluster.config import ClusterConfig
from mcluster.console.serve import serve_console
from mcluster.faces.http.app import make_app
from mcluster.faces.policy import PolicyService
from mcluster.manager.manager import reload_in_background
from mcluster.objects.policy import policy_config

log = logging.getLogger("mcluster.agent")

DEFAULT_LISTEN = "127.0.0.1:4802"


def split_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:4802`` or ``[::1]:4802`` -> (host, port), with a clear error."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"bad listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:4802")
    return host.strip("[]"), int(port)


async def run_agent(
    config: ClusterConfig,
    node_name: str,
    redis_url: str | None,
    listen: str,
    policy: str | None = None,
    namespace: str | None = None,
) -> None:
    """Serve the HTTP API (and the Postfix policy service), join, and run until
    SIGTERM/SIGINT; then flush and leave."""
    host, port = split_listen(listen)
    node = Node(config, node_name, redis_url, namespace=namespace, address=listen)
    service = PolicyService(node, policy_config(config)) if policy else None
    runner = web.AppRunner(make_app(node, service), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_in_background(node.reload))
    console: asyncio.Task[None] | None = None
    try:
        await node.start()
        console = asyncio.create_task(serve_console(
            node.client, node.keys, node, lambda: [(o.name, o.type) for o in node.config.objects],
            stopping.is_set,
        ))  # fmt: skip
        log.info("agent %s serving http://%s", node.private_name, listen)
        if service is not None and policy is not None:
            await service.start(*split_listen(policy))
            log.info("Postfix policy service on %s", policy)
        await stopping.wait()
        log.info("stopping: flushing and leaving the cluster")
    finally:
        if service is not None:
            await service.stop()
        if console is not None:
            console.cancel()
        await node.stop()
        await runner.cleanup()
