"""Which listen addresses are loopback: the agent serves anything else only behind a guard."""

from __future__ import annotations

import ipaddress

#: Host names that always mean the loopback interface. Any other name is treated as
#: reachable from the network (it may resolve to anything, now or later).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or name, IPv6 with or without brackets) can only be
    reached from this machine: 127.0.0.0/8, ::1, or ``localhost``. The wildcard addresses
    (``0.0.0.0``, ``::``, an empty host) are not loopback."""
    host = host.strip().strip("[]")
    if host.casefold() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
