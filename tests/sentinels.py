"""A Sentinel-managed Redis for tests and benchmarks: a master behind a loopback proxy (so
a test can hold replication back and make a failover lose acknowledged writes), a replica,
and three sentinels, all on free loopback ports in tmp dirs.

    group = await SentinelGroup.start(down_after_ms=1000)
    url = group.url                       # redis+sentinel://127.0.0.1:P1,.../mymaster/0
    group.proxy.cut = True                # the replica stops receiving writes
    group.kill_master()                   # SIGKILL; the sentinels promote the replica
    took = await group.wait_promoted(30)  # seconds until they name the replica master
    await group.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import redis.asyncio

from mcluster.store.connect.urls import make_async_client
from tests.agents import Farm
from tests.redis_servers import RedisServer, free_port, path_redis_server, start_redis

MASTER_NAME = "mymaster"


class UrlFarm(Farm):
    """A farm whose own checks read Redis through mcluster's client for ``client_url``
    (a Sentinel or TLS URL), as its agents do."""

    client_url = ""

    @property
    def client(self) -> redis.asyncio.Redis:
        if self._client is None:
            self._client = make_async_client(self.client_url)
        return self._client


class ReplicationProxy:
    """Forwards connections to the master. Everyone reaches the master through it (the
    sentinels monitor this address, so they see the replica following "the master" and
    leave it be); with ``cut`` set, what the master sends on a replica's connection is
    dropped (the replica falls behind; the master does not notice)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut = False
        self.dropped = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cwriter.close()
            return
        self._writers |= {cwriter, swriter}
        replica = False  # this connection is a replica's (it sent SYNC or PSYNC)

        async def upstream() -> None:
            nonlocal replica
            with contextlib.suppress(ConnectionError, OSError):
                while data := await creader.read(65536):
                    replica = replica or b"SYNC" in data.upper()
                    swriter.write(data)
                    await swriter.drain()

        async def downstream() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await sreader.read(65536):
                    if replica and self.cut:
                        self.dropped += len(data)
                        continue
                    cwriter.write(data)
                    await cwriter.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:  # either side closing closes both, as a killed process's sockets do
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the loop ends
        finally:
            for task in tasks:
                task.cancel()
            cwriter.close()
            swriter.close()
            self._writers -= {cwriter, swriter}


@dataclass
class SentinelGroup:
    master: RedisServer
    replica: RedisServer
    proxy: ReplicationProxy
    down_after_ms: int
    workdir: Path
    sentinels: list[tuple[int, subprocess.Popen[bytes]]] = field(default_factory=list)
    killed_at: float = 0.0

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port, _ in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    @classmethod
    async def start(
        cls, down_after_ms: int = 1000, failover_timeout_ms: int = 3000
    ) -> SentinelGroup:
        binary = path_redis_server()
        if binary is None:
            import pytest

            pytest.skip("Sentinel needs redis-server on PATH")
        master = start_redis(binary)
        proxy = ReplicationProxy(master.port)
        await proxy.start()
        replica = start_redis(binary, "--replicaof", "127.0.0.1", str(proxy.port))
        group = cls(
            master, replica, proxy, down_after_ms, Path(tempfile.mkdtemp(prefix="mc-sent-"))
        )
        try:
            await group._wait(group._replica_synced, 20, "replica in sync")
            for i in range(3):
                group._start_sentinel(binary, i, failover_timeout_ms)
            await group._wait(group._sentinels_ready, 30, "sentinels see replica and each other")
        except BaseException:
            await group.stop()
            raise
        return group

    def _start_sentinel(self, binary: str, i: int, failover_timeout_ms: int) -> None:
        port = free_port()
        folder = self.workdir / f"s{i}"
        folder.mkdir()
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.proxy.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        proc = subprocess.Popen(
            [binary, str(conf), "--sentinel"],
            stdout=(folder / "sentinel.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.sentinels.append((port, proc))

    def sentinel_client(self, i: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinels[i][0], socket_timeout=2,
                           socket_connect_timeout=2, decode_responses=True)  # fmt: skip

    def _replica_synced(self) -> bool:
        info = self.replica.client().info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        for i in range(len(self.sentinels)):
            try:
                with self.sentinel_client(i) as s:
                    if len(s.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)) < 1:
                        return False
                    if len(s.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)) < 2:
                        return False
            except redis.RedisError:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for i in range(len(self.sentinels)):
            with contextlib.suppress(redis.RedisError), self.sentinel_client(i) as s:
                addr = s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                return int(addr[1]) if addr else None
        return None

    def kill_master(self) -> float:
        """SIGKILL the master (no persistence); returns the monotonic time of the kill."""
        self.killed_at = time.monotonic()
        self.master.proc.kill()
        self.master.proc.wait()
        return self.killed_at

    async def wait_promoted(self, timeout: float = 30.0) -> float:
        """Seconds from the kill until the sentinels name the replica as master and it
        answers as one."""

        def promoted() -> bool:
            if self.master_port() != self.replica.port:
                return False
            return self.replica.client().info("replication").get("role") == "master"

        await self._wait(promoted, timeout, "the replica promoted")
        return time.monotonic() - self.killed_at

    async def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(check):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for _, proc in self.sentinels:
            proc.kill()
            proc.wait()
        for server in (self.replica, self.master):
            if server.proc.poll() is None:
                server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
        await self.proxy.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
