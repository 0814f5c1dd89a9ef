"""A read-only console: a Redis user that can read everything the console and the
dashboard show, and write nothing.

An operator who only watches the farm (a NOC screen, an on-call laptop) should not hold a
login that can reset a node, move a DuraVIP or broadcast a command. The ACL line
``READ_ONLY_ACL`` (in ``docs/security.md`` and ``docs/redis.md``) grants the read
commands the console and ``--watch`` run, and no write. At start-up the console's access
probe (``lua_scripts/access_probe.lua``) then finds every write refused and every read
allowed: the console runs read-only instead of refusing to start. A command that writes
fails with one line naming the permission Redis refused (the command, or the mcluster
script whose writes it refused) and saying the user is read-only.
"""

from __future__ import annotations

import functools
import hashlib
import re

from redis.exceptions import NoPermissionError, RedisError, ResponseError

#: The read-only console user (namespace ``mc``; write ``~NS:* &NS:*`` for another).
READ_ONLY_ACL = (
    "user mcluster-console on >PASSWORD ~mc:* resetchannels &mc:* -@all +ping +evalsha "
    "+script|load +time +get +mget +hget +hexists +hgetall +hkeys +hvals +hlen +hmget "
    "+hscan +zscore +zcard +zrange +zrangebyscore +zscan +xread +xrevrange +scan"
)
#: The commands of the access probe that change data (the others only read).
PROBE_WRITES = frozenset({
    "SET", "INCR", "INCRBY", "PEXPIRE", "DEL", "HSET", "HINCRBY", "HDEL", "ZADD", "ZREM",
    "ZPOPMIN", "XADD", "RPUSH", "PUBLISH",
})  # fmt: skip
_NOPERM_COMMAND = re.compile(r"permissions to run the '([^']+)' command")
_SCRIPT_SHA = re.compile(r"script: ([0-9a-f]{40})")


def read_only_user(refused: list[bytes] | list[str]) -> bool:
    """Whether the access probe's refusals (``COMMAND: error`` each) are exactly its
    writes: a user that may read everything and write nothing."""
    names = {(r.decode() if isinstance(r, bytes) else r).split(":")[0] for r in refused}
    return names == PROBE_WRITES


@functools.cache
def _script_names() -> dict[str, str]:
    """SHA1 -> file name of every Lua script mcluster runs (to name a refused one)."""
    from mcluster.store.scripts import script_source, scripts_dir

    out = {}
    for path in scripts_dir().glob("*.lua"):
        if not path.name.startswith("_"):
            source = script_source(path.stem)
            out[hashlib.sha1(source.encode()).hexdigest()] = path.name
    return out


def missing_permission(exc: BaseException) -> str | None:
    """What Redis refused, when ``exc`` is an ACL refusal: ``XADD on the namespace's keys``
    or ``the writes of lua_scripts/job_request.lua``; None for any other error."""
    text = str(exc)
    if isinstance(exc, NoPermissionError) or text.startswith("NOPERM"):
        found = _NOPERM_COMMAND.search(text)
        return f"{found.group(1).upper()}" if found else text
    if isinstance(exc, ResponseError) and "can't run this command" in text:
        found = _SCRIPT_SHA.search(text)
        name = _script_names().get(found.group(1)) if found else None
        return f"the writes of lua_scripts/{name}" if name else "a write inside a script"
    return None


def redis_error_line(command: str, exc: RedisError) -> str:
    """One line for a Redis error of a console command; for an ACL refusal it names the
    missing permission and says the console's user is read-only."""
    missing = missing_permission(exc)
    if missing is None:
        return f"Redis error: {exc}"
    shown = " ".join(command.split())
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return (
        f"{shown}: the console's Redis user may not run {missing} (a read-only user: it "
        "reads everything and changes nothing; use a user with the write commands of "
        "docs/redis.md's ACL line)"
    )
