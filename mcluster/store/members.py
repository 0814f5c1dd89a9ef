"""Member records: who is in the cluster, under which private name and epoch.

One hash ``{ns}:{cluster}:members`` maps node name -> JSON record, and ``NODE:hb`` ->
the Redis time (ms) of its last heartbeat. A member is live while its lease key
``{ns}:{cluster}:lease:NODE`` holds its private name.
"""

from __future__ import annotations

import time
from typing import cast

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from mcluster.store.keys import ClusterKeys, text

#: The ``node_type`` of the cluster manager's record (``mcluster/manager/``); the console
#: tells it from the nodes by this, so it is named here, below both.
MANAGER_TYPE = "Manager"


class Member(BaseModel):
    """What the cluster knows of one node (``cluster membership`` prints it)."""

    model_config = ConfigDict(frozen=True)

    node: str
    private_name: str
    epoch: int
    pid: int
    node_type: str = "Momentum"
    version: str
    address: str | None = None
    groups: tuple[str, ...] = ("ec_console", "ec_cluster")
    joined_at: float
    last_heartbeat_ms: int | None = None
    live: bool = True


def private_name(epoch: int, pid: int, node: str) -> str:
    """Momentum's shape: ``#e7-41235#relay-0-1`` (epoch, process id, node name)."""
    return f"#e{epoch}-{pid}#{node}"


async def new_epoch(client: Redis, keys: ClusterKeys) -> int:
    return int(await client.incr(keys.epoch))


async def leave(client: Redis, keys: ClusterKeys, member: Member) -> None:
    """Remove the record and the lease if they are still ours (not a newer epoch's)."""
    current = await get(client, keys, member.node)
    if current is not None and current.epoch == member.epoch:
        await client.hdel(keys.members, member.node, f"{member.node}:hb")
        await client.hdel(keys.status, member.node)
    lease = await client.get(keys.lease(member.node))
    if lease is not None and text(lease) == member.private_name:
        await client.delete(keys.lease(member.node))


async def get(client: Redis, keys: ClusterKeys, node: str) -> Member | None:
    raw = await client.hget(keys.members, node)
    return Member.model_validate_json(raw) if raw else None


async def all_members(client: Redis, keys: ClusterKeys, *, live_only: bool = False) -> list[Member]:
    """Every member record, with its last heartbeat and whether its lease is held."""
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.members))
    found = []
    for field, value in raw.items():
        name = field.decode()
        if name.endswith(":hb"):
            continue
        beat = raw.get(f"{name}:hb".encode())
        member = Member.model_validate_json(value)
        found.append(member.model_copy(update={"last_heartbeat_ms": int(beat) if beat else None}))
    if found:
        leases = await client.mget([keys.lease(m.node) for m in found])
        found = [
            m.model_copy(update={"live": lease is not None and text(lease) == m.private_name})
            for m, lease in zip(found, leases, strict=True)
        ]
    if live_only:
        found = [m for m in found if m.live]
    return sorted(found, key=lambda m: m.node)


async def server_time_ms(client: Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def new_member(node: str, epoch: int, pid: int, version: str, address: str | None) -> Member:
    return Member(
        node=node,
        private_name=private_name(epoch, pid, node),
        epoch=epoch,
        pid=pid,
        version=version,
        address=address,
        joined_at=time.time(),
    )


def record_json(member: Member) -> str:
    """The stored record: what does not change while the member lives."""
    return member.model_dump_json(exclude={"last_heartbeat_ms", "live"})


async def leader(client: Redis, keys: ClusterKeys) -> tuple[str, int] | None:
    """The leader's private name and fencing token, or None while there is none."""
    raw = await client.get(keys.leader)
    if raw is None:
        return None
    name, _, token = text(raw).rpartition(" ")
    return name, int(token)
