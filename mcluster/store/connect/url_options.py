"""What a Redis URL carries besides the address: its query options and the password.

``rediss://`` takes the TLS files ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile``;
every URL, ``redis+cluster://`` and ``redis+sentinel://`` included, may name a
``password_file`` (else ``$MCLUSTER_REDIS_PASSWORD_FILE`` is read when the URL has no
password). A Sentinel URL takes a few options of its own (:data:`SENTINEL_OPTIONS`), a
Cluster URL only ``password_file``; any other option is an error naming it. The password
never appears in a message: errors name the URL through
:func:`mcluster.store.connect.urls.redact_url`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from mcluster.errors import RedisUrlError

__all__ = [
    "ENV_PASSWORD_FILE",
    "PASSWORD_FILE",
    "SENTINEL_OPTIONS",
    "TLS_OPTIONS",
    "RedisUrlError",
    "connection_options",
    "query_problem",
    "read_password_file",
]

ENV_PASSWORD_FILE = "MCLUSTER_REDIS_PASSWORD_FILE"
PASSWORD_FILE = "password_file"
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_TLS_OTHERS = ("ssl_cert_reqs", "ssl_check_hostname", "ssl_ca_path", "ssl_password")
_GENERAL = (
    PASSWORD_FILE,
    "db",
    "client_name",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "max_connections",
    "retry_on_timeout",
    "protocol",
)

#: What a ``redis+sentinel://`` URL takes: the master's database, client name and
#: password file, the sentinels' own login (redis-py's ``sentinel_kwargs``), and the TLS
#: files, which turn on TLS to the sentinels and to the master alike.
SENTINEL_OPTIONS = (
    PASSWORD_FILE,
    "db",
    "client_name",
    "sentinel_username",
    "sentinel_password",
    "sentinel_password_file",
    *TLS_OPTIONS,
)
_CLUSTER = (PASSWORD_FILE,)


def query_problem(url: str) -> str | None:
    """What is wrong with the query options of ``url``, or None when they are usable."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    tls = scheme == "rediss"
    special = {"redis+sentinel": SENTINEL_OPTIONS, "redis+cluster": _CLUSTER}
    allowed = special.get(scheme, _GENERAL + (TLS_OPTIONS + _TLS_OTHERS if tls else ()))
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in TLS_OPTIONS + _TLS_OTHERS and not tls and name not in allowed:
            if scheme == "redis+sentinel":
                files = ", ".join(TLS_OPTIONS)
                return f"option {name!r} is not supported on {scheme}:// URLs (TLS takes {files})"
            if scheme in special:
                return f"option {name!r}: TLS is not supported on {scheme}:// URLs"
            return f"option {name!r} needs a rediss:// URL"
        if name not in allowed:
            where = f" on a {scheme}:// URL" if scheme in special else ""
            return f"unknown option {name!r}{where}: expected one of {', '.join(allowed)}"
        if not value:
            return f"option {name!r} has no value"
    return None


def read_password_file(path: str) -> str:
    """The password in ``path``: its first line, without the line end."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RedisUrlError(f"cannot read the Redis password file {path}: {reason}") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise RedisUrlError(f"the Redis password file {path} is empty")
    return lines[0]


def connection_options(url: str) -> tuple[str, dict[str, Any]]:
    """``url`` without the options mcluster reads itself, and the connection keyword
    arguments those give (the password from a password file, the TLS files' checks)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kwargs: dict[str, Any] = {}
    password_file = next((v for k, v in query if k == PASSWORD_FILE), None)
    if password_file is not None and parts.password is not None:
        raise RedisUrlError(f"give the password in the URL or in {PASSWORD_FILE}, not both")
    if password_file is None and parts.password is None:
        password_file = os.environ.get(ENV_PASSWORD_FILE, "").strip() or None
    if password_file is not None:
        kwargs["password"] = read_password_file(password_file)
    for name, value in query:
        if name in TLS_OPTIONS and not os.path.isfile(value):
            raise RedisUrlError(f"{name}: no such file {value}")
    if all(k != PASSWORD_FILE for k, _ in query):
        return url, kwargs
    base, _, rest = url.partition("?")
    fragment = rest.partition("#")[2]
    kept = urlencode([(k, v) for k, v in query if k != PASSWORD_FILE])
    return base + (f"?{kept}" if kept else "") + (f"#{fragment}" if fragment else ""), kwargs
