"""``mcluster demo`` end to end: real agents on a real Redis, the console's output, cleanup."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_servers import RedisServer

SECTIONS = (
    "lazy, snapped cidrtree 'inbound_cidr', view 'global'",
    "lazy, snapped cidrtree 'inbound_cidr', view '#e",
    "lazy, snapped gauge table 'outbound_domains', view 'global'",
)
CHECK_OK = "global == sum of node views: OK"


def start_demo(server: RedisServer, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """The demo in a session of its own, as a shell runs it (so killpg is a terminal's ^C)."""
    env = os.environ | {"MCLUSTER_STATE_DIR": str(tmp_path / "state")}  # never the user's
    env.pop("MCLUSTER_REDIS_URL", None)
    argv = [sys.executable, "-m", "mcluster", "demo", "--nodes", "3", "--no-dashboard"]
    return subprocess.Popen(
        [*argv, "--redis", server.url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], head: str = "") -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the demo did not finish in time\n{head}{out}\n{err}")
    return head + out, err


def read_until(proc: subprocess.Popen[str], marker: str) -> str:
    assert proc.stdout is not None
    seen = ""
    while marker not in seen:
        line = proc.stdout.readline()
        assert line, f"the demo ended before printing {marker!r}:\n{seen}"
        seen += line
    return seen


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (as ``pgrep -f``)."""
    proc = Path("/proc")
    if not proc.is_dir():
        found = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True)
        return [int(p) for p in found.stdout.split()]
    pids = []
    for entry in proc.iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def assert_cleaned_up(out: str, server: RedisServer) -> None:
    pids = [int(p) for p in re.findall(r"relay-0-\d+ +pid (\d+)", out)]
    assert len(pids) == 3, out
    workdir = re.search(r"work dir (\S+)", out)
    namespace = re.search(r"namespace '(demo-[0-9a-f]+)'", out)
    assert workdir and namespace, out
    assert not Path(workdir[1]).exists()
    assert processes_mentioning(workdir[1]) == []  # every agent's --config is in it
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not cmdline.exists() or b"mcluster" not in cmdline.read_bytes()
    assert list(server.client().scan_iter(match=f"{namespace[1]}:*")) == []


@pytest.mark.timeout(60)
def test_demo_runs_shows_checks_and_cleans_up(redis_server: RedisServer, tmp_path: Path) -> None:
    proc = start_demo(redis_server, tmp_path, "--seconds", "4")
    out, err = finish(proc)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err, err
    assert re.search(r"^ +\d+s +events sent: relay-0-1 [\d,]+ +relay-0-2", out, re.M), out
    for section in SECTIONS:
        assert section in out, out
    assert CHECK_OK in out, out + err
    assert_cleaned_up(out, redis_server)


@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_traffic_and_still_shows(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    proc = start_demo(redis_server, tmp_path)  # no --seconds: runs until Ctrl-C
    head = read_until(proc, "events sent:")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = finish(proc, head)
    assert proc.returncode == 0, out + err
    assert "stopping the traffic" in out
    for section in SECTIONS:
        assert section in out, out
    assert CHECK_OK in out, out + err
    assert_cleaned_up(out, redis_server)


@pytest.mark.timeout(60)
def test_ctrl_c_during_startup_cleans_up(redis_server: RedisServer, tmp_path: Path) -> None:
    proc = start_demo(redis_server, tmp_path, "--seconds", "30")
    head = read_until(proc, "relay-0-3  pid")
    os.killpg(proc.pid, signal.SIGINT)
    out, err = finish(proc, head)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert_cleaned_up(out, redis_server)
