"""The default DuraVIP command on a real interface: root only, in a network namespace the
test creates (nothing on the host changes). The agent runs inside the namespace and
reaches Redis through a unix socket (shared across network namespaces)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents import until
from tests.redis_servers import path_redis_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and the ip command"
)

ADDRESS = "10.200.0.50"
CONFIG = """
cluster {{
  namespace = "netns"
  heartbeat_interval = 0.3
  lease_ttl = 1.0
  duravip_interface = "vip0"
  duravip_command_timeout = 5
  Replicate "inbound_cidr" {{}}
}}
Binding "b50" {{ Bind_Address = "{address}"  Enable_Duravip = true }}
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with lo up and an interface ``vip0`` (dummy, else veth)."""
    name = "mcdv" + uuid.uuid4().hex[:8]
    if ip("netns", "add", name, check=False).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    try:
        made = ip("-n", name, "link", "add", "vip0", "type", "dummy", check=False)
        if made.returncode != 0:  # no dummy driver in this kernel: a veth pair will do
            ip("-n", name, "link", "add", "vip0", "type", "veth", "peer", "name", "vip1")
        ip("-n", name, "link", "set", "vip0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        ip("netns", "del", name, check=False)


@pytest.fixture
def unix_redis() -> Iterator[str]:
    binary = path_redis_server() or shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="mcdv-redis-"))
    sock = workdir / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sock.exists(), "redis-server did not open its unix socket"
        yield f"unix://{sock}"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def addresses(ns: str) -> str:
    return ip("-n", ns, "-o", "addr", "show", "dev", "vip0").stdout


async def console(url: str, command: str) -> object:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mcluster", "console", "--redis", url, "--namespace", "netns",
        "--json", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_default_command_plumbs_a_real_interface(
    netns: str, unix_redis: str, tmp_path: Path
) -> None:
    config = tmp_path / "netns.conf"
    config.write_text(CONFIG.format(address=ADDRESS))
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "mcluster", "agent",
             "--config", str(config), "--node", "n1", "--listen", "127.0.0.1:4802"],
            env={**os.environ, "MCLUSTER_REDIS_URL": unix_redis}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        await until(lambda: f"{ADDRESS}/32" in addresses(netns), 20, what="address plumbed")
        assert f"{ADDRESS}/32" not in ip("-o", "addr", "show").stdout  # the host is untouched
        shown = await console(unix_redis, "cluster duravip show")
        assert shown == [
            {"address": ADDRESS, "bindings": ["b50"], "owner": "n1",
             "state": ["owned", "safe"], "candidates": ["n1"]},
        ]  # fmt: skip
        mac = subprocess.run(
            ["ip", "netns", "exec", netns, "cat", "/sys/class/net/vip0/address"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

        async def arp_lists_it() -> bool:
            rows = await console(unix_redis, "cluster arp show")
            assert isinstance(rows, list)
            return {"address": ADDRESS, "mac": mac, "node": "n1"} in [
                {k: r[k] for k in ("address", "mac", "node")} for r in rows
            ]

        await until(arp_lists_it, 10, what="arp show lists the DuraVIP with vip0's MAC")
        agent.send_signal(signal.SIGTERM)  # a clean stop unplumbs it
        agent.wait(timeout=30)
        assert f"{ADDRESS}/32" not in addresses(netns)
        assert "DuraVIP down 10.200.0.50: done" in log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
