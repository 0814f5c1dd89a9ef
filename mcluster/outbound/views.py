"""Which views an open outbound connection counts in.

A connection report (binding, domain, and optionally the MX ``ip``) is counted, while the
connection is open, in every object of the three outbound replication types:

* ``outbound_cidr`` by the address connected to (only when the report gives ``ip``),
* ``outbound_domains`` by destination domain,
* ``outbound_binding_domains`` by ``binding::domain``,

where an object with ``binding_group = "G"`` (Momentum's per-group objects, e.g.
``Replicate "outbound_cidr_G" { class = "outbound_cidr"  binding_group = "G" }``) counts
only the connections of bindings in group G, and one without counts every connection.
The connection views are the objects named for their type (``Replicate
"outbound_domains" {}``) and those with a ``class``; an object that only borrows the
type for its storage (``Replicate "totals" { type = "outbound_domains" }``, a gauge table
of the caller's own keys) is left alone. Domains are counted in lower case, as
DNS compares them; the binding as the MTA names it.

The counts go through the node's outboxes (``Node.record``), like any event: exact once
shipped, lazily (within the object's ``max_delay``), and a dead node's counts leave with
its views when it is reaped. ``Slots`` records +1 when a slot is taken and -1 when it is
given back, once per slot.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mcluster.config import ClusterConfig

CIDR = "outbound_cidr"
DOMAINS = "outbound_domains"
BINDING_DOMAINS = "outbound_binding_domains"
TYPES = (CIDR, DOMAINS, BINDING_DOMAINS)
MEMO = 4096  # reports whose targets are remembered (cleared when full)

#: (object name, key) pairs one connection is counted in.
Targets = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ViewObject:
    """One outbound view object of the config."""

    name: str
    type: str
    group: str | None  # casefolded binding_group; None: every binding


class ConnectionViews:
    """The outbound view objects of one config, and the keys a connection counts under."""

    def __init__(self, config: ClusterConfig) -> None:
        self.objects = [
            ViewObject(obj.name, kind, obj.binding_group.casefold() if obj.binding_group else None)
            for obj in config.objects
            if (kind := obj.class_ or obj.type) in TYPES and (obj.class_ or obj.name == obj.type)
        ]
        self._memo: dict[tuple[str, str, str | None, str | None], Targets] = {}

    def adopt(self, other: ConnectionViews) -> None:
        """Take ``other``'s objects (a config reload)."""
        self.objects, self._memo = other.objects, {}

    def targets(
        self, binding: str, domain: str, group: str | None, ip: str | None = None
    ) -> Targets:
        """Every (object, key) a connection on ``binding`` (in ``group``) to ``domain``
        (at ``ip``) counts in (remembered: the hot path of every open)."""
        memo = (binding, domain, group, ip)
        found = self._memo.get(memo)
        if found is None:
            if len(self._memo) >= MEMO:
                self._memo.clear()
            found = self._memo[memo] = self._targets(binding, domain, group, ip)
        return found

    def _targets(self, binding: str, domain: str, group: str | None, ip: str | None) -> Targets:
        folded = group.casefold() if group else None
        domain = domain.lower()
        address = ipaddress.ip_address(ip).compressed if ip is not None else None
        found: list[tuple[str, str]] = []
        for obj in self.objects:
            if obj.group is not None and obj.group != folded:
                continue
            if obj.type == CIDR:
                if address is not None:
                    found.append((obj.name, address))
            elif obj.type == DOMAINS:
                found.append((obj.name, domain))
            else:
                found.append((obj.name, f"{binding}::{domain}"))
        return tuple(found)
