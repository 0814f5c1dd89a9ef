"""The cluster manager (Momentum's eccmgr): a member of type ``Manager`` that carries no
mail and no views, answers console requests, and runs the cluster's background services.

    manager = Manager(config, redis_url)
    manager.add_service("jobs", lambda: settle_jobs(manager))  # any long-running coroutine
    await manager.start()
    ...
    await manager.stop()

It holds a lease like a node (so ``cluster membership`` lists it, Node Type ``Manager``)
but never takes the leader lease: reaping stays with the nodes. Each service is an async
task; one that fails is logged and restarted after a pause, so a log consumer or a job
watcher can be added without touching the rest.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import socket
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from mcluster.agent import membership
from mcluster.agent.outbox import RETRY_ERRORS, wait_event
from mcluster.agent.reload import reload_in_background
from mcluster.agent.results import ReloadResult, ResetResult
from mcluster.config import ClusterConfig, load_config
from mcluster.config.connection import configured_redis_url, resolve_namespace
from mcluster.store import jobs, members
from mcluster.store.connect.urls import make_async_client, resolve_redis_url
from mcluster.store.keys import ClusterKeys, check_name
from mcluster.store.members import MANAGER_TYPE
from mcluster.store.retry import worth_logging
from mcluster.store.scripts import Scripts

__all__ = ["MANAGER_GROUPS", "MANAGER_TYPE", "Manager", "default_name", "run_manager"]

log = logging.getLogger("mcluster.manager")

MANAGER_GROUPS = ("ec_cluster",)
#: Seconds before a failed service is started again.
RESTART_PAUSE = 1.0
#: Seconds between two looks of the job watcher for jobs whose runner is gone.
JOBS_EVERY = 5.0

Service = Callable[[], Awaitable[None]]


def default_name() -> str:
    """``manager-HOST`` (the host name reduced to the characters a member name allows)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "host"
    return check_name("node", f"manager-{host}"[:128])


class Manager:
    """A ``Manager`` member: lease and heartbeat, console requests, and services."""

    def __init__(
        self,
        config: ClusterConfig | None,
        redis_url: str | None = None,
        *,
        name: str | None = None,
        namespace: str | None = None,
        client: Redis | None = None,
    ) -> None:
        self.config = config
        self.name = check_name("node", name or default_name())
        self.keys = ClusterKeys(resolve_namespace(namespace, config))
        beat = config.get_float("heartbeat_interval", 1.0, above=0) if config else 1.0
        self.heartbeat_interval = beat
        self.lease_ttl = config.get_float("lease_ttl", 3.0, above=beat) if config else 3.0
        self.rejoins = 0
        if client is None:
            url = resolve_redis_url(redis_url, configured=configured_redis_url(config))
            client = make_async_client(url)
        self.client = client
        self.scripts = Scripts(self.client)
        #: Record, lease and heartbeat, as a node's (``agent/membership.py``); it never
        #: takes the leader lease (``leader_ttl`` 0): reaping stays with the nodes.
        self.membership = membership.Member(
            lambda: self.scripts, self.keys, self.name, lease_ttl=self.lease_ttl,
            node_type=MANAGER_TYPE, groups=MANAGER_GROUPS,
        )  # fmt: skip
        self._services: list[tuple[str, Service]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._wake = asyncio.Event()
        self._membership = asyncio.Lock()

    @property
    def member(self) -> members.Member | None:
        """The manager's member record, None while it has not joined."""
        return self.membership.record

    @property
    def incarnation(self) -> str:
        return self.membership.incarnation

    @property
    def stopping(self) -> bool:
        return self._stopping

    def configured(self) -> list[tuple[str, str]]:
        return [(o.name, o.type) for o in self.config.objects] if self.config else []

    def add_service(self, name: str, service: Service) -> None:
        """Run ``service()`` for as long as the manager runs (restarted if it fails)."""
        self._services.append((name, service))
        if self.member is not None:
            self._tasks.append(asyncio.create_task(self._keep(name, service), name=name))

    async def start(self) -> None:
        await self._join()
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        for name, service in self._services:
            self._tasks.append(asyncio.create_task(self._keep(name, service), name=name))

    async def stop(self) -> None:
        """Stop the services and leave: the member record and the lease go at once."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []
        if self.member is not None:
            try:
                async with asyncio.timeout(5.0):
                    await self.membership.leave()
            except (TimeoutError, *RETRY_ERRORS) as exc:
                log.error("could not leave the cluster (%r); the lease will expire", exc)
            self.membership.record = None
        await self.client.aclose()

    async def _join(self) -> None:
        member = await self.membership.join()
        log.info("manager joined as %s", member.private_name)

    async def reset(self) -> ResetResult:
        """``cluster reset`` on the manager: rejoin with a new epoch (it has no views)."""
        async with self._membership:  # never at once with a heartbeat's rejoin
            if self.member is not None:
                await self.membership.leave()
            await self._join()
            self.rejoins += 1
        assert self.member is not None
        return ResetResult(self.name, self.member.private_name, self.member.epoch, 0)

    async def reload(self) -> ReloadResult:
        """``config reload`` on the manager: re-read its config (services read it anew)."""
        if self.config is None or not self.config.source:
            return ReloadResult(self.name, None, reason="started without --config")
        self.config = load_config(self.config.source)
        return ReloadResult(self.name, self.config.source)

    async def _keep(self, name: str, service: Service) -> None:
        while not self._stopping:
            try:
                await service()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("manager service %s failed; restarting it", name)
                await asyncio.sleep(RESTART_PAUSE)

    async def _heartbeat_loop(self) -> None:
        """Renew the lease (never the leader's); rejoin when the lease or the data is lost.
        Nothing but a cancel or stop ends it."""
        failures = 0
        while not self._stopping:
            await wait_event(self._wake, self.heartbeat_interval)
            member = self.member
            if member is None:
                continue
            try:
                async with self._membership:
                    if self.member is not member:  # a reset rejoined meanwhile
                        continue
                    beat = await self.membership.beat(member)
                    if not beat.lease or not beat.same_data:
                        log.warning("the manager's lease was lost; rejoining")
                        await self._join()
                failures = 0
            except RETRY_ERRORS as exc:
                failures += 1
                if worth_logging(failures):
                    log.error("manager heartbeat failed (%d in a row): %s", failures, exc)
            except Exception:  # any other error (READONLY, OOM, a script error): beat on,
                failures += 1  # or the manager would silently lose its membership for good
                if worth_logging(failures):
                    log.exception("manager heartbeat failed (%d in a row)", failures)


async def settle_jobs(manager: Manager, every: float = JOBS_EVERY) -> None:
    """The manager's job watcher: jobs whose runner is gone are recorded as ``lost``."""
    while not manager.stopping:
        try:
            await jobs.settle_lost(manager.client, manager.keys)
        except RETRY_ERRORS as exc:
            log.warning("job watcher: Redis error (%s)", exc)
        await asyncio.sleep(every)


async def run_manager(
    config: ClusterConfig | None,
    redis_url: str | None,
    name: str | None = None,
    namespace: str | None = None,
) -> None:
    """``mcluster manager``: run in the foreground until SIGTERM/SIGINT; SIGHUP reloads."""
    from mcluster.console.serve import serve_console  # the manager answers the console
    from mcluster.logs.collector import collect_logs

    manager = Manager(config, redis_url, name=name, namespace=namespace)
    manager.add_service(
        "console",
        lambda: serve_console(
            manager.client,
            manager.keys,
            manager,
            manager.configured,
            lambda: manager.stopping,
            MANAGER_TYPE,
        ),
    )
    manager.add_service("logs", lambda: collect_logs(manager))  # the nodes' log streams
    manager.add_service("jobs", lambda: settle_jobs(manager))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_in_background(manager.reload, log))
    try:
        await manager.start()
        assert manager.member is not None
        log.info("manager %s running", manager.member.private_name)
        await stopping.wait()
    finally:
        await manager.stop()
