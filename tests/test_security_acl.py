"""The documented ACL lines (issue 18) against what the code runs: every Redis command in
mcluster's Lua scripts and Python code is allowed to the ``mcluster`` user of README.md
and docs/redis.md, on the namespace's keys (``ACL DRYRUN`` on a real redis-server), and
the read-only console user is refused every write."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mcluster.security.readonly import PROBE_WRITES, READ_ONLY_ACL
from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
#: The commands the Python code sends itself (redis-py method -> command), beside those
#: of the Lua scripts (read from lua_scripts/ below). Kept by hand: a new call adds a row.
PYTHON_COMMANDS = {
    "blpop": "BLPOP", "delete": "DEL", "get": "GET", "hdel": "HDEL", "hexists": "HEXISTS",
    "hget": "HGET", "hgetall": "HGETALL", "hincrby": "HINCRBY", "hkeys": "HKEYS",
    "hlen": "HLEN", "hmget": "HMGET", "hset": "HSET", "hsetnx": "HSETNX", "hvals": "HVALS",
    "incr": "INCR", "incrby": "INCRBY", "mget": "MGET", "pexpire": "PEXPIRE", "ping": "PING",
    "rpush": "RPUSH", "sadd": "SADD", "set": "SET", "sismember": "SISMEMBER", "time": "TIME",
    "xack": "XACK", "xlen": "XLEN", "xread": "XREAD", "xreadgroup": "XREADGROUP",
    "xrevrange": "XREVRANGE", "xtrim": "XTRIM", "zrangebyscore": "ZRANGEBYSCORE",
    "xgroup_create": "XGROUP|CREATE", "evalsha": "EVALSHA", "publish": "PUBLISH",
    "hscan": "HSCAN", "zscan": "ZSCAN", "hscan_iter": "HSCAN", "zscan_iter": "ZSCAN",
    "srem": "SREM", "zadd": "ZADD", "zrange": "ZRANGE", "zremrangebyscore": "ZREMRANGEBYSCORE",
    "scan_iter": "SCAN", "unlink": "UNLINK",
}  # fmt: skip
#: Commands only ``mcluster demo`` runs (it deletes its keys at the end), documented apart.
DEMO_ONLY = {"UNLINK"}


def lua_commands() -> set[str]:
    found = set()
    for path in (ROOT / "lua_scripts").glob("*.lua"):
        found |= {c.upper() for c in re.findall(r"redis\.p?call\('(\w+)'", path.read_text())}
    return found


def python_commands() -> set[str]:
    """The redis-py calls of the package (``client.hset(`` and the like), mapped."""
    calls = set()
    for path in (ROOT / "mcluster").rglob("*.py"):
        calls |= set(re.findall(r"(?:client|pipe|self\.client)\.(\w+)\(", path.read_text()))
    unknown = {c for c in calls if c not in PYTHON_COMMANDS} - NOT_COMMANDS
    assert not unknown, f"map these redis-py calls in PYTHON_COMMANDS: {sorted(unknown)}"
    return {PYTHON_COMMANDS[c] for c in calls if c in PYTHON_COMMANDS} - DEMO_ONLY


#: Methods of clients and pipelines that are not Redis commands (or are the demo's).
NOT_COMMANDS = {
    "pipeline", "close", "aclose", "execute", "register_script", "shutdown", "from_url",
    "get_connection_kwargs", "connection_pool", "initialize", "reset", "watch", "multi",
    "immediate_execute_command", "execute_command",
}  # fmt: skip


def acl_line(doc: str, user: str) -> list[str]:
    lines = [
        line.strip().strip("`")
        for line in (ROOT / doc).read_text().splitlines()
        if line.strip().strip("`").startswith(f"user {user} on ")
    ]
    assert len(lines) == 1, (doc, user, lines)
    return lines[0].split()[2:]


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    if int(client.info("server")["redis_version"].split(".")[0]) < 7:
        pytest.skip("ACL DRYRUN needs Redis 7")
    yield client
    client.close()


#: Arguments that satisfy each command's arity (DRYRUN checks it); default one key.
ARGS: dict[str, list[str]] = {
    "PING": [], "TIME": [], "EVALSHA": ["0" * 40, "1", "mc:x"], "PUBLISH": ["mc:ch", "m"],
    "BLPOP": ["mc:x", "0"], "XREAD": ["STREAMS", "mc:x", "0"], "MGET": ["mc:x"],
    "XREADGROUP": ["GROUP", "g", "c", "STREAMS", "mc:x", ">"], "XGROUP": ["mc:x", "g", "0"],
    "SET": ["mc:x", "1"], "INCRBY": ["mc:x", "1"], "PEXPIRE": ["mc:x", "1"],
    "PEXPIREAT": ["mc:x", "1"], "HSET": ["mc:x", "f", "1"], "HSETNX": ["mc:x", "f", "1"],
    "HDEL": ["mc:x", "f"], "HEXISTS": ["mc:x", "f"], "HGET": ["mc:x", "f"],
    "HINCRBY": ["mc:x", "f", "1"], "HMGET": ["mc:x", "f"], "HSCAN": ["mc:x", "0"],
    "ZSCAN": ["mc:x", "0"], "ZADD": ["mc:x", "1", "m"], "ZREM": ["mc:x", "m"],
    "ZSCORE": ["mc:x", "m"], "ZRANGEBYSCORE": ["mc:x", "0", "1"], "ZRANGE": ["mc:x", "0", "1"],
    "ZREMRANGEBYRANK": ["mc:x", "0", "1"], "ZREMRANGEBYSCORE": ["mc:x", "0", "1"],
    "XADD": ["mc:x", "*", "f", "1"], "XREVRANGE": ["mc:x", "+", "-"], "XACK": ["mc:x", "g", "0-1"],
    "XTRIM": ["mc:x", "MAXLEN", "1"], "RPUSH": ["mc:x", "1"], "SADD": ["mc:x", "m"],
    "SREM": ["mc:x", "m"], "SISMEMBER": ["mc:x", "m"], "SCAN": ["0"],
}  # fmt: skip


def refused(client: redis.Redis, user: str, commands: set[str]) -> dict[str, str]:
    """Command -> Redis's reason, for each command ``user`` may not run on key mc:x."""
    out = {}
    for command in sorted(commands):
        name, _, sub = command.partition("|")
        args = [name, sub] if sub else [name]
        args += ARGS.get(name, ["mc:x"])
        try:
            reply = client.execute_command("ACL", "DRYRUN", user, *args)
        except redis.ResponseError as exc:
            out[command] = str(exc)
            continue
        if reply not in (b"OK", "OK"):
            out[command] = reply.decode() if isinstance(reply, bytes) else str(reply)
    return out


def test_the_documented_user_may_run_every_command_the_code_runs(admin: redis.Redis) -> None:
    line = acl_line("README.md", "mcluster")
    assert line == acl_line("docs/redis.md", "mcluster"), "README.md and docs/redis.md differ"
    admin.execute_command("ACL", "SETUSER", "mc-full", "reset", *line)
    needed = lua_commands() | python_commands()
    assert {"XADD", "HINCRBY", "PTTL", "SISMEMBER"} <= needed  # the scan finds them
    assert refused(admin, "mc-full", needed) == {}


def test_the_read_only_user_may_write_nothing(admin: redis.Redis) -> None:
    admin.execute_command("ACL", "SETUSER", "mc-ro", "reset", *READ_ONLY_ACL.split()[2:])
    writes = {c for c in lua_commands() | python_commands() if c in WRITES}
    assert writes | {"INCRBY"} >= PROBE_WRITES
    assert set(refused(admin, "mc-ro", writes)) == writes
    reads = {"GET", "HGETALL", "XREVRANGE", "ZRANGEBYSCORE", "HSCAN", "TIME", "EVALSHA"}
    assert refused(admin, "mc-ro", reads) == {}


#: Every command that changes data, of those mcluster runs.
WRITES = {
    "SET", "DEL", "INCR", "INCRBY", "PEXPIRE", "PEXPIREAT", "HSET", "HSETNX", "HDEL",
    "HINCRBY", "ZADD", "ZREM", "ZPOPMIN", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "XADD",
    "XACK", "XTRIM", "XREADGROUP", "XGROUP|CREATE", "RPUSH", "BLPOP", "SADD", "SREM",
    "PUBLISH",
}  # fmt: skip
