"""``mcluster demo`` end to end: real agents on a real Redis, the console's output, cleanup."""

from __future__ import annotations

import os
import re
import signal
import socket
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


def finish(proc: subprocess.Popen[str], head: str = "", timeout: float = 45) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
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
    pids += [int(p) for p in re.findall(r"^  manager +pid (\d+)$", out, re.M)]
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


FIGURES = ("connections", "refused", "messages", "deferred")
SOURCES = ("SMTP clients saw", "SMTP servers counted", "Redis (demo_totals)")


def final_figures(out: str) -> dict[str, dict[str, int]]:
    """The three rows of the demo's final figures, by source, as numbers."""
    header = re.search(r"^final figures +(.+)$", out, re.M)
    assert header and header[1].split() == list(FIGURES), out
    rows = {}
    for source in SOURCES:
        row = re.search(rf"^  {re.escape(source)} +([\d, ]+)$", out, re.M)
        assert row, f"no {source!r} row:\n{out}"
        numbers = [int(n.replace(",", "")) for n in row[1].split()]
        rows[source] = dict(zip(FIGURES, numbers, strict=True))
    return rows


def refuses(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.timeout(120)
def test_demo_farm_runs_10_s_and_its_figures_are_exact(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    proc = start_demo(redis_server, tmp_path, "--seconds", "10")
    out, err = finish(proc, timeout=100)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err, err
    rows = final_figures(out)
    clients = rows["SMTP clients saw"]
    assert rows["SMTP servers counted"] == clients, out
    assert rows["Redis (demo_totals)"] == clients, out  # read back from Redis by the demo
    assert all(clients[name] > 0 for name in FIGURES), clients  # the cap and throttle tripped
    audit = re.search(
        r"Redis \(inbound_audit 127\.0\.0\.0/8\): connection ([\d,]+), reception ([\d,]+), "
        r"rejection ([\d,]+): OK",
        out,
    )
    assert audit, out  # Momentum's inbound audit metrics, read back from Redis
    connect, reception, rejection = (int(n.replace(",", "")) for n in audit.groups())
    assert connect == clients["connections"] + clients["refused"]
    assert reception == clients["messages"]
    assert rejection == clients["refused"] + clients["deferred"]
    assert "final figures exact: OK" in out
    # the outbound half: relays forwarded every accepted message to the provider's sinks,
    # whose most concurrent sessions never passed the farm-wide cap (issue 16)
    provider = re.search(
        r"^provider bigmail: at most (\d+) concurrent sessions at its sinks, cap (\d+) "
        r"\(cluster_max_outbound_connections\): OK$\n  forwarded ([\d,]+) of ([\d,]+) "
        r"accepted messages .*; 0 refused by the sinks \(421\);.* 0 failed$",
        out,
        re.M,
    )
    assert provider, out
    most, cap, forwarded, accepted = (int(n.replace(",", "")) for n in provider.groups())
    assert 1 <= most <= cap, out
    assert forwarded == accepted == clients["messages"], out
    # shaping (issue 17): every deferral the sinks gave was reported to an agent and retried
    shaping = re.search(
        r"^  shaping: (\d+) deferred by the sinks \(451 4\.7\.500 Server busy above \d+/s\), "
        r"(\d+) reported and retried; rule bigmail_busy suspended provider:bigmail \d+ times?",
        out,
        re.M,
    )
    assert shaping and shaping.group(1) == shaping.group(2), out
    assert re.search(r"^  manager +pid \d+$", out, re.M), out  # stopped cleanly: exit 0
    assert re.search(r"^ +\d+s +events sent: .* smtp: [\d,]+ sessions", out, re.M), out
    smtp_ports = [
        int(p) for p in re.findall(r"^  smtp relay-0-\d+  127\.0\.0\.1:(\d+)$", out, re.M)
    ]
    agent_ports = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)$", out, re.M)]
    assert len(smtp_ports) == 3 and len(agent_ports) == 3, out
    assert all(refuses(port) for port in smtp_ports + agent_ports)  # nothing left listening
    assert_cleaned_up(out, redis_server)


def run_embedded_demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The demo as a new user runs it: a fresh HOME, no Redis URL (the embedded Redis)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCLUSTER_", "XDG_"))}
    env["HOME"] = str(home)
    argv = [sys.executable, "-m", "mcluster", "demo", "--seconds", "2", "--no-dashboard"]
    return subprocess.run(
        [*argv, "--nodes", "2", *args], capture_output=True, text=True, env=env, timeout=90
    )


def embedded_socket(home: Path) -> Path:
    return home / ".local" / "state" / "mcluster" / "redis.sock"


def test_demo_stops_the_embedded_redis_it_started(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = run_embedded_demo(home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped the embedded Redis this demo started" in done.stdout
    sock = embedded_socket(home)
    assert processes_mentioning(str(sock)) == [], "a redis-server outlived the demo"
    assert not sock.exists()


def test_demo_leaves_a_redis_that_was_already_running(tmp_path: Path) -> None:
    from mcluster.store.connect.embedded import ensure_embedded_redis, stop_embedded_redis

    home = tmp_path / "home"
    state = home / ".local" / "state" / "mcluster"
    ensure_embedded_redis(state)
    try:
        before = processes_mentioning(str(embedded_socket(home)))
        assert before, "the embedded Redis did not start"
        done = run_embedded_demo(home)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "was running before the demo: left running" in done.stdout
        assert processes_mentioning(str(embedded_socket(home))) == before
    finally:
        assert stop_embedded_redis(state)


def test_keep_redis_leaves_the_started_redis_running(tmp_path: Path) -> None:
    from mcluster.store.connect.embedded import stop_embedded_redis

    home = tmp_path / "home"
    done = run_embedded_demo(home, "--keep-redis")
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "keeps running (--keep-redis)" in done.stdout
        assert processes_mentioning(str(embedded_socket(home)))
    finally:
        stop_embedded_redis(home / ".local" / "state" / "mcluster")
    assert processes_mentioning(str(embedded_socket(home))) == []
