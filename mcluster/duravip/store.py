"""DuraVIP state in Redis: ownership leases with fencing tokens, node records, handoffs.

Every key carries the ``{cluster}`` hash tag, like the membership leases, so one script
checks a node's membership lease and changes an address's ownership atomically:

- ``B:vip:ADDR``      ownership lease, ``NODE PRIVATE TOKEN``, TTL ``lease_ttl``
- ``B:vip_token``     fencing token counter (grows with every owner of every address)
- ``B:vip_since``     hash ADDR -> Redis ms of its last ownership change
- ``B:vip_handoff``   hash ADDR -> ``NODE DEADLINE_MS``: hand it to NODE (move, preference)
- ``B:vip_nodes``     hash NODE -> JSON: the node's DuraVIP config (what it would serve)
- ``B:vip_control``   hash ``announce:NODE`` / ``ack:NODE`` / ``debug:NODE`` -> value
- ``B:arp``           hash NODE -> JSON: its addresses and MACs (``cluster arp show``)

(``B`` = ``NS:{cluster}``.) Every transition is one script: ``duravip_claim``,
``duravip_renew``, ``duravip_release``, ``duravip_move``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from mcluster.store.keys import ClusterKeys, text
from mcluster.store.members import server_time_ms
from mcluster.store.scripts import Scripts


@dataclass(frozen=True)
class VipKeys:
    keys: ClusterKeys

    def lease(self, address: str) -> str:
        return f"{self.keys.base}:vip:{address}"

    @property
    def token(self) -> str:
        return f"{self.keys.base}:vip_token"

    @property
    def since(self) -> str:
        return f"{self.keys.base}:vip_since"

    @property
    def handoff(self) -> str:
        return f"{self.keys.base}:vip_handoff"

    @property
    def nodes(self) -> str:
        return f"{self.keys.base}:vip_nodes"

    @property
    def control(self) -> str:
        return f"{self.keys.base}:vip_control"

    @property
    def arp(self) -> str:
        return f"{self.keys.base}:arp"


@dataclass(frozen=True)
class Owner:
    """Who holds an address's ownership lease: node, private name, fencing token."""

    node: str
    private_name: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.node} {self.private_name} {self.token}"

    @classmethod
    def parse(cls, raw: bytes | str | None) -> Owner | None:
        if raw is None:
            return None
        node, private, token = text(raw).split(" ")
        return cls(node, private, int(token))


@dataclass(frozen=True)
class VipAddress:
    """One address of a node's record: the services the node puts on it (sorted) and the
    preferred nodes its config names."""

    services: tuple[str, ...] = ()
    preferences: tuple[str, ...] = ()


@dataclass(frozen=True)
class VipRecord:
    """A node's published DuraVIP config (``B:vip_nodes``, JSON), which other nodes'
    elections and the console read. A record an older agent wrote may lack fields:
    ``parse`` gives them their defaults, here and nowhere else."""

    private_name: str = ""
    addresses: Mapping[str, VipAddress] = field(default_factory=dict)  # what it would serve
    config_since: Mapping[str, int] = field(default_factory=dict)  # ms its entry last changed
    interface: str = ""
    lease_ttl_ms: int = 3000
    command_timeout_ms: int = 10000

    @classmethod
    def parse(cls, raw: bytes | str) -> VipRecord:
        data = json.loads(raw)
        return cls(
            private_name=str(data.get("private_name", "")),
            addresses={
                address: VipAddress(
                    tuple(vip.get("services", ())), tuple(vip.get("preferences", ()))
                )
                for address, vip in data.get("addresses", {}).items()
            },
            config_since={a: int(ms) for a, ms in data.get("config_since", {}).items()},
            interface=str(data.get("interface", "")),
            lease_ttl_ms=int(data.get("lease_ttl_ms", 3000)),
            command_timeout_ms=int(data.get("command_timeout_ms", 10000)),
        )

    def to_json(self) -> dict[str, Any]:
        """The stored shape (what ``parse`` reads)."""
        return {
            "private_name": self.private_name,
            "addresses": {
                a: {"services": list(v.services), "preferences": list(v.preferences)}
                for a, v in self.addresses.items()
            },
            "config_since": dict(self.config_since),
            "interface": self.interface,
            "lease_ttl_ms": self.lease_ttl_ms,
            "command_timeout_ms": self.command_timeout_ms,
        }


@dataclass
class Snapshot:
    """Everything the election and the console read, in one round trip."""

    now_ms: int
    records: dict[str, VipRecord]  # node -> published record (live nodes only)
    owners: dict[str, Owner | None]  # address -> owner (every address any live node has)
    since: dict[str, int]  # address -> ms of its last ownership change
    handoff: dict[str, tuple[str, int]]  # address -> (node, deadline ms)
    control: dict[str, str] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)  # nodes with a record but no live lease


async def claim(
    scripts: Scripts,
    vk: VipKeys,
    address: str,
    node: str,
    private: str,
    ttl_ms: int,
    dead_reservation: str = "",
) -> tuple[int, str]:
    """Take a free address; ``dead_reservation``: a handoff target seen dead, ignored."""
    token, why = await scripts.run(
        "duravip_claim",
        [vk.lease(address), vk.token, vk.since, vk.handoff, vk.keys.lease(node)],
        [address, node, private, ttl_ms, dead_reservation],
    )
    return int(token), text(why)


async def renew(
    scripts: Scripts, vk: VipKeys, address: str, owner: Owner, ttl_ms: int
) -> tuple[bool, str]:
    held, handoff = await scripts.run(
        "duravip_renew",
        [vk.lease(address), vk.keys.lease(owner.node), vk.handoff],
        [address, owner.value, owner.private_name, ttl_ms],
    )
    return bool(held), text(handoff)


async def release(
    scripts: Scripts, vk: VipKeys, address: str, owner: Owner, to: str, reserve_ms: int
) -> bool:
    done = await scripts.run(
        "duravip_release",
        [vk.lease(address), vk.since, vk.handoff],
        [address, owner.value, to, reserve_ms],
    )
    return bool(done)


async def move(
    scripts: Scripts,
    vk: VipKeys,
    address: str,
    src: str,
    dst: str,
    dst_private: str,
    reserve_ms: int,
) -> tuple[bool, str]:
    ok, why = await scripts.run(
        "duravip_move",
        [vk.lease(address), vk.handoff, vk.keys.lease(dst)],
        [address, src, dst, dst_private, reserve_ms],
    )
    return bool(ok), text(why)


async def publish_record(client: Redis, vk: VipKeys, node: str, record: VipRecord) -> None:
    await client.hset(vk.nodes, node, json.dumps(record.to_json(), sort_keys=True))


async def read_record(client: Redis, vk: VipKeys, node: str) -> VipRecord | None:
    raw = await client.hget(vk.nodes, node)
    return None if raw is None else VipRecord.parse(raw)


async def snapshot(client: Redis, vk: VipKeys) -> Snapshot:
    """The live nodes' records, every address's owner, transitions, handoffs, controls."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(vk.nodes)
        pipe.hgetall(vk.since)
        pipe.hgetall(vk.handoff)
        pipe.hgetall(vk.control)
        raw_nodes, raw_since, raw_handoff, raw_control = await pipe.execute()
    now = await server_time_ms(client)
    records = {text(k): VipRecord.parse(v) for k, v in raw_nodes.items()}
    names = sorted(records)
    leases = await client.mget([vk.keys.lease(n) for n in names]) if names else []
    live = {
        n: records[n]
        for n, lease in zip(names, leases, strict=True)
        if lease is not None and text(lease) == records[n].private_name
    }
    addresses = sorted({a for r in live.values() for a in r.addresses})
    owners = await client.mget([vk.lease(a) for a in addresses]) if addresses else []
    handoff = {}
    for k, v in raw_handoff.items():
        to, _, deadline = text(v).partition(" ")
        if int(deadline) > now:
            handoff[text(k)] = (to, int(deadline))
    return Snapshot(
        now_ms=now,
        records=live,
        owners={a: Owner.parse(o) for a, o in zip(addresses, owners, strict=True)},
        since={text(k): int(v) for k, v in raw_since.items()},
        handoff=handoff,
        control={text(k): text(v) for k, v in raw_control.items()},
        stale=[n for n in names if n not in live],
    )


async def publish_arp(
    client: Redis, vk: VipKeys, node: str, entries: list[tuple[str, str]], now_ms: int
) -> None:
    """A node's ``cluster arp show`` lines: (address, MAC), refreshed at ``now_ms``."""
    record = {"entries": [list(e) for e in entries], "refreshed_ms": now_ms}
    await client.hset(vk.arp, node, json.dumps(record))


async def read_arp(client: Redis, vk: VipKeys) -> dict[str, dict[str, Any]]:
    return {text(k): dict(json.loads(v)) for k, v in (await client.hgetall(vk.arp)).items()}
