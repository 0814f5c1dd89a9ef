"""Member records: who is in the cluster, under which private name and epoch.

One hash ``{ns}:{cluster}:members`` maps node name -> JSON record. Leases and reaping
(the next release) build on these records.
"""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from mcluster.store.keys import ClusterKeys


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


def private_name(epoch: int, pid: int, node: str) -> str:
    """Momentum's shape: ``#e7-41235#relay-0-1`` (epoch, process id, node name)."""
    return f"#e{epoch}-{pid}#{node}"


async def new_epoch(client: Redis, keys: ClusterKeys) -> int:
    return int(await client.incr(keys.epoch))


async def join(client: Redis, keys: ClusterKeys, member: Member) -> None:
    await client.hset(keys.members, member.node, member.model_dump_json())


async def leave(client: Redis, keys: ClusterKeys, member: Member) -> None:
    """Remove the record if it is still ours (a newer epoch of the same node may own it)."""
    current = await get(client, keys, member.node)
    if current is not None and current.epoch == member.epoch:
        await client.hdel(keys.members, member.node)


async def get(client: Redis, keys: ClusterKeys, node: str) -> Member | None:
    raw = await client.hget(keys.members, node)
    return Member.model_validate_json(raw) if raw else None


async def all_members(client: Redis, keys: ClusterKeys) -> list[Member]:
    raw = await client.hgetall(keys.members)
    return sorted((Member.model_validate_json(v) for v in raw.values()), key=lambda m: m.node)


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


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)
