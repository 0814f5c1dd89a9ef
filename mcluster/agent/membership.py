"""Membership: a node's lease, its heartbeat, the leader lease, and signs of lost data.

A node is a member while its lease key holds its private name; the heartbeat renews it
every ``heartbeat_interval`` seconds for ``lease_ttl`` seconds. The first live node to
find the leader lease free takes it, with a fencing token that grows with every new
leader. The incarnation marker is set once per Redis data set: if it changes or
vanishes (FLUSHALL, a restart without persistence), every node re-syncs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from mcluster.agent.outbox import Outbox
from mcluster.store import members
from mcluster.store.keys import ClusterKeys, text
from mcluster.store.scripts import Scripts


@dataclass(frozen=True)
class Beat:
    """What one heartbeat found."""

    lease: bool  # the lease is still ours
    same_data: bool  # the incarnation marker is unchanged
    token: int  # fencing token when this node is leader, else 0
    leader: str  # private name of the leader, '' when there is none

    @property
    def is_leader(self) -> bool:
        return self.token > 0


async def take_lease(
    scripts: Scripts, keys: ClusterKeys, member: members.Member, ttl: float
) -> str:
    """Take the node's lease and write its record; returns the data set's incarnation."""
    incarnation, _ = await scripts.run(
        "lease_take",
        [keys.lease(member.node), keys.members, keys.incarnation],
        [member.private_name, member.node, int(ttl * 1000), members.record_json(member),
         uuid.uuid4().hex],
    )  # fmt: skip
    return bytes(incarnation).decode()


async def beat(
    scripts: Scripts,
    keys: ClusterKeys,
    member: members.Member,
    ttl: float,
    incarnation: str,
    leader_ttl: float,
    status: str = "",
) -> Beat:
    """Renew the lease (and the leader lease, or take it when it is free); ``status`` (a
    node's figures, ``store/node_status``) is stored with the renewal."""
    lease, same, token, leader = await scripts.run(
        "heartbeat",
        [keys.lease(member.node), keys.members, keys.incarnation, keys.leader, keys.leader_token,
         keys.status],
        [member.private_name, member.node, int(ttl * 1000), incarnation, int(leader_ttl * 1000),
         status],
    )  # fmt: skip
    name = bytes(leader).decode().rsplit(" ", 1)[0] if leader else ""
    return Beat(bool(lease), bool(same), int(token), name)


async def lost_batches(scripts: Scripts, boxes: Iterable[Outbox]) -> str | None:
    """Why Redis has lost batches it had applied (a failover to a stale replica), or None."""
    boxes = list(boxes)
    # What was acknowledged BEFORE asking: a batch acknowledged meanwhile is no loss.
    acked = [(box.view, box.acked) for box in boxes]
    async with scripts.client.pipeline(transaction=False) as pipe:
        for box in boxes:
            pipe.hexists(box.keys.views, box.view)
            pipe.hget(box.keys.seq, box.view)
        replies = await pipe.execute()
    for i, box in enumerate(boxes):
        registered, seq = replies[2 * i], replies[2 * i + 1]
        view, applied = acked[i]
        if view != box.view:  # re-synced meanwhile: nothing to compare
            continue
        if not registered:
            return f"{box.name}: view {box.view} is no longer registered"
        if int(seq or 0) < applied:
            return f"{box.name}: Redis holds batch {int(seq or 0)}, {applied} was applied"
    return None


async def release_leader(scripts: Scripts, keys: ClusterKeys, member: members.Member) -> None:
    """Give the leader lease up when leaving, so another node takes over at once."""
    leader = await scripts.client.get(keys.leader)
    if leader is not None and text(leader).rsplit(" ", 1)[0] == member.private_name:
        await scripts.client.delete(keys.leader)
