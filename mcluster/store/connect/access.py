"""The start-up check of a Redis connection: reachable, logged in, and allowed every command
mcluster runs on its namespace's keys, so a wrong password or a missing ACL permission is
one clear line at start-up (naming the URL, redacted) rather than a failure mid-run."""

from __future__ import annotations

from redis import exceptions

from mcluster.errors import RedisUnavailable
from mcluster.security.readonly import read_only_user
from mcluster.store.connect.urls import make_sync_client, redact_url
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import script_source

__all__ = ["ACL_HINT", "RedisAccessError", "check_access", "probe_keys"]

ACL_HINT = "see the ACL line in docs/redis.md"


class RedisAccessError(RedisUnavailable):
    """Redis cannot be used: unreachable, the login is refused, or a permission is missing."""


def probe_keys(keys: ClusterKeys) -> list[str]:
    """The access probe's keys (one hash slot, inside the namespace)."""
    return [f"{keys.base}:probe:{kind}" for kind in ("s", "h", "z", "x", "l")]


def check_access(url: str, keys: ClusterKeys, *, read_only_ok: bool = False) -> bool:
    """Raise RedisAccessError with a one-line reason unless mcluster can work on ``url``;
    True. With ``read_only_ok`` (the console), a user refused every write the probe tries
    and nothing else is a read-only user (``mcluster.security.readonly``): False."""
    where = redact_url(url)
    client = make_sync_client(url)
    try:
        client.ping()
        script = client.register_script(script_source("access_probe"))
        probe = probe_keys(keys)
        refused = script(keys=probe, args=[f"{keys.base}:probe:notify"])
        if read_only_ok and read_only_user(refused):
            return False
        client.blpop([probe[-1]], timeout=0.01)
    except exceptions.AuthenticationError as exc:
        raise RedisAccessError(f"Redis at {where} refused the login: {exc}") from None
    except exceptions.NoPermissionError as exc:
        raise RedisAccessError(
            f"Redis at {where} refused a command on the keys {keys.namespace}:*: {exc} ({ACL_HINT})"
        ) from None
    except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as exc:
        raise RedisAccessError(f"cannot reach Redis at {where}: {exc}") from None
    except exceptions.ResponseError as exc:
        raise RedisAccessError(f"Redis at {where} answered with an error: {exc}") from None
    finally:
        client.close()
    if refused:
        reasons = [bytes(r).decode("utf-8", "replace") for r in refused]
        names = ", ".join(r.split(":")[0] for r in reasons)
        first = reasons[0]
        raise RedisAccessError(
            f"Redis at {where} refuses {len(refused)} command(s) mcluster needs on the "
            f"keys {keys.namespace}:*: {names} (first: {first}; {ACL_HINT})"
        )
    return True
