"""Outbound policy from Momentum's scopes: which throttle buckets and which connection caps
apply to a message or a connection, given its binding, binding group, domain, MX host and
provider.

Throttles (``cluster_outbound_throttle_messages`` for OBTM,
``cluster_outbound_throttle_connections`` for OBTC; scopes Binding_Group, Domain, global)
fall back BY REFERENCE: the first scope that defines the option, in the order
Binding_Group::Domain, Binding_Group, Domain, global, is one bucket shared by everything
that falls back to it. On top of that bucket, each ``Host "MX"`` and ``Provider "P"``
scope (global, or inside a ``Binding``) that sets the option is a bucket of its own,
cluster-wide (Momentum keeps Host throttles per node): a message counts on all of them.

Connection caps:

* ``cluster_max_outbound_connections`` (binding, domain, global): the most specific of
  binding::domain > binding > domain > global gives the limit, counted per binding and
  domain (``binding::domain``). In a ``Host`` scope it caps the connections to that MX
  host across all bindings; in a ``Provider`` scope to every MX host of the provider;
  inside a ``Binding``, that binding's connections to the host or provider. These
  count beside the domain's cap (each one that applies must have room).
* ``cluster_server_max_outbound_connections`` (binding, binding_group, global): a total,
  whatever the destination, per scope that defines it (every one that applies counts).
* ``cluster_scope_max_outbound_connections``: per domain across all bindings (global
  Domain), across a group's bindings (Binding_Group::Domain), or per host (global Host).

A value of -1 or 0, or no value, is unlimited. A ``Domain "/REGEX/"`` scope (Momentum's
regex domains) applies to every destination domain it matches (case-insensitive search)
that has no Domain scope of its own, the first matching one in config order; like any
scope it is one bucket shared by all the domains that fall to it. Providers:
``mcluster/objects/providers.py``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mcluster.config import ClusterConfig, ConfigError, ConfigIssue, Option, Scope, to_python
from mcluster.errors import InvalidValue
from mcluster.objects.providers import Provider, normal_host, provider_of, read_providers
from mcluster.objects.rates import Rate, parse_rate

OBTM_OPTION = "cluster_outbound_throttle_messages"
OBTC_OPTION = "cluster_outbound_throttle_connections"
MAX_CONN = "cluster_max_outbound_connections"
SERVER_MAX = "cluster_server_max_outbound_connections"
SCOPE_MAX = "cluster_scope_max_outbound_connections"
#: What a Provider scope may set (shaping rules add their options here).
PROVIDER_OPTIONS = frozenset({"mx_suffix", OBTM_OPTION, OBTC_OPTION, MAX_CONN})
_MEMO = 4096  # destinations whose buckets and caps are remembered (cleared when full)


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
    """One connection cap: the count key, its limit, and which option set it;
    ``per_host`` for a cap of one MX host (a refusal by it names the sibling MX hosts
    with room)."""

    key: str
    limit: int
    source: str
    per_host: bool = False


@dataclass(frozen=True)
class MxScope:
    """A Host or Provider scope that applies to a route: its bucket/cap path, where it
    sits (``host``, ``binding::host``, ``provider``, ``binding::provider``), whether it
    limits one MX host, and the scope (None: not configured)."""

    path: str
    where: str
    per_host: bool
    scope: Scope | None


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
    """The outbound throttles and caps of one config.

    Decision points, for code that shapes traffic on top (issue 17): ``buckets`` gives
    every OBTM/OBTC bucket a message or connection counts on (all must have room), and
    ``caps`` every connection cap (all must have room); both are pure functions of the
    route and the config, cached per destination, and ``adopt`` swaps the rules on a
    config reload. ``PROVIDER_OPTIONS`` lists what a Provider scope may set."""

    def __init__(self, config: ClusterConfig) -> None:
        self.root = config.tree
        self.group_of: dict[str, str] = {}
        for group in self.root.scopes("Binding_Group"):
            for binding in group.scopes("Binding"):
                if binding.name and group.name:
                    self.group_of[binding.name.casefold()] = group.name
        self.providers: list[Provider] = []
        self._binding_providers: dict[str, Provider] = {}
        self._caps: dict[tuple[object, ...], list[Cap]] = {}
        self._buckets: dict[tuple[object, ...], list[tuple[str, Rate]]] = {}
        self._check()

    def _check(self) -> None:
        """Every value parses: rates for throttles, integers for caps, Provider scopes."""
        issues: list[ConfigIssue] = []
        self.providers, self._binding_providers = read_providers(
            self.root, PROVIDER_OPTIONS, issues
        )
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
            raise ConfigError(sorted(issues, key=lambda i: (i.file, i.line, i.col)))

    def adopt(self, other: OutboundPolicy) -> None:
        """Take ``other``'s rules (a config reload): the slots keep this same object."""
        self.__dict__.update(other.__dict__)

    def group(self, route: Route) -> str | None:
        return route.binding_group or self.group_of.get(route.binding.casefold())

    def provider(self, route: Route) -> str | None:
        """The Provider of the route's MX ``host`` (else of its ``mx_hosts``), if any."""
        return provider_of(self.providers, route.host, route.mx_hosts)

    def throttle(self, option: str, route: Route) -> tuple[str, Rate] | None:
        """The fall-back-by-reference bucket (its scope path) and rate of OBTM/OBTC for a
        route, or None: the first of Binding_Group::Domain, Binding_Group, Domain, global
        that sets ``option``."""
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

    def buckets(self, option: str, route: Route) -> list[tuple[str, Rate]]:
        """Every OBTM/OBTC bucket of a route, all of which must have room: the
        fall-back one (``throttle``), then each of the MX host's and the provider's
        scopes that sets ``option`` (global ``Host``, ``Binding::Host``, global
        ``Provider``, ``Binding::Provider``), each one bucket cluster-wide."""
        memo = (option, *self._destination(route))
        found = self._buckets.get(memo)
        if found is None:
            found = []
            chained = self.throttle(option, route)
            if chained is not None:
                found.append(chained)
            for mx in self._mx_scopes(route):
                value = _value(mx.scope, option)
                if value is not None:
                    rate = parse_rate(str(to_python(value.value)))
                    if not rate.unlimited:
                        found.append((mx.path.casefold(), rate))
            if len(self._buckets) >= _MEMO:
                self._buckets.clear()
            self._buckets[memo] = found
        return found

    def _destination(self, route: Route) -> tuple[object, ...]:
        """What the buckets and caps of a route depend on (not its ip)."""
        mx = route.mx_hosts if not route.host else ()
        return (route.binding, route.domain.lower(), route.binding_group, route.host, mx)

    def _mx_scopes(self, route: Route) -> list[MxScope]:
        """The MX host's and the provider's scopes of a route: global Host,
        Binding::Host, global Provider, Binding::Provider (scope None where absent)."""
        found: list[MxScope] = []
        binding = self._binding(route.binding, self.group(route))
        if route.host:
            host = normal_host(route.host)
            found += [
                MxScope(f"host:{host}", "host", True, _child(self.root, "Host", host)),
                MxScope(f"binding:{route.binding}:host:{host}", "binding::host", True,
                        _child(binding, "Host", host)),
            ]  # fmt: skip
        name = self.provider(route)
        if name is not None:
            top = next(p for p in self.providers if p.name == name)
            mine = f"{binding.name if binding else ''}\0{name}".casefold()
            own = self._binding_providers.get(mine)
            found += [
                MxScope(f"provider:{name}", "provider", False, top.scope),
                MxScope(f"binding:{route.binding}:provider:{name}", "binding::provider", False,
                        own.scope if own else None),
            ]  # fmt: skip
        return found

    def caps(self, route: Route) -> list[Cap]:
        """Every connection cap that applies to opening a connection on ``route``."""
        memo = self._destination(route)
        found = self._caps.get(memo)
        if found is None:
            found = self._resolve_caps(route)
            if len(self._caps) >= _MEMO:
                self._caps.clear()
            self._caps[memo] = found
        return found

    def _resolve_caps(self, route: Route) -> list[Cap]:
        caps = []
        group = self.group(route)
        binding = self._binding(route.binding, group)
        gscope = _child(self.root, "Binding_Group", group)
        host = normal_host(route.host) if route.host else None
        ordered = [
            ("binding::domain", _domain(binding, route.domain)[1]),
            ("binding", binding),
            ("domain", _domain(self.root, route.domain)[1]),
            ("global", self.root),
        ]
        for where, scope in ordered:
            found = _value(scope, MAX_CONN)
            if found is not None:
                limit = _limit(found)
                if limit > 0:
                    count_key = f"{route.binding}::{route.domain}"
                    caps.append(Cap(f"max:{count_key}".casefold(), limit, f"{MAX_CONN} ({where})"))
                break
        for mx in self._mx_scopes(route):  # the MX host's and provider's: each one counts
            found = _value(mx.scope, MAX_CONN)
            if found is not None and (limit := _limit(found)) > 0:
                caps.append(Cap(f"max:{mx.path}".casefold(), limit, f"{MAX_CONN} ({mx.where})",
                                per_host=mx.per_host))  # fmt: skip
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
                caps.append(Cap(key.casefold(), limit, f"{option} ({where})",
                                per_host=where == "global::host"))  # fmt: skip
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
