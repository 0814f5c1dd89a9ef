"""Redis Sentinel: ``redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER[/DB]``.

The client asks the sentinels where the master is on every new connection (redis-py's
Sentinel managed pool), so after a failover the next command reaches the new master.
The URL's credentials (and ``password_file``) are the master's and its replicas'; the
sentinels are asked with their own, when they need one: ``sentinel_username``,
``sentinel_password`` or ``sentinel_password_file`` (redis-py's ``sentinel_kwargs``).
TLS: ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile`` (any of them) turn it on to
the sentinels and to the master alike, with the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from mcluster.errors import RedisUrlError
from mcluster.store.connect.url_options import TLS_OPTIONS, read_password_file

__all__ = [
    "SCHEME",
    "SentinelUrl",
    "parse_sentinel_url",
    "sentinel_async_client",
    "sentinel_client",
]

SCHEME = "redis+sentinel://"
EXPECTED = "redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER_NAME[/DB]"


@dataclass(frozen=True)
class SentinelUrl:
    """The parts of a Sentinel URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None


def parse_sentinel_url(url: str) -> SentinelUrl:
    """The parts of ``url``; ValueError naming what is wrong (never the password)."""
    if not url.startswith(SCHEME):
        raise ValueError(f"expected {EXPECTED}")
    rest = url[len(SCHEME) :].split("#", 1)[0].split("?", 1)[0]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_address(item) for item in hosts.split(","))
    master, _, db = path.partition("/")
    if not master or any(c.isspace() for c in master):
        raise ValueError(f"no master name: expected {EXPECTED}")
    if db and not db.isdigit():
        raise ValueError(f"bad database number {db!r}: expected {EXPECTED}")
    return SentinelUrl(sentinels, unquote(master), int(db or 0), username, password)


def _address(item: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad sentinel address {item!r}: expected host:port")
    return host, int(port)


Options = dict[str, Any]


def _options(url: str, common: Options) -> tuple[SentinelUrl, Options, Options]:
    parsed = parse_sentinel_url(url)
    query = dict(parse_qsl(url.partition("?")[2].split("#", 1)[0]))
    kwargs = dict(common, db=int(query.get("db", parsed.db)))
    if parsed.username is not None:
        kwargs["username"] = parsed.username
    if parsed.password is not None:
        kwargs.setdefault("password", parsed.password)
    if "client_name" in query:
        kwargs["client_name"] = query["client_name"]
    timeout = common.get("socket_connect_timeout")
    to_sentinels = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    tls: Options = {name: query[name] for name in TLS_OPTIONS if name in query}
    if tls:  # the same files for the sentinels and the master (redis-py's ssl=True pools)
        tls["ssl"] = True
        kwargs.update(tls)
    return parsed, kwargs, to_sentinels | tls | sentinel_login(query)


def sentinel_login(query: dict[str, str]) -> Options:
    """The sentinels' own username and password, from the URL's ``sentinel_*`` options."""
    login: Options = {}
    if "sentinel_username" in query:
        login["username"] = query["sentinel_username"]
    if "sentinel_password" in query and "sentinel_password_file" in query:
        raise RedisUrlError("give sentinel_password or sentinel_password_file, not both")
    if "sentinel_password" in query:
        login["password"] = query["sentinel_password"]
    elif "sentinel_password_file" in query:
        login["password"] = read_password_file(query["sentinel_password_file"])
    return login


def sentinel_client(url: str, common: dict[str, Any]) -> redis.Redis:
    """A synchronous client of the master ``url`` names."""
    parsed, kwargs, to_sentinels = _options(url, common)
    # Typed as Callable[..., Any]: redis-py's stubs type these calls in some releases
    # and not in others, and a cast works under both (a type: ignore does not).
    make: Callable[..., Any] = redis.sentinel.Sentinel
    sentinel = make(list(parsed.sentinels), sentinel_kwargs=to_sentinels)
    return cast(redis.Redis, sentinel.master_for(parsed.master, **kwargs))


def sentinel_async_client(url: str, common: dict[str, Any]) -> redis.asyncio.Redis:
    """An asyncio client of the master ``url`` names."""
    parsed, kwargs, to_sentinels = _options(url, common)
    make: Callable[..., Any] = redis.asyncio.sentinel.Sentinel
    sentinel = make(list(parsed.sentinels), sentinel_kwargs=to_sentinels)
    return cast(redis.asyncio.Redis, sentinel.master_for(parsed.master, **kwargs))
