"""``mcluster agent``: the long-running sidecar beside one MTA node."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from aiohttp import web

from mcluster.agent.node import Node
from mcluster.agent.reload import reload_in_background
from mcluster.config import ClusterConfig
from mcluster.console.serve import serve_console
from mcluster.faces.http.app import make_app
from mcluster.faces.listen import UnixAddress, split_listen
from mcluster.faces.policy import PolicyService
from mcluster.objects.policy import policy_config
from mcluster.security.clients import policy_guard
from mcluster.security.http_guard import HttpGuard

log = logging.getLogger("mcluster.agent")

DEFAULT_LISTEN = "127.0.0.1:4802"


async def run_agent(
    config: ClusterConfig,
    node_name: str,
    redis_url: str | None,
    listen: str,
    policy: tuple[str, int] | UnixAddress | None = None,
    namespace: str | None = None,
    guard: HttpGuard | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve the HTTP API (behind ``guard``, over TLS with ``tls``) and the Postfix policy
    service (on ``policy``, as ``faces.listen.policy_address`` parsed it once, before the
    join), join, and run until SIGTERM/SIGINT; then flush and leave. SIGHUP reloads the
    config and re-reads the API token file."""
    host, port = split_listen(listen)
    guard = guard or HttpGuard()
    node = Node(config, node_name, redis_url, namespace=namespace, address=listen)
    node.refusals = guard.refusals  # one count of every guard's refusals per agent
    service = None
    if policy:
        service = PolicyService(node, policy_config(config), policy_guard(config), guard.refusals)
    runner = web.AppRunner(
        make_app(node, service, guard),
        access_log=None,
        keepalive_timeout=guard.limits.idle_timeout,
    )
    await runner.setup()
    http = await guard.serve(runner, host, port, tls)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    def hangup() -> None:
        if guard.token is not None:
            guard.token.reload()
        reload_in_background(node.reload)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    console: asyncio.Task[None] | None = None
    try:
        await node.start()
        console = asyncio.create_task(serve_console(
            node.client, node.keys, node, lambda: [(o.name, o.type) for o in node.config.objects],
            stopping.is_set,
        ))  # fmt: skip
        scheme = "https" if tls else "http"
        log.info("agent %s serving %s://%s", node.private_name, scheme, listen)
        if service is not None and policy is not None:
            if isinstance(policy, UnixAddress):
                await service.start_unix(policy.path)
            else:
                await service.start(*policy)
            log.info("Postfix policy service on %s", policy)
        await stopping.wait()
        log.info("stopping: flushing and leaving the cluster")
    finally:
        if service is not None:
            await service.stop()
        if console is not None:
            console.cancel()
        await node.stop()
        http.close()
        await runner.cleanup()
