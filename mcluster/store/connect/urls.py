"""Redis URL resolution (flag > env > embedded default), validation, redaction and clients."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio

from mcluster.store.connect import cluster_urls, sentinel
from mcluster.store.connect.embedded import embedded_socket_path, ensure_embedded_redis, state_dir
from mcluster.store.connect.embedded import embedded_url as _embedded_url
from mcluster.store.connect.url_options import RedisUrlError, connection_options, query_problem

__all__ = [
    "CONNECT_TIMEOUT",
    "ENV_REDIS_URL",
    "HEALTH_CHECK_INTERVAL",
    "SOCKET_TIMEOUT",
    "RedisUrlError",
    "decision_client",
    "make_async_client",
    "make_sync_client",
    "redact_url",
    "resolve_redis_url",
    "validate_redis_url",
]

ENV_REDIS_URL = "MCLUSTER_REDIS_URL"
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 10

_SCHEMES = ("redis://", "rediss://", "unix://", sentinel.SCHEME)
_EXPECTED = (
    "expected redis://host:port[/db], rediss://..., unix:///path or "
    "redis+sentinel://host:port[,host:port...]/MASTER_NAME[/DB]"
)
_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": False,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "socket_timeout": SOCKET_TIMEOUT,
    "health_check_interval": HEALTH_CHECK_INTERVAL,
}
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)$", re.DOTALL)
_QUERY_PASSWORD_RE = re.compile(r"((?:^|[?&;])(?:sentinel_)?password=)[^&;#]*", re.IGNORECASE)


def validate_redis_url(url: str) -> str:
    """Return ``url`` (stripped) if redis-py can use it, else raise RedisUrlError."""
    url = url.strip()
    if cluster_urls.is_cluster_url(url):
        try:
            cluster_urls.parse_cluster_url(url)
            problem = query_problem(url)
        except ValueError as exc:
            problem = str(exc)
        if problem:
            raise RedisUrlError(
                f"bad Redis URL {redact_url(url)!r}: {problem}; "
                f"expected {cluster_urls.CLUSTER_FORM}[?password_file=FILE]"
            )
        return url
    if not _is_valid(url):
        raise RedisUrlError(f"bad Redis URL {redact_url(url)!r}: {_EXPECTED}")
    problem = _sentinel_problem(url) or query_problem(url)
    if problem:
        raise RedisUrlError(f"bad Redis URL {redact_url(url)!r}: {problem}")
    return url


def resolve_redis_url(
    flag: str | None, *, start_embedded: bool = True, configured: str | None = None
) -> str:
    """Pick the Redis URL: ``flag`` > ``$MCLUSTER_REDIS_URL`` > ``configured`` (the
    config's ``cluster { redis = "..." }``) > the embedded default server.

    Blank values count as unset.  Without an explicit URL, the embedded server is started
    (or reused) when ``start_embedded``; otherwise its URL is returned only if its socket
    exists, and RedisUrlError is raised if not.
    """
    for candidate in (flag, os.environ.get(ENV_REDIS_URL), configured):
        if candidate is not None and candidate.strip():
            return validate_redis_url(candidate)
    if start_embedded:
        return ensure_embedded_redis()
    sock = embedded_socket_path()
    if os.path.lexists(sock):
        return _embedded_url()
    raise RedisUrlError(
        f"no Redis URL given (--redis or {ENV_REDIS_URL}) and no embedded Redis is "
        f"running in {state_dir()}"
    )


def redact_url(url: str) -> str:
    """Replace any credentials in ``url`` (user:password@, ?password=) with ``***``."""
    match = _SCHEME_RE.match(url)
    if match is None:  # not a URL; "user:password@host" typed without a scheme: hide it
        query_at = min((i for i in (url.find("?"), url.find("#")) if i != -1), default=len(url))
        at = url.rfind("@", 0, query_at)
        if at != -1:
            url = "***" + url[at:]
        return _QUERY_PASSWORD_RE.sub(r"\1***", url)
    scheme, rest = match[1], match[2]
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i != -1), default=len(rest))
    if scheme.lower() == "unix://":
        # unix://[user[:password]@]/path: the userinfo is followed by the path's '/', and
        # socket paths may contain '@' themselves
        at = -1 if rest.startswith("/") else rest.rfind("@/", 0, query_at)
        if at == -1 and not rest.startswith("/"):  # malformed (no path): hide it all the same
            at = rest.rfind("@", 0, query_at)
    else:
        # TCP URLs have no '@' in their path, so a '/' in an unescaped password can't hide it
        at = rest.rfind("@", 0, query_at)
    if at != -1:
        rest = "***" + rest[at:]
        query_at = query_at - at + 3
    return scheme + rest[:query_at] + _QUERY_PASSWORD_RE.sub(r"\1***", rest[query_at:])


def make_sync_client(url: str) -> redis.Redis:
    """A synchronous redis-py client for ``url`` (bytes responses, mcluster's timeouts)."""
    url, options = _client_options(validate_redis_url(url))
    if cluster_urls.is_cluster_url(url):
        return cluster_urls.cluster_sync_client(url, **options)
    if url.startswith(sentinel.SCHEME):
        return sentinel.sentinel_client(url, options)
    return redis.Redis.from_url(url, **options)


def make_async_client(url: str) -> redis.asyncio.Redis:
    """An asyncio redis-py client for ``url`` (bytes responses, mcluster's timeouts).

    For a ``redis+cluster://`` URL it is a ``redis.asyncio.cluster.RedisCluster``.
    """
    url, options = _client_options(validate_redis_url(url))
    if cluster_urls.is_cluster_url(url):
        return cluster_urls.cluster_async_client(url, **options)
    if url.startswith(sentinel.SCHEME):
        return sentinel.sentinel_async_client(url, options)
    return redis.asyncio.Redis.from_url(url, **options)


def _client_options(url: str) -> tuple[str, dict[str, Any]]:
    """The URL for redis-py and the connection keyword arguments (a password file read)."""
    url, extra = connection_options(url)
    return url, _CLIENT_OPTIONS | extra


def _sentinel_problem(url: str) -> str | None:
    if not url.startswith(sentinel.SCHEME):
        return None
    try:
        sentinel.parse_sentinel_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def decision_client(client: redis.asyncio.Redis) -> redis.asyncio.Redis:
    """A client like ``client`` but without ``socket_timeout``, for throttle decisions.

    redis-py wraps every write of a client that has a socket timeout in ``wait_for``,
    which costs a task per command; a throttle decision has its own, shorter deadline
    (and cancels a call stuck past ``SOCKET_TIMEOUT``), so it does without. Pools that
    cannot be copied this way (Sentinel, Cluster) give ``client`` itself.
    """
    pool = getattr(client, "connection_pool", None)
    if type(pool) is not redis.asyncio.ConnectionPool:
        return client
    kwargs = dict(pool.connection_kwargs, socket_timeout=None)
    return redis.asyncio.Redis(
        connection_pool=redis.asyncio.ConnectionPool(
            connection_class=pool.connection_class, max_connections=pool.max_connections, **kwargs
        )
    )


def _is_valid(url: str) -> bool:
    if not url.startswith(_SCHEMES) or any(c.isspace() for c in url):
        return False
    if url.startswith(sentinel.SCHEME):
        return True  # checked by _sentinel_problem, with the reason
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when not a number in 0..65535
    except ValueError:
        return False
    if parts.scheme == "unix":
        host = parts.netloc.rpartition("@")[2]
        return not host and parts.path.startswith("/") and len(parts.path) > 1
    if not parts.hostname or port == 0:
        return False
    db = parts.path.strip("/")
    return parts.path in ("", "/") or (db.isdigit() and parts.path.count("/") == 1)
