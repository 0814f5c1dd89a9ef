"""Quota keys: which value of a policy request a quota counts by, and its window's name.

A key is any attribute of Postfix's policy delegation protocol (``sasl_username``,
``sender``, ``recipient``, ``client_address``, ``helo_name``, ...) or a derived one:
``sender_domain``, ``recipient_domain``, ``client_address/N`` (the client's IPv4 /N
block) and ``client_address_ipv6/N`` (its IPv6 /N block). Values are compared
case-insensitively (casefolded): mail addresses, domains and SASL logins are in
practice, and a compromised account must not escape its quota by changing case.

Each key value has a window, a throttle of the policy family named
``q.QUOTA:VALUE``. Characters outside ``[a-z0-9._@/-]`` are written ``+XX`` (per UTF-8
byte) so any value gives a valid throttle name; a value too long for one is written
``+h`` and a digest (shown as such by ``policy show``).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from mcluster.errors import InvalidValue

PREFIX = "q."
MAX_NAME = 200  # a throttle name's length (mcluster.objects.throttle)
_ATTRIBUTE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CIDR_KEY = re.compile(r"^(client_address(?:_ipv6)?)/(\d{1,3})$")
_UNSAFE = re.compile(r"[^a-z0-9._@/-]+")
DOMAIN_KEYS = {"sender_domain": "sender", "recipient_domain": "recipient"}
#: attributes whose values are mail addresses (an exempt entry without ``@`` is a domain)
ADDRESS_ATTRIBUTES = frozenset({"sender", "recipient", "sasl_sender", "original_recipient"})


def normalize(value: str) -> str:
    """A value as quotas compare it: casefolded, surrounding blanks removed."""
    return value.strip().casefold()


@dataclass(frozen=True)
class KeySpec:
    """What a quota counts by: ``attribute`` of the request, perhaps derived (``domain``
    of an address, or the ``prefix`` block of the client address)."""

    text: str
    attribute: str
    domain: bool = False
    prefix: int | None = None
    ipv6: bool = False

    def __str__(self) -> str:
        return self.text

    @property
    def is_address(self) -> bool:
        """Counts by client address (exempt entries are addresses or CIDR blocks)."""
        return self.attribute == "client_address"

    @property
    def holds_addresses(self) -> bool:
        return self.attribute in ADDRESS_ATTRIBUTES or self.attribute == "sasl_username"

    def value(self, attrs: dict[str, str]) -> str | None:
        """This key's value in a request: "" when empty, None when the key cannot apply
        (an IPv6 client under an IPv4 block key, an unparsable client address)."""
        raw = attrs.get(self.attribute, "")
        if self.is_address:
            return self.canonical(raw) if raw else ""
        value = normalize(raw)
        if self.domain:
            return value.rpartition("@")[2] if "@" in value else ""
        return value

    def canonical(self, text: str) -> str | None:
        """A value as typed by an operator (an override, ``policy show``) or sent by
        Postfix, in the form this key's windows use; None if it cannot be one."""
        if not self.is_address:
            value = normalize(text)
            if self.domain:
                value = value.removeprefix("@")
            return value
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            return None
        address = net.network_address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            net = ipaddress.ip_network(f"{address.ipv4_mapped}/{max(0, net.prefixlen - 96)}")
        if self.prefix is None:
            return str(net.network_address) if net.prefixlen == net.max_prefixlen else None
        if (net.version == 6) != self.ipv6 or net.prefixlen < self.prefix:
            return None
        return str(net.supernet(new_prefix=self.prefix) if net.prefixlen > self.prefix else net)


def parse_key(text: str) -> KeySpec:
    """``sasl_username``, ``sender_domain``, ``client_address/24``...; ValueError says why."""
    key = text.strip().casefold()
    if key in DOMAIN_KEYS:
        return KeySpec(key, DOMAIN_KEYS[key], domain=True)
    if match := _CIDR_KEY.match(key):
        ipv6 = match.group(1).endswith("ipv6")
        most = 128 if ipv6 else 32
        prefix = int(match.group(2))
        if not 0 <= prefix <= most:
            raise InvalidValue(
                f"bad key {text!r}: the prefix of {match.group(1)} must be 0..{most}"
            )
        return KeySpec(key, "client_address", prefix=prefix, ipv6=ipv6)
    if not _ATTRIBUTE.match(key):
        raise InvalidValue(
            f"bad key {text!r}: expected a policy attribute (sasl_username, sender, recipient, "
            "client_address, client_name, helo_name, ...), sender_domain, recipient_domain, "
            "client_address/N or client_address_ipv6/N"
        )
    return KeySpec(key, key)


def _escape_one(match: re.Match[str]) -> str:
    return "".join(f"+{b:02X}" for b in match.group().encode())


@functools.lru_cache(maxsize=65536)  # the same senders and logins come back: a dict lookup
def window_name(quota: str, value: str) -> str:
    """The throttle name of one key value's window."""
    head = f"{PREFIX}{quota}:"
    escaped = _UNSAFE.sub(_escape_one, value)
    if len(head) + len(escaped) > MAX_NAME:
        escaped = "+h" + hashlib.sha256(value.encode()).hexdigest()[:40]
    return head + escaped


def split_window(name: str) -> tuple[str, str] | None:
    """(quota, value as shown) of a window name, None if it is no quota's."""
    if not name.startswith(PREFIX):
        return None
    quota, sep, escaped = name[len(PREFIX) :].partition(":")
    if not sep:
        return None
    if escaped.startswith("+h"):
        return quota, f"(sha256 {escaped[2:]})"
    out, i = bytearray(), 0
    while i < len(escaped):
        if escaped[i] == "+" and i + 3 <= len(escaped):
            out.append(int(escaped[i + 1 : i + 3], 16))
            i += 3
        else:
            out += escaped[i].encode()
            i += 1
    return quota, out.decode(errors="replace")
