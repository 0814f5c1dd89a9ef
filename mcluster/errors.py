"""mcluster's error model: one base class, ``mcluster.Error``, and a small tree under it.

A program that embeds mcluster writes ``except mcluster.Error`` to catch whatever mcluster
itself refuses, and a narrower class to act on one case. The classes keep the builtin
bases they had before the tree existed (``UnknownObject`` is still a ``KeyError``,
``ThrottleError`` a ``ValueError``, ``NotFound`` a ``LookupError``), so an existing
``except KeyError`` or ``except ValueError`` clause catches what it caught before.

    Error
    ├── ConfigError              a config file is wrong (every problem, FILE:LINE:COL each)
    ├── NotJoined                the node has not joined the cluster yet   (RuntimeError)
    ├── UnknownObject            no such replicated object on this node    (KeyError)
    ├── NotFound                 an unknown object, node, view or cache    (LookupError)
    ├── InvalidValue             a bad argument value                      (ValueError)
    ├── InvalidType              an argument of the wrong type             (TypeError)
    ├── ThrottleError            a bad throttle request                    (ValueError)
    ├── CacheError               a refused cache or gauge cache operation
    ├── AuditError               a bad audit series request                (ValueError)
    ├── RedisUnavailable         Redis cannot be used (access, embedded server)
    ├── RedisUrlError            a Redis URL is malformed                  (ValueError)
    ├── JobError                 a console job is unknown or was aborted
    └── ScriptReply              a Lua script refused the call             (redis ResponseError)
        ├── StaleReply           "STALE ...": the view is not registered (stale epoch)
        ├── ConflictReply        "CONFLICT ...": the object exists with other settings
        └── NotEmptyReply        "NOTEMPTY ...": a view still holds keys

The classes that belong to one feature (``ThrottleConflict``, ``UnknownCache``,
``GaugeCacheError``, ...) live beside the feature and subclass one of these.

Lua scripts refuse a call with ``redis.error_reply('PREFIX ...')``. :data:`LUA_ERRORS` maps
each prefix to its class, and :func:`script_error` applies that table in one place (the
script runners in ``mcluster/store``), as redis-py maps server error prefixes to
exception classes (``redis/_parsers/base.py``). A ``ScriptReply`` is still a
``redis.exceptions.ResponseError`` with the same message, so ``except ResponseError``
and logs see what they saw before.

This module imports nothing from mcluster, so any module may import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from redis.exceptions import ResponseError

__all__ = [
    "LUA_ERRORS",
    "AuditError",
    "CacheError",
    "ConfigError",
    "ConfigIssue",
    "ConflictReply",
    "Error",
    "InvalidType",
    "InvalidValue",
    "JobError",
    "NotEmptyReply",
    "NotFound",
    "NotJoined",
    "RedisUnavailable",
    "RedisUrlError",
    "ScriptReply",
    "StaleReply",
    "ThrottleError",
    "UnknownObject",
    "script_error",
]


class Error(Exception):
    """The base of every exception mcluster raises on purpose."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a config file (line and col are 1-based; 0 = whole file)."""

    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ConfigError(Error):
    """Every problem found in a config, one ``FILE:LINE:COL: message`` line each."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    @classmethod
    def single(cls, file: str, line: int, col: int, message: str) -> ConfigError:
        """An error with exactly one issue."""
        return cls([ConfigIssue(file, line, col, message)])


class NotJoined(Error, RuntimeError):
    """The node has not joined the cluster yet (or has left it)."""


class UnknownObject(Error, KeyError):
    """An object this node does not record, or a feature its config does not enable."""

    def __str__(self) -> str:
        return str(self.args[0])


class NotFound(Error, LookupError):
    """An unknown object, node or view; the message names it and what exists."""

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidValue(Error, ValueError):
    """An argument has a value mcluster cannot use; the message says which and why."""


class InvalidType(Error, TypeError):
    """An argument has the wrong type; the message says which and what was expected."""


class ThrottleError(Error, ValueError):
    """A bad throttle request: unknown name, bad cost, bad rate, conflicting rate."""


class CacheError(Error):
    """A cache or gauge cache refused an operation."""


class AuditError(Error, ValueError):
    """A bad audit request: unknown or undefined series, disabled type, bad key."""


class RedisUnavailable(Error):
    """Redis cannot be used: unreachable, the login refused, or the server cannot start."""


class RedisUrlError(Error, ValueError):
    """A Redis URL is malformed, or none could be determined."""


class JobError(Error):
    """A console job is unknown, or was aborted by the operator."""


class ScriptReply(Error, ResponseError):
    """A Lua script refused the call with an error reply; ``str()`` is the reply."""


class StaleReply(ScriptReply):
    """``STALE``: the caller's view is not registered for the object (a stale epoch)."""


class ConflictReply(ScriptReply):
    """``CONFLICT``: the object exists with other settings (``str()`` ends with them)."""


class NotEmptyReply(ScriptReply):
    """``NOTEMPTY``: a view still holds keys and cannot be closed."""


#: The first word of a Lua error reply -> the class it is raised as.
LUA_ERRORS: dict[str, type[ScriptReply]] = {
    "STALE": StaleReply,
    "CONFLICT": ConflictReply,
    "NOTEMPTY": NotEmptyReply,
}


def script_error(exc: ResponseError) -> ResponseError:
    """``exc`` as its :data:`LUA_ERRORS` class when its first word is in the table.

    Only a plain ``ResponseError`` is mapped: redis-py's own classes (NOSCRIPT, MOVED,
    TRYAGAIN, ...) stay what they are. The message is kept unchanged."""
    if type(exc) is not ResponseError or not exc.args:
        return exc
    message = str(exc.args[0])
    cls = LUA_ERRORS.get(message.split(" ", 1)[0])
    if cls is None:
        return exc
    return cls(*exc.args)
