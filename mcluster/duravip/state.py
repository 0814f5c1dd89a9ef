"""What the cluster says about each DuraVIP: candidates, owner, states, the elected node.

Pure functions over a ``store.Snapshot``; the agent elects with them and the console
prints them, so both always agree.

States, as Momentum names them: ``owned`` / ``unowned``; ``safe``, or ``UNSAFE`` when
the live candidates disagree on the services (bindings, listeners) of the address;
``BROKEN`` when a binding name sits on this address on one node and on another address
on another node (the address is then left unmanaged); ``conflict`` when the candidates
name two different preferred nodes (the preference is then ignored).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Any

from mcluster.duravip.config import VipConfig
from mcluster.duravip.store import Owner, Snapshot, VipAddress, VipRecord


def vip_record(vip: VipConfig) -> VipAddress:
    """How a node publishes one address of its config."""
    return VipAddress(tuple(sorted(s.name for s in vip.services)), tuple(vip.preferences))


@dataclass(frozen=True)
class VipState:
    address: str
    bindings: list[str]
    owner: Owner | None
    candidates: list[str]
    unsafe: bool
    broken: bool
    conflict: bool
    preferred: str | None  # the live, uncontested preferred node
    view_since_ms: int | None
    config_since_ms: int | None

    @property
    def states(self) -> list[str]:
        found = ["owned" if self.owner else "unowned", "UNSAFE" if self.unsafe else "safe"]
        if self.broken:
            found.append("BROKEN")
        if self.conflict:
            found.append("conflict")
        return found

    def to_json(self) -> dict[str, Any]:
        """The exact shape of ``cluster duravip show --json``."""
        return {
            "address": self.address,
            "bindings": self.bindings,
            "owner": self.owner.node if self.owner else None,
            "state": self.states,
            "candidates": self.candidates,
        }


def _rank(address: str, node: str) -> bytes:
    return hashlib.sha1(f"{address}|{node}".encode()).digest()


def elected(state: VipState) -> str | None:
    """Who should own the address: the preferred node if live, else the highest-ranked
    candidate (rendezvous hashing spreads addresses evenly; every node computes the same).
    None for a BROKEN address (unmanaged) or when no candidate is live."""
    if state.broken or not state.candidates:
        return None
    if state.preferred is not None:
        return state.preferred
    return max(state.candidates, key=lambda node: _rank(state.address, node))


def _name_addresses(records: dict[str, VipRecord]) -> dict[str, set[str]]:
    """Service name -> every address any live node puts it on."""
    where: dict[str, set[str]] = {}
    for record in records.values():
        for address, vip in record.addresses.items():
            for service in vip.services:
                where.setdefault(service, set()).add(address)
    return where


def states(snap: Snapshot) -> list[VipState]:
    """Every DuraVIP any live node has, in address order."""
    where = _name_addresses(snap.records)
    found = []
    for address, owner in sorted(snap.owners.items(), key=lambda item: _sort_key(item[0])):
        vips = {
            node: record.addresses[address]
            for node, record in sorted(snap.records.items())
            if address in record.addresses
        }
        services = {v.services for v in vips.values()}
        names = sorted({s for group in services for s in group})
        preferences = {p for v in vips.values() for p in v.preferences}
        conflict = len(preferences) > 1
        preferred = next(iter(preferences)) if len(preferences) == 1 else None
        since = [snap.records[node].config_since.get(address, 0) for node in vips]
        found.append(
            VipState(
                address=address,
                bindings=sorted({n.split(":", 1)[1] for n in names}),
                owner=owner,
                candidates=sorted(vips),
                unsafe=len(services) > 1,
                broken=any(where.get(n, set()) != {address} for n in names),
                conflict=conflict,
                preferred=preferred if preferred in vips else None,
                view_since_ms=snap.since.get(address),
                config_since_ms=max(since) if since else None,
            )
        )
    return found


def _sort_key(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    return ip.version, ip.packed
