"""The policy service on a Unix socket (``--policy unix:/path``, mcluster/faces/listen.py):
a real Postfix asks it with ``check_policy_service unix:...``; the socket is open to every
local user, a file left by a dead agent is replaced, one still served is not, and the
file goes when the agent stops."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mcluster.faces.listen import SOCKET_MODE, ListenError, UnixAddress, claim, policy_address
from tests.helpers import policy_service
from tests.postfix import request
from tests.postfix_server import missing, mx_farm
from tests.redis_servers import RedisServer

CONF = """
cluster {
  Replicate "inbound_cidr" {}
}
Policy {
  Quota "per_user" { key = "sasl_username"  limit = "2/60" }
}
"""


def test_addresses() -> None:
    assert policy_address("127.0.0.1:10031") == ("127.0.0.1", 10031)
    assert policy_address("unix:/run/mcluster/policy") == UnixAddress(Path("/run/mcluster/policy"))
    with pytest.raises(ListenError, match="expected unix:/absolute/path"):
        policy_address("unix:private/mcluster")
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        policy_address("10031")


def test_claim_replaces_a_dead_socket_and_refuses_a_served_one(tmp_path: Path) -> None:
    path = tmp_path / "p.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: an agent killed with -9
    claim(path)
    assert not path.exists()
    served = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    served.bind(str(path))
    served.listen()
    try:
        with pytest.raises(ListenError, match="another process serves it"):
            claim(path)
    finally:
        served.close()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(ListenError, match="exists and is not a socket"):
        claim(path)
    with pytest.raises(ListenError, match="no folder"):
        claim(tmp_path / "nowhere" / "p.sock")


async def test_served_on_a_unix_socket_then_removed(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    path = tmp_path / "policy.sock"
    async with policy_service(CONF, redis_server.url, namespace) as tcp:
        await tcp.stop()  # the helper serves on TCP: this test serves the same on a socket
        await tcp.start_unix(path)
        assert stat.S_IMODE(path.stat().st_mode) == SOCKET_MODE
        reader, writer = await asyncio.open_unix_connection(str(path))
        got = []
        for i in range(3):
            writer.write(request("RCPT", "10.9.0.1", f"u.{i}", recipient="b@x.org", login="uma"))
            async with asyncio.timeout(10):
                got.append((await reader.readuntil(b"\n\n")).decode())
        writer.close()
        assert got[:2] == ["action=DUNNO\n\n"] * 2, got
        assert got[2].startswith('action=DEFER_IF_PERMIT 4.7.1 quota "per_user"'), got
        assert tcp.refusals.get("policy", "not_allowed") == 0
        await tcp.stop()
        assert not path.exists()


def test_agent_refuses_a_relative_socket_path(tmp_path: Path) -> None:
    config = tmp_path / "a.conf"
    config.write_text(CONF)
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "agent", "--config", str(config), "--node", "n1",
         "--policy", "unix:private/mcluster"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "expected unix:/absolute/path" in result.stderr


@pytest.mark.skipif(bool(missing()), reason=missing() or "")
async def test_postfix_asks_over_a_unix_socket(tmp_path: Path) -> None:
    """smtpd's ``check_policy_service unix:PATH``: the quota holds; an agent killed with
    -9 and started again serves on the same path; stopped, it removes the file."""
    async with mx_farm(tmp_path, CONF.split("\n}\n", 1)[1], listeners=1, unix=True) as mx:
        path = mx.postfix.policy_ports[0]
        assert isinstance(path, Path) and path.is_socket()
        sent = [await mx.postfix.send(0, client="10.9.1.1", login="ulla") for _ in range(3)]
        assert [s.accepted for s in sent] == [True, True, False], [s.transcript for s in sent]
        assert any("4.7.1" in line for line in sent[2].replies("RCPT")), sent[2].transcript
        # killed with -9, the agent leaves its socket file; started again, it replaces it
        mx.farm.kill(mx.agent(0))
        assert path.is_socket()
        await mx.restart(0)
        again = await mx.postfix.send(0, client="10.9.1.1", login="ulrich")
        assert again.accepted, again.transcript
        # stopped, it takes its socket file away
        agent = mx.farm.agents[mx.agent(0)]
        mx.farm.kill(mx.agent(0), signal.SIGTERM)
        assert await asyncio.to_thread(agent.proc.wait, 30) == 0
        assert not os.path.exists(path)
