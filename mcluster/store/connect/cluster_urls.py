"""The Redis Cluster URL, ``redis+cluster://[user:pass@]host:port[,host:port...]``, and its clients.

The hosts are seed nodes: the client asks any of them for the slot map and then talks to
every master itself. A Cluster has only database 0, so the URL has no path; user and
password (percent-encoded) are the ACL credentials of every node. The one query option is
``password_file`` (``?password_file=/etc/mcluster/redis.pass``), as on every URL form, and
``$MCLUSTER_REDIS_PASSWORD_FILE`` applies when the URL has no password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

CLUSTER_SCHEME = "redis+cluster://"
CLUSTER_FORM = "redis+cluster://[user:pass@]host:port[,host:port...]"


@dataclass(frozen=True)
class ClusterUrl:
    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


def is_cluster_url(url: str) -> bool:
    return url[: len(CLUSTER_SCHEME)].lower() == CLUSTER_SCHEME


def parse_cluster_url(url: str) -> ClusterUrl:
    """The seeds and credentials of a Cluster URL; ValueError saying what is wrong."""
    rest = url.strip()[len(CLUSTER_SCHEME) :]
    if any(c.isspace() for c in rest) or "#" in rest:
        raise ValueError("spaces and '#' are not allowed")
    rest = rest.partition("?")[0]  # the options: checked by url_options.query_problem
    at = rest.rfind("@")
    userinfo, hosts = (rest[:at], rest[at + 1 :]) if at != -1 else (None, rest)
    if hosts.endswith("/"):
        hosts = hosts[:-1]
    if "/" in hosts:
        raise ValueError("a Cluster URL has no database or path (Redis Cluster has only db 0)")
    seeds = tuple(_seed(item) for item in hosts.split(","))
    username = password = None
    if userinfo is not None:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    return ClusterUrl(seeds, username, password)


def _seed(item: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":")
    if not colon or not host:
        raise ValueError(f"seed {item!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"seed {item!r} has no port in 1..65535")
    if not host or any(c in host for c in "@[]"):
        raise ValueError(f"seed {item!r} has no valid host")
    return host, int(port)


def _options(url: str, common: dict[str, Any]) -> dict[str, Any]:
    """The client's keyword arguments: ``common`` (which may hold the password read from a
    password file) and the URL's credentials."""
    parsed = parse_cluster_url(url)
    options = dict(common, username=parsed.username)
    if parsed.password is not None:
        options["password"] = parsed.password
    return options


def cluster_async_client(url: str, **common: Any) -> redis.asyncio.Redis:
    """A ``redis.asyncio.cluster.RedisCluster`` for ``url``, typed as the standalone client.

    The cluster client has the same command methods (and ``register_script``, ``pipeline``
    without transactions, ``aclose``); every key mcluster sends in one command or script
    shares one hash slot, which is all the cluster client needs to route it.
    """
    nodes = [redis.asyncio.cluster.ClusterNode(h, p) for h, p in parse_cluster_url(url).seeds]
    client = redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **_options(url, common))
    return cast(redis.asyncio.Redis, client)


def cluster_sync_client(url: str, **common: Any) -> redis.Redis:
    """A ``redis.cluster.RedisCluster`` for ``url``, typed as the standalone client."""
    seeds = parse_cluster_url(url).seeds
    nodes = [redis.cluster.ClusterNode(h, p) for h, p in seeds]  # type: ignore[no-untyped-call]
    client = redis.cluster.RedisCluster(startup_nodes=nodes, **_options(url, common))
    return cast(redis.Redis, client)


def is_cluster_client(client: object) -> bool:
    return isinstance(client, redis.asyncio.cluster.RedisCluster | redis.cluster.RedisCluster)
