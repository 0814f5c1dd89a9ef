"""A script caller's own connection: EVALSHA without the pool and per-command machinery.

redis-py 8 spends about 40 us of client CPU on each pooled command (pool checkout and
release, retry wrapper, observability hooks) before a byte is sent: more than the whole
Lua of a throttle decision. A caller that never has more than one call in flight (a
throttle family's batcher: one ``throttle_acquire`` at a time) keeps one connection of
the pool checked out and talks on it directly. The reply is read in full or the
connection is dropped (redis-py disconnects on an error or a cancellation mid-read), and
the next call reconnects, so a deadline that cancels a call never leaves a stale reply
on the wire. Closing the client (``aclose``) closes this connection with the pool's.

Clients without a plain connection pool (Redis Cluster, Sentinel) run through
``Scripts.run``: ``ScriptLink.usable`` says which.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
from hiredis import pack_command as hiredis_pack
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from mcluster.errors import script_error
from mcluster.store.scripts import Scripts


def _pack(conn: AbstractConnection, *args: Any) -> Any:
    """The command as RESP bytes: hiredis's packer in one C call (redis[hiredis] is a
    dependency) instead of redis-py's encoder, a Python call per argument (8 % of the
    policy agent's GIL time in a py-spy profile, before). redis-py's packer for what
    hiredis does not take."""
    try:
        return hiredis_pack(args)
    except TypeError:  # an argument hiredis does not pack: redis-py says what it is
        return conn.pack_command(*args)


class ScriptLink:
    """Run scripts of ``scripts`` on one dedicated connection; one call at a time."""

    def __init__(self, scripts: Scripts) -> None:
        self.scripts = scripts
        self._conn: AbstractConnection | None = None

    @staticmethod
    def usable(scripts: Scripts) -> bool:
        pool = getattr(scripts.client, "connection_pool", None)
        return type(pool) is redis.asyncio.ConnectionPool

    async def run(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        conn = self._conn
        if conn is None:
            pool = self.scripts.client.connection_pool
            conn = self._conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        script = self.scripts.get(name)
        try:
            try:
                await conn.send_packed_command(
                    _pack(conn, "EVALSHA", script.sha, len(keys), *keys, *args)
                )
                return await conn.read_response()
            except NoScriptError:  # SCRIPT FLUSH, or a new server after a failover
                await conn.send_command("SCRIPT", "LOAD", script.script)
                script.sha = (await conn.read_response()).decode()
                await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                return await conn.read_response()
        except ResponseError as exc:  # the same table as Scripts.run (mcluster/errors.py)
            mapped = script_error(exc)
            if mapped is exc:
                raise
            raise mapped from None


__all__ = ["ScriptLink"]
