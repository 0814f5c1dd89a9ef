"""What ``cluster membership`` and ``cluster info`` show: ``MemberView``, ``ClusterInfo``.

The console (text and ``--json``) and the agent's HTTP API (``GET /v1/membership``) both
build their answers here, so the two faces never disagree; ``to_json()`` is what they
send. Ages are computed against Redis server time, the clock every heartbeat is stamped
with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis

from mcluster.store import members
from mcluster.store.keys import ClusterKeys

__all__ = [
    "CLUSTER_GROUP",
    "CONTROL_GROUP",
    "DEFAULT_SUBCLUSTER",
    "ClusterInfo",
    "MemberView",
    "cluster_info",
    "leader_node",
    "membership",
]

CONTROL_GROUP = "ec_console"
CLUSTER_GROUP = "ec_cluster"
DEFAULT_SUBCLUSTER = "default"


def leader_node(private_name: str) -> str:
    """The node name in a private name: ``#e7-41235#relay-0-2`` -> ``relay-0-2``."""
    return private_name.rpartition("#")[2]


def _ago(now_ms: int, then_ms: int | None) -> int | None:
    return None if then_ms is None else max(0, now_ms - then_ms)


@dataclass(frozen=True)
class MemberView:
    """One block of ``cluster membership``; ``address`` is None when the node has none."""

    private_name: str
    node: str
    subcluster: str | None
    type: str
    version: str
    address: str | None
    groups: tuple[str, ...]
    epoch: int
    last_heartbeat_ms_ago: int | None

    @classmethod
    def of(cls, member: members.Member, now_ms: int) -> MemberView:
        return cls(
            private_name=member.private_name,
            node=member.node,
            subcluster=DEFAULT_SUBCLUSTER if member.node_type == "Momentum" else None,
            type=member.node_type,
            version=member.version,
            address=member.address,
            groups=tuple(member.groups),
            epoch=member.epoch,
            last_heartbeat_ms_ago=_ago(now_ms, member.last_heartbeat_ms),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "private_name": self.private_name,
            "node": self.node,
            "subcluster": self.subcluster,
            "type": self.type,
            "version": self.version,
            "address": self.address,
            "groups": list(self.groups),
            "epoch": self.epoch,
            "last_heartbeat_ms_ago": self.last_heartbeat_ms_ago,
        }


async def membership(client: Redis, keys: ClusterKeys) -> list[MemberView]:
    """Every live member (lease held), sorted by node name."""
    live = await members.all_members(client, keys, live_only=True)
    now_ms = await members.server_time_ms(client)
    return [MemberView.of(m, now_ms) for m in live]


@dataclass(frozen=True)
class ClusterInfo:
    """``cluster info`` for a console attached to ``node`` (None: attached to none).

    ``epoch`` is the attached node's, else the leader's. ``lease_held`` and
    ``lease_renewed_ms_ago`` are None when no node is attached or it has no member
    record. ``reaping`` holds the reaper's progress records as it stored them.
    """

    node: str | None
    daemon: str | None
    private_name: str | None
    control_group: str
    cluster_group: str
    logger_group: str | None
    leader: str | None
    leader_private_name: str | None
    leader_token: int | None
    members: int
    epoch: int | None
    lease_held: bool | None
    lease_renewed_ms_ago: int | None
    reaping: tuple[dict[str, object], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "daemon": self.daemon,
            "private_name": self.private_name,
            "control_group": self.control_group,
            "cluster_group": self.cluster_group,
            "logger_group": self.logger_group,
            "leader": self.leader,
            "leader_private_name": self.leader_private_name,
            "leader_token": self.leader_token,
            "members": self.members,
            "epoch": self.epoch,
            "lease_held": self.lease_held,
            "lease_renewed_ms_ago": self.lease_renewed_ms_ago,
            "reaping": list(self.reaping),
        }


async def cluster_info(client: Redis, keys: ClusterKeys, node: str | None) -> ClusterInfo:
    """``cluster info`` for a console attached to ``node`` (None: attached to none)."""
    every = await members.all_members(client, keys)
    now_ms = await members.server_time_ms(client)
    lead = await members.leader(client, keys)
    reaping = await reaping_progress(client, keys)
    attached = next((m for m in every if m.node == node), None) if node is not None else None
    leader_member = None
    if lead is not None:
        leader_member = next((m for m in every if m.private_name == lead[0]), None)
    epoch_of = attached or leader_member
    return ClusterInfo(
        node=node,
        daemon=attached.address if attached is not None else None,
        private_name=attached.private_name if attached is not None else None,
        control_group=CONTROL_GROUP,
        cluster_group=CLUSTER_GROUP,
        logger_group=None,
        leader=leader_node(lead[0]) if lead is not None else None,
        leader_private_name=lead[0] if lead is not None else None,
        leader_token=lead[1] if lead is not None else None,
        members=sum(1 for m in every if m.live),
        epoch=epoch_of.epoch if epoch_of is not None else None,
        lease_held=attached.live if attached is not None else None,
        lease_renewed_ms_ago=(
            _ago(now_ms, attached.last_heartbeat_ms) if attached is not None else None
        ),
        reaping=tuple(reaping),
    )


async def reaping_progress(client: Redis, keys: ClusterKeys) -> list[dict[str, object]]:
    """What is being reaped right now, for ``cluster info``."""
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.reaping))
    return [json.loads(v) | {"view": k.decode().split(" ", 1)[1]} for k, v in sorted(raw.items())]
