"""Membership: a member's lease, its heartbeat, the leader lease, and signs of lost data.

``Member`` is the membership core that nodes and managers share: it joins with a new
epoch (never one used before), renews the lease, follows who leads and leaves. What a
member does when the lease or the data is lost (a node re-syncs its views, a manager
just joins again) stays with the member's owner.

A node is a member while its lease key holds its private name; the heartbeat renews it
every ``heartbeat_interval`` seconds for ``lease_ttl`` seconds. The first live node to
find the leader lease free takes it, with a fencing token that grows with every new
leader. The incarnation marker is set once per Redis data set: if it changes or
vanishes (FLUSHALL, a restart without persistence), every node re-syncs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from redis.asyncio import Redis

from mcluster import __version__
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


class Member:
    """One cluster member's membership: record, lease, heartbeat and leadership.

    ``record`` is None until the first join ends; ``incarnation`` is the data set's marker
    found at the join; ``leader``/``is_leader`` are what the last heartbeat found."""

    def __init__(
        self,
        scripts: Callable[[], Scripts],
        keys: ClusterKeys,
        name: str,
        *,
        lease_ttl: float,
        leader_ttl: float = 0.0,
        address: str | None = None,
        node_type: str | None = None,
        groups: tuple[str, ...] | None = None,
    ) -> None:
        self._scripts = scripts  # a node makes its Redis client at start, not before
        self.keys = keys
        self.name = name
        self.lease_ttl = lease_ttl
        self.leader_ttl = leader_ttl  # 0: never takes the leader lease (a manager)
        self.address = address
        self.node_type = node_type
        self.groups = groups
        self.record: members.Member | None = None
        self.incarnation = ""
        self.leader = ""
        self.is_leader = False

    @property
    def scripts(self) -> Scripts:
        return self._scripts()

    @property
    def client(self) -> Redis:
        return self.scripts.client

    async def join(
        self, register: Callable[[members.Member], Awaitable[None]] | None = None
    ) -> members.Member:
        """A new epoch and private name, and the lease; ``register(record)`` runs before
        the record becomes ``self.record`` (a node registers its views there)."""
        epoch = await members.new_epoch(self.client, self.keys)
        old = self.record
        if old is not None and epoch <= old.epoch:
            # Redis lost the epoch counter (FLUSHALL, failover): never reuse an epoch.
            epoch = int(await self.client.incrby(self.keys.epoch, old.epoch - epoch + 1))
        record = members.new_member(self.name, epoch, os.getpid(), __version__, self.address)
        update: dict[str, object] = {}
        if self.node_type is not None:
            update["node_type"] = self.node_type
        if self.groups is not None:
            update["groups"] = self.groups
        if update:
            record = record.model_copy(update=update)
        self.incarnation = await take_lease(self.scripts, self.keys, record, self.lease_ttl)
        if register is not None:
            await register(record)
        self.record = record
        return record

    async def beat(self, record: members.Member, status: str = "") -> Beat:
        """Renew ``record``'s lease (and the leader lease, for a member that may lead)."""
        found = await beat(
            self.scripts, self.keys, record, self.lease_ttl, self.incarnation,
            self.leader_ttl, status,
        )  # fmt: skip
        if self.leader_ttl:
            self.leader, self.is_leader = found.leader, found.is_leader
        return found

    async def release_leader(self) -> None:
        """Give the leader lease up (leaving, or a reset): another member takes over now."""
        if self.record is not None:
            await release_leader(self.scripts, self.keys, self.record)

    async def leave(self) -> None:
        """Remove the record and the lease if they are still ours; ``record`` is None after."""
        record, self.record = self.record, None
        if record is not None:
            await members.leave(self.client, self.keys, record)
