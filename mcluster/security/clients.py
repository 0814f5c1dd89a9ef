"""The Postfix policy service's guard: which clients it answers, and its bounds.

    Policy {
      clients = ("10.1.0.0/16" "2001:db8::/32")   # default: loopback only
      max_connections = 1000     # connections open at once; more are closed at once
      idle_timeout = 600         # seconds a connection may wait between requests
      request_timeout = 10       # seconds from a request's first byte to its empty line
    }

A connection from an address outside ``clients`` is closed at once, before anything is
read or answered, counted in ``mcluster_refusals_total{face="policy",reason="not_allowed"}``
and logged once per address per minute (a scanner cannot fill the log). Without
``clients`` only loopback clients are answered, and the agent refuses to start with
``--policy`` on an address other than loopback: smtpd on other hosts needs ``clients``.

Postfix keeps a policy connection open between requests (``smtpd_policy_service_max_idle``,
300 s by default), so the idle timeout's default is above that; a request arrives in one
write, so ten seconds for one is generous.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass

from mcluster.config import ClusterConfig, ConfigError, ConfigIssue, ListValue, Option
from mcluster.config.values import describe, parse_float, parse_int, scalar_text
from mcluster.objects.policy import GUARD_OPTIONS
from mcluster.security.errors import GuardError
from mcluster.security.listen import is_loopback

log = logging.getLogger("mcluster.security")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
#: Seconds between two log lines about the same refused address.
LOG_EVERY = 60.0
#: Addresses remembered for that; past it the oldest are forgotten (a scan of many).
LOG_MEMORY = 10_000


@dataclass(frozen=True)
class PolicyGuard:
    """The ``Policy`` scope's guard options; the defaults when the config has none."""

    clients: tuple[Network, ...] = LOOPBACK
    configured: bool = False  # whether the config names its clients
    max_connections: int = 1000
    idle_timeout: float = 600.0
    request_timeout: float = 10.0

    def allows(self, host: str) -> bool:
        """Whether a peer address (as the socket gives it) may use the service."""
        try:
            address = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:  # not an IP peer (a Unix socket): not on any list
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.clients)

    def check_listen(self, host: str) -> None:
        """Refuse (GuardError, one line) to serve off loopback without ``clients``."""
        if not self.configured and not is_loopback(host):
            raise GuardError(
                f"refusing to serve the policy service on {host or 'every address'} (not "
                'loopback) without an allow-list: set Policy { clients = ("10.0.0.0/8") } '
                "to the smtpd hosts' addresses, or --policy 127.0.0.1:PORT"
            )


def _issue(option: Option, message: str) -> ConfigIssue:
    return ConfigIssue(option.pos.file, option.pos.line, option.pos.col, message)


def _clients(option: Option, issues: list[ConfigIssue]) -> tuple[Network, ...]:
    value = option.value
    entries = value.items if isinstance(value, ListValue) else (value,)
    networks = []
    for entry in entries:
        text = scalar_text(entry)
        try:
            if text is None:
                raise ValueError("not a string")
            networks.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            pos = entry.pos
            issues.append(ConfigIssue(pos.file, pos.line, pos.col, (
                f"clients entry {describe(entry)}: expected an address or CIDR block "
                f'such as "10.1.0.0/16" ({exc})'
            )))  # fmt: skip
    if not entries:
        issues.append(_issue(option, "clients is empty: name at least one address or block"))
    return tuple(networks)


def policy_guard(config: ClusterConfig) -> PolicyGuard:
    """The guard options of the config's ``Policy`` scope; ConfigError lists every problem
    (the rest of the scope is ``objects.policy.policy_config``'s)."""
    scopes = config.tree.scopes("Policy")
    if not scopes:
        return PolicyGuard()
    fields: dict[str, object] = {}
    issues: list[ConfigIssue] = []
    for item in scopes[0].items:
        if not isinstance(item, Option) or item.key.casefold() not in GUARD_OPTIONS:
            continue
        key = item.key.casefold()
        text = scalar_text(item.value)
        if key == "clients":
            fields["clients"] = _clients(item, issues)
            fields["configured"] = True
        elif key == "max_connections":
            number = None if text is None else parse_int(text)
            if number is None or not 1 <= number <= 1_000_000:
                got = describe(item.value)
                issues.append(_issue(item, f"max_connections must be 1..1000000, got {got}"))
            fields[key] = number
        else:
            seconds = None if text is None else parse_float(text)
            if seconds is None or not 0 < seconds < float("inf"):
                got = describe(item.value)
                issues.append(_issue(item, f"{key} must be seconds > 0, got {got}"))
            fields[key] = seconds
    if issues:
        raise ConfigError(issues)
    return PolicyGuard(**fields)  # type: ignore[arg-type]


class RefusalLog:
    """Logs a refused address at most once per ``LOG_EVERY`` seconds."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def should_log(self, host: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        last = self.last.get(host)
        if last is not None and now - last < LOG_EVERY:
            return False
        self.last.pop(host, None)
        self.last[host] = now  # newest last: the oldest are forgotten first
        if len(self.last) > LOG_MEMORY:
            del self.last[next(iter(self.last))]
        return True
