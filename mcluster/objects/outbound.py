"""Outbound policy from Momentum's scopes: which throttle bucket and which connection caps
apply to a message or a connection, given its binding, binding group, domain and host.

Throttles (``cluster_outbound_throttle_messages`` for OBTM,
``cluster_outbound_throttle_connections`` for OBTC; scopes Binding_Group, Domain, global)
fall back BY REFERENCE: the first scope that defines the option, in the order
Binding_Group::Domain, Binding_Group, Domain, global, is one bucket shared by everything
that falls back to it. Connection caps:

* ``cluster_max_outbound_connections`` (binding, domain, global, host): the most specific
  of binding::host > host > binding::domain > binding > domain > global gives the limit,
  counted per binding and destination (``binding::domain`` or ``binding::host``).
* ``cluster_server_max_outbound_connections`` (binding, binding_group, global): a total,
  whatever the destination, per scope that defines it (every one that applies counts).
* ``cluster_scope_max_outbound_connections``: per domain across all bindings (global
  Domain), across a group's bindings (Binding_Group::Domain), or per host (global Host).

A value of -1 or 0, or no value, is unlimited. A ``Domain "/REGEX/"`` scope (Momentum's
regex domains) applies to every destination domain it matches (case-insensitive search)
that has no Domain scope of its own, the first matching one in config order; like any
scope it is one bucket shared by all the domains that fall to it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mcluster.config import ClusterConfig, ConfigError, ConfigIssue, Option, Scope, to_python
from mcluster.errors import InvalidValue
from mcluster.objects.rates import Rate, parse_rate

OBTM_OPTION = "cluster_outbound_throttle_messages"
OBTC_OPTION = "cluster_outbound_throttle_connections"
MAX_CONN = "cluster_max_outbound_connections"
SERVER_MAX = "cluster_server_max_outbound_connections"
SCOPE_MAX = "cluster_scope_max_outbound_connections"


MAX_MX_HOSTS = 32


@dataclass(frozen=True)
class Route:
    """Where a message or connection goes: the binding (source IP) and destination domain,
    and optionally the binding's group (else from ``Binding_Group`` scopes), the MX host
    connected to, its address ``ip`` (counted in ``outbound_cidr``), and the domain's MX
    hosts ``mx_hosts`` (siblings to spill over to when ``host`` is full)."""

    binding: str
    domain: str
    binding_group: str | None = None
    host: str | None = None
    ip: str | None = None
    mx_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ip is not None:
            try:
                ipaddress.ip_address(self.ip)
            except ValueError:
                raise InvalidValue(f"ip: {self.ip!r} is not an IPv4 or IPv6 address") from None
        if not isinstance(self.mx_hosts, tuple):
            object.__setattr__(self, "mx_hosts", tuple(self.mx_hosts))
        if len(self.mx_hosts) > MAX_MX_HOSTS:
            raise InvalidValue(f"mx_hosts: at most {MAX_MX_HOSTS} hosts, got {len(self.mx_hosts)}")


@dataclass(frozen=True)
class Cap:
    """One connection cap: the count key, its limit, and which option set it."""

    key: str
    limit: int
    source: str


def _value(scope: Scope | None, key: str) -> Option | None:
    return scope.get(key) if scope is not None else None


def _child(scope: Scope | None, kind: str, name: str | None) -> Scope | None:
    if scope is None or name is None:
        return None
    return scope.scope(kind, name)


def _regex(scope: Scope) -> re.Pattern[str] | None:
    """The pattern of a ``Domain "/REGEX/"`` scope, None for a plain domain."""
    name = scope.name or ""
    if len(name) < 3 or not (name.startswith("/") and name.endswith("/")):
        return None
    return re.compile(name[1:-1], re.IGNORECASE)


def _domain(scope: Scope | None, domain: str) -> tuple[str, Scope | None]:
    """The Domain scope of ``domain`` under ``scope`` and its name: the exact one, else the
    first regex Domain that matches, else (domain, None)."""
    exact = _child(scope, "Domain", domain)
    if exact is not None or scope is None:
        return domain, exact
    for child in scope.scopes("Domain"):
        pattern = _regex(child)
        if pattern is not None and pattern.search(domain):
            return child.name or domain, child
    return domain, None


class OutboundPolicy:
    """The outbound throttles and caps of one config."""

    def __init__(self, config: ClusterConfig) -> None:
        self.root = config.tree
        self.group_of: dict[str, str] = {}
        for group in self.root.scopes("Binding_Group"):
            for binding in group.scopes("Binding"):
                if binding.name and group.name:
                    self.group_of[binding.name.casefold()] = group.name
        self._check()

    def _check(self) -> None:
        """Every value parses: rates for throttles, integers for caps."""
        issues = []
        for _, scope in [(self.root, self.root), *self.root.walk()]:
            if scope.is_("Domain"):
                try:
                    _regex(scope)
                except re.error as exc:
                    pos = scope.pos
                    issues.append(
                        ConfigIssue(
                            pos.file, pos.line, pos.col, f"Domain {scope.name!r}: bad regex: {exc}"
                        )
                    )
            for option in scope.options():
                key = option.key.casefold()
                try:
                    if key in (OBTM_OPTION, OBTC_OPTION):
                        parse_rate(str(to_python(option.value)))
                    elif key in (MAX_CONN, SERVER_MAX, SCOPE_MAX):
                        _limit(option)
                except ValueError as exc:
                    pos = option.pos
                    issues.append(ConfigIssue(pos.file, pos.line, pos.col, f"{option.key}: {exc}"))
        if issues:
            raise ConfigError(issues)

    def adopt(self, other: OutboundPolicy) -> None:
        """Take ``other``'s rules (a config reload): the slots keep this same object."""
        self.__dict__.update(other.__dict__)

    def group(self, route: Route) -> str | None:
        return route.binding_group or self.group_of.get(route.binding.casefold())

    def throttle(self, option: str, route: Route) -> tuple[str, Rate] | None:
        """The bucket (its scope path) and rate of OBTM/OBTC for a route, or None."""
        group = self.group(route)
        gscope = _child(self.root, "Binding_Group", group)
        gname, gdomain = _domain(gscope, route.domain)
        name, domain = _domain(self.root, route.domain)
        candidates = [
            (f"group:{group}:domain:{gname}", gdomain),
            (f"group:{group}", gscope),
            (f"domain:{name}", domain),
            ("global", self.root),
        ]
        for path, scope in candidates:
            found = _value(scope, option)
            if found is not None:
                rate = parse_rate(str(to_python(found.value)))
                return None if rate.unlimited else (path.casefold(), rate)
        return None

    def caps(self, route: Route) -> list[Cap]:
        """Every connection cap that applies to opening a connection on ``route``."""
        caps = []
        group = self.group(route)
        binding = self._binding(route.binding, group)
        gscope = _child(self.root, "Binding_Group", group)
        host = route.host
        ordered = [
            ("binding::host", _child(binding, "Host", host), f"{route.binding}::{host}"),
            ("host", _child(self.root, "Host", host), f"{route.binding}::{host}"),
            ("binding::domain", _domain(binding, route.domain)[1], None),
            ("binding", binding, None),
            ("domain", _domain(self.root, route.domain)[1], None),
            ("global", self.root, None),
        ]
        for where, scope, key in ordered:
            found = _value(scope, MAX_CONN)
            if found is not None:
                limit = _limit(found)
                if limit > 0:
                    count_key = key or f"{route.binding}::{route.domain}"
                    caps.append(Cap(f"max:{count_key}".casefold(), limit, f"{MAX_CONN} ({where})"))
                break
        name, domain = _domain(self.root, route.domain)
        gname, gdomain = _domain(gscope, route.domain)
        for option, where, scope, key in [
            (SERVER_MAX, "global", self.root, "server:global"),
            (SERVER_MAX, "binding_group", gscope, f"server:group:{group}"),
            (SERVER_MAX, "binding", binding, f"server:binding:{route.binding}"),
            (SCOPE_MAX, "global::domain", domain, f"scope:domain:{name}"),
            (SCOPE_MAX, "binding_group::domain", gdomain, f"scope:group:{group}:domain:{gname}"),
            (SCOPE_MAX, "global::host", _child(self.root, "Host", host), f"scope:host:{host}"),
        ]:  # fmt: skip
            found = _value(scope, option)
            if found is not None and (limit := _limit(found)) > 0:
                caps.append(Cap(key.casefold(), limit, f"{option} ({where})"))
        return caps

    def _binding(self, name: str, group: str | None) -> Scope | None:
        gscope = _child(self.root, "Binding_Group", group)
        return _child(gscope, "Binding", name) or _child(self.root, "Binding", name)


def _limit(option: Option) -> int:
    value = to_python(option.value)
    try:
        limit = int(str(value))
    except ValueError:
        raise InvalidValue(
            f"expected a whole number of connections (-1 = unlimited), got {value!r}"
        ) from None
    if limit < -1:
        raise InvalidValue(f"expected a whole number >= -1 (-1 = unlimited), got {limit}")
    return limit
