"""``cluster arp show``: this host's cluster addresses and their MAC addresses.

Read from the host with the standard library only: IPv4 addresses of each interface by
``SIOCGIFADDR``, IPv6 ones from ``/proc/net/if_inet6``, MACs from ``/sys/class/net``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

SYS_NET = Path("/sys/class/net")
IF_INET6 = Path("/proc/net/if_inet6")
SIOCGIFADDR = 0x8915
UNKNOWN_MAC = "unknown"


def mac_of(interface: str) -> str:
    """The MAC of ``interface`` (``00:00:00:00:00:00`` for loopback), or ``unknown``."""
    try:
        return (SYS_NET / interface / "address").read_text().strip() or UNKNOWN_MAC
    except OSError:
        return UNKNOWN_MAC


def _ipv4_of(interface: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR,
                                 struct.pack("256s", interface.encode()[:15]))  # fmt: skip
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def interface_addresses() -> dict[str, str]:
    """Every address of this host -> its interface (primary IPv4 ones and all IPv6 ones)."""
    found: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for _, name in socket.if_nameindex():
            address = _ipv4_of(name)
            if address is not None:
                found[address] = name
    with contextlib.suppress(OSError, ValueError):
        for line in IF_INET6.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6:
                found[str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))] = fields[5]
    return found


def cluster_entries(listen: str | None) -> list[tuple[str, str]]:
    """(address, MAC) of the node's cluster address: the host of ``listen`` (HOST:PORT),
    or every non-loopback address when it listens on all of them or says nothing."""
    host = None if listen is None else listen.rpartition(":")[0].strip("[]")
    known = interface_addresses()
    if host in (None, "", "0.0.0.0", "::"):
        return sorted(
            (a, mac_of(i)) for a, i in known.items() if not ipaddress.ip_address(a).is_loopback
        )
    assert host is not None
    interface = known.get(host)
    return [(host, mac_of(interface) if interface else UNKNOWN_MAC)]
