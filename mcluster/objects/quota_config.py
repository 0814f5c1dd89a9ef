"""``Quota "NAME" { ... }`` scopes of the ``Policy`` scope: what each quota limits.

    Policy {
      Quota "per_user" { key = "sasl_username"  limit = "3/60" }
      Quota "rcpt"     { key = "sender"  limit = "5/60"  count = "recipients" }
      Quota "size"     { key = "sasl_username"  limit = "10M/86400"  count = "bytes" }
      Quota "trial"    { key = "sender_domain"  limit = "1/60"  action = "WARN"
                         exempt = ("example.com" "10.0.0.0/8")
                         overrides = ("bulk.example.com=100/60")  empty = "count" }
    }

A quota is a cluster-wide sliding window per key value (see mcluster.objects.rates): at
most N messages, recipients or bytes per S seconds. Parsing checks everything and
reports every problem as ``FILE:LINE:COL: message``, so a bad quota never half-applies.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from mcluster.config import ConfigIssue, ListValue, Option, Scope, Value
from mcluster.config.values import describe, scalar_text
from mcluster.errors import InvalidValue
from mcluster.objects.quota_keys import KeySpec, normalize, parse_key
from mcluster.objects.rates import Rate, parse_rate

Count = Literal["messages", "recipients", "bytes"]
COUNTS: tuple[Count, ...] = ("messages", "recipients", "bytes")
#: What a quota answers when it refuses; WARN only logs (shadow mode).
ACTIONS = ("DEFER_IF_PERMIT", "REJECT", "DEFER", "HOLD", "DISCARD", "WARN")
OPTIONS = ("key", "limit", "count", "action", "empty", "exempt", "overrides")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*(?:/\s*(\S+)\s*)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_limit(text: str, count: Count) -> Rate:
    """``"N/S"``; for bytes N takes K, M or G (powers of 1024). ValueError says why."""
    match = _SIZE.match(text)
    if count == "bytes" and match and match.group(2):
        n = int(match.group(1)) * _UNITS[match.group(2).upper()]
        rate = parse_rate(f"{n}/{match.group(3)}" if match.group(3) else str(n))
    elif match and match.group(2):
        raise InvalidValue(f'bad limit {text!r}: K, M and G are for count = "bytes" only')
    else:
        rate = parse_rate(text)
    if rate.unlimited:
        raise InvalidValue(f"bad limit {text!r}: a limit of 0 (unlimited) limits nothing")
    return rate


@dataclass(frozen=True)
class Exempt:
    """Values a quota never limits: exact values, domains (of address values, or the
    domain keys themselves) and CIDR blocks (for client address keys)."""

    values: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.values or self.domains or self.networks)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if value in self.values:
            return True
        if self.domains and value.rpartition("@")[2] in self.domains:
            return True
        if self.networks:
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:
                return False
            return any(
                net.version == n.version
                and int(n.network_address) <= int(net.network_address)
                and int(net.broadcast_address) <= int(n.broadcast_address)
                for n in self.networks
            )
        return False


@dataclass(frozen=True)
class Quota:
    """One ``Quota`` scope: its key, limit, what it counts and how it answers."""

    name: str
    key: KeySpec
    limit: Rate
    count: Count = "messages"
    action: str = "DEFER_IF_PERMIT"
    empty_counts: bool = False
    exempt: Exempt = field(default_factory=Exempt)
    overrides: dict[str, Rate] = field(default_factory=dict, hash=False, compare=False)
    source: str = ""

    @property
    def warn_only(self) -> bool:
        return self.action == "WARN"

    @property
    def longest_period(self) -> float:
        """The longest window of the quota and its overrides (seconds)."""
        return max([self.limit.period, *(r.period for r in self.overrides.values())])

    def rate_for(self, value: str) -> Rate:
        """The limit of one key value: its override, else the quota's."""
        return self.overrides.get(value, self.limit)

    def limit_text(self, rate: Rate | None = None) -> str:
        """``3 messages per 60 s``, ``10485760 bytes per 86400 s``."""
        rate = rate or self.limit
        noun = self.count[:-1] if rate.count == 1 else self.count  # 1 message, 2 messages
        return f"{rate.count} {noun} per {rate.period:g} s"

    def describe(self) -> str:
        extra = "".join(
            [
                f" action {self.action}" if self.action != "DEFER_IF_PERMIT" else "",
                " empty counted" if self.empty_counts else "",
                f" {len(self.overrides)} overrides" if self.overrides else "",
            ]
        )
        return f'Quota "{self.name}": {self.key} {self.limit_text()}{extra}'


def _issue(where: Option | Scope, message: str) -> ConfigIssue:
    pos = where.pos
    return ConfigIssue(pos.file, pos.line, pos.col, message)


def _entries(option: Option) -> list[tuple[str | None, Value]]:
    value = option.value
    items = value.items if isinstance(value, ListValue) else (value,)
    return [(scalar_text(item), item) for item in items]


def _exempt(option: Option, key: KeySpec, issues: list[ConfigIssue]) -> Exempt:
    values, domains, networks = set(), set(), []
    for text, item in _entries(option):
        pos = item.pos
        if not text:
            issues.append(ConfigIssue(pos.file, pos.line, pos.col, (
                f"exempt entry {describe(item)}: expected a value, domain or CIDR block"
            )))  # fmt: skip
            continue
        if key.is_address:
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                issues.append(ConfigIssue(pos.file, pos.line, pos.col, (
                    f"exempt entry {text!r}: {key} takes addresses or CIDR blocks"
                )))  # fmt: skip
            continue
        value = normalize(text.strip())
        if value.startswith("@"):
            domains.add(value[1:])
        elif "@" not in value and key.holds_addresses:
            domains.add(value)
        else:
            values.add(value)
    return Exempt(frozenset(values), frozenset(domains), tuple(networks))


def _overrides(
    option: Option, key: KeySpec, count: Count, issues: list[ConfigIssue]
) -> dict[str, Rate]:
    out: dict[str, Rate] = {}
    for text, item in _entries(option):
        pos = item.pos
        value, sep, limit = (text or "").rpartition("=")
        problem = ""
        if not sep or not limit:
            problem = 'expected "VALUE=N/S", e.g. "bulk@example.com=10000/3600"'
        else:
            try:
                rate = parse_limit(limit, count)
            except ValueError as exc:
                problem = str(exc)
            else:
                derived = key.canonical(value.strip())
                if derived is None:
                    problem = f"{value.strip()!r} is not a value {key} can take"
                else:
                    out[derived] = rate
        if problem:
            got = describe(item)
            issues.append(
                ConfigIssue(pos.file, pos.line, pos.col, f"overrides entry {got}: {problem}")
            )
    return out


def parse_quota(scope: Scope, issues: list[ConfigIssue]) -> Quota | None:
    """One ``Quota "NAME" { ... }`` scope; problems go to ``issues`` (None then)."""
    before = len(issues)
    name = scope.name or ""
    if not _NAME.match(name):
        issues.append(_issue(scope, (
            f"Quota name {name!r}: expected 1-64 letters, digits, '_', '.' or '-', e.g. "
            'Quota "per_user" { ... }'
        )))  # fmt: skip
    options: dict[str, Option] = {}
    for item in scope.items:
        if isinstance(item, Scope):
            issues.append(_issue(item, f'unexpected scope {item.label} in Quota "{name}"'))
            continue
        key = item.key.casefold()
        if key not in OPTIONS:
            issues.append(_issue(item, (
                f"unknown option {item.key!r} in Quota \"{name}\": expected {', '.join(OPTIONS)}"
            )))  # fmt: skip
        elif key in options:
            issues.append(_issue(item, f'duplicate option {item.key!r} in Quota "{name}"'))
        else:
            options[key] = item

    def text(option: str) -> str | None:
        item = options.get(option)
        if item is None:
            return None
        value = scalar_text(item.value)
        if value is None:
            issues.append(
                _issue(item, f"{option} must be a single value, got {describe(item.value)}")
            )
        return value

    count: Count = "messages"
    if (raw := text("count")) is not None:
        folded = raw.strip().casefold()
        if folded in COUNTS:
            count = folded
        else:
            issues.append(_issue(options["count"], (
                f'count must be "messages", "recipients" or "bytes", got {raw!r}'
            )))  # fmt: skip
    spec: KeySpec | None = None
    if (raw := text("key")) is None:
        if "key" not in options:
            issues.append(_issue(scope, f'Quota "{name}" needs a key, e.g. key = "sasl_username"'))
    else:
        try:
            spec = parse_key(raw)
        except ValueError as exc:
            issues.append(_issue(options["key"], str(exc)))
    limit: Rate | None = None
    if (raw := text("limit")) is None:
        if "limit" not in options:
            issues.append(_issue(scope, f'Quota "{name}" needs a limit, e.g. limit = "100/3600"'))
    else:
        try:
            limit = parse_limit(raw, count)
        except ValueError as exc:
            issues.append(_issue(options["limit"], str(exc)))
    action = "DEFER_IF_PERMIT"
    if (raw := text("action")) is not None:
        action = raw.strip().upper()
        if action not in ACTIONS:
            issues.append(_issue(options["action"], (
                f"action must be one of {', '.join(ACTIONS)}, got {raw!r}"
            )))  # fmt: skip
    empty_counts = False
    if (raw := text("empty")) is not None:
        if raw.strip().casefold() not in ("count", "skip"):
            issues.append(_issue(options["empty"], f'empty must be "count" or "skip", got {raw!r}'))
        empty_counts = raw.strip().casefold() == "count"
    exempt, overrides = Exempt(), {}
    if spec is not None:
        if "exempt" in options:
            exempt = _exempt(options["exempt"], spec, issues)
        if "overrides" in options:
            overrides = _overrides(options["overrides"], spec, count, issues)
    if len(issues) > before or spec is None or limit is None:
        return None
    return Quota(
        name=name,
        key=spec,
        limit=limit,
        count=count,
        action=action,
        empty_counts=empty_counts,
        exempt=exempt,
        overrides=overrides,
        source=str(scope.pos),
    )


def parse_quotas(scopes: tuple[Scope, ...], issues: list[ConfigIssue]) -> tuple[Quota, ...]:
    """Every ``Quota`` scope, names unique (case-insensitive)."""
    out: list[Quota] = []
    seen: dict[str, Scope] = {}
    for scope in scopes:
        folded = (scope.name or "").casefold()
        if folded in seen:
            issues.append(_issue(scope, (
                f'duplicate Quota "{scope.name}": first defined at {seen[folded].pos}'
            )))  # fmt: skip
            continue
        seen[folded] = scope
        quota = parse_quota(scope, issues)
        if quota is not None:
            out.append(quota)
    return tuple(out)
