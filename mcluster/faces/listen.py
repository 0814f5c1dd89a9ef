"""Where the policy service listens: ``HOST:PORT`` or ``unix:PATH``, as Postfix writes them.

Postfix's ``check_policy_service`` takes ``inet:host:port`` or ``unix:pathname``; an agent
beside its Postfix can serve on a Unix socket, which no other host can reach and which
costs the kernel less per request than loopback TCP (no TCP stack on either side).
The socket is made readable and writable by everyone (``SOCKET_MODE``), as loopback
TCP is open to every local user; the folder it is in says who may reach it (Postfix's
``private/`` folder is the postfix user's alone). A socket file left by an agent that
died is replaced; one that another process still serves is not.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from mcluster.errors import Error

SOCKET_MODE = 0o666


class ListenError(Error, ValueError):
    """A policy address that cannot be served (one line, naming it)."""


@dataclass(frozen=True)
class UnixAddress:
    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


def split_listen(listen: str) -> tuple[str, int]:
    """``127.0.0.1:4802`` or ``[::1]:4802`` -> (host, port), with a clear error."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"bad listen address {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:4802")
    return host.strip("[]"), int(port)


def policy_address(text: str) -> tuple[str, int] | UnixAddress:
    """``--policy``: ``HOST:PORT``, or ``unix:/absolute/path`` for a Unix socket."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ListenError(
                f"bad policy address {text!r}: expected unix:/absolute/path, e.g. "
                "unix:/var/spool/postfix/private/mcluster (Postfix: check_policy_service "
                "unix:private/mcluster)"
            )
        return UnixAddress(Path(path))
    return split_listen(text)


def claim(path: Path) -> None:
    """Make room for a socket at ``path``: remove one nobody serves any more (an agent
    that died); ListenError when another process serves it, or something that is not a
    socket is there, or its folder does not exist."""
    if not path.parent.is_dir():
        raise ListenError(f"cannot serve on unix:{path}: no folder {path.parent}")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"cannot serve on unix:{path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left by a process that is gone
        return
    finally:
        probe.close()
    raise ListenError(f"cannot serve on unix:{path}: another process serves it")


def release(path: Path, inode: int) -> None:
    """Remove the socket file at stop, if it is still the one this process made."""
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


def made(path: Path) -> int:
    """Open the socket file to every local user (see the module's docstring); its inode."""
    os.chmod(path, SOCKET_MODE)
    return path.lstat().st_ino


__all__ = [
    "SOCKET_MODE",
    "ListenError",
    "UnixAddress",
    "claim",
    "made",
    "policy_address",
    "release",
    "split_listen",
]
