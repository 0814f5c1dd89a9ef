"""The Postfix policy service's rules: the ``Policy { ... }`` scope and per-client windows.

    Policy {
      client_rates = ("32,30/60" "24,200/60")   # prefix length, then a rate (IPv4)
      client_rates_ipv6 = ("128,30/60" "64,200/60")
      on_error = "DUNNO"            # or "DEFER_IF_PERMIT": the answer when Redis is away
      deadline_ms = 100             # the answer is sent within this, whatever Redis does
      transaction_timeout = 600     # seconds an unfinished transaction stays counted
      Quota "per_user" { key = "sasl_username"  limit = "100/3600" }   # mcluster.quotas
    }

Each rule is a cluster-wide throttle per client block: ``"24,200/60"`` admits at most 200
mail transactions per 60 s from each /24. The windows are throttles of the family
``policy_rates`` named ``<rule>@<block>`` (e.g. ``v4-24-200-60@10.0.0.0``); their
definitions are derived from the name and this config, never stored in Redis, so a
window costs only its (expiring) window keys. ``Quota`` scopes (mcluster.quotas) add
windows of the same family named ``q.QUOTA:VALUE``, so a transaction's client rates and
quotas are decided in one call.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Literal

from mcluster.config import ClusterConfig, ConfigError, ConfigIssue, ListValue, Option, Scope
from mcluster.config.values import describe, parse_float, parse_int, scalar_text
from mcluster.objects.quota_config import Quota, parse_quotas
from mcluster.objects.quota_keys import PREFIX as QUOTA_PREFIX
from mcluster.objects.quota_keys import window_name
from mcluster.objects.rates import Rate, parse_rate
from mcluster.objects.throttle import ThrottleDef

FAMILY = "policy_rates"
SCOPE = "Policy"
Action = Literal["DUNNO", "DEFER_IF_PERMIT"]
ACTIONS: tuple[Action, ...] = ("DUNNO", "DEFER_IF_PERMIT")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
RULES_CACHE = 65536  # client addresses (and window names) whose rules are remembered
#: The options of the scope that ``mcluster.security.clients`` reads (who may connect, and
#: the bounds); ``policy_config`` skips them. Named here, not there, so this module
#: imports no feature.
GUARD_OPTIONS = ("clients", "max_connections", "idle_timeout", "request_timeout")
OPTIONS = (
    "client_rates",
    "client_rates_ipv6",
    "on_error",
    "deadline_ms",
    "transaction_timeout",
    *GUARD_OPTIONS,
)


@dataclass(frozen=True)
class ClientRate:
    """At most ``rate`` transactions per client block of ``prefix`` bits."""

    prefix: int
    rate: Rate
    ipv6: bool = False

    @functools.cached_property
    def tag(self) -> str:
        """The rule's part of a window name: ``v4-24-200-60``."""
        return f"v{6 if self.ipv6 else 4}-{self.prefix}-{self.rate.count}-{self.rate.period:g}"

    def block(self, address: Address) -> str:
        """The client block of ``address`` under this rule, as ``10.0.0.0/24``."""
        bits = 128 if self.ipv6 else 32
        network = int(address) >> (bits - self.prefix) << (bits - self.prefix)
        return f"{type(address)(network)}/{self.prefix}"

    def __str__(self) -> str:
        return f"{self.prefix},{self.rate}"


@dataclass(frozen=True)
class PolicyConfig:
    """The ``Policy`` scope; the defaults when the config has none."""

    client_rates: tuple[ClientRate, ...] = ()
    on_error: Action = "DUNNO"
    deadline_ms: int = 100
    transaction_timeout: float = 600.0
    source: str = ""
    quotas: tuple[Quota, ...] = ()

    def rules_for(self, address: Address) -> tuple[tuple[ClientRate, str, str], ...]:
        """The rules that apply to a client address, each with its block and its window's
        name. Remembered per address (a busy client asks again and again; formatting
        the blocks showed as about 5 % of the agent in a py-spy profile), up to
        ``RULES_CACHE`` addresses."""
        found = self._rules_cache.get(address)
        if found is None:
            v6 = address.version == 6
            found = tuple(
                (r, block, self.window_name(r, block))
                for r in self.client_rates
                if r.ipv6 == v6
                for block in (r.block(address),)
            )
            if len(self._rules_cache) >= RULES_CACHE:
                self._rules_cache.clear()
            self._rules_cache[address] = found
        return found

    @functools.cached_property
    def _rules_cache(self) -> dict[Address, tuple[tuple[ClientRate, str, str], ...]]:
        return {}

    def window_name(self, rule: ClientRate, block: str) -> str:
        return f"{rule.tag}@{block.partition('/')[0]}"

    @functools.cached_property
    def _rates_by_tag(self) -> dict[str, str]:
        return {rule.tag: str(rule.rate) for rule in self.client_rates}

    @functools.cached_property
    def _quota_rates(self) -> tuple[dict[str, str], dict[str, str]]:
        """Each quota's limit by ``q.QUOTA:`` prefix, and each override by window name."""
        limits = {f"{QUOTA_PREFIX}{q.name}:": str(q.limit) for q in self.quotas}
        overrides = {
            window_name(q.name, value): str(rate)
            for q in self.quotas
            for value, rate in q.overrides.items()
        }
        return limits, overrides

    def _quota_rate(self, name: str) -> str | None:
        limits, overrides = self._quota_rates
        found = overrides.get(name)
        if found is None:
            head, sep, _ = name.partition(":")
            found = limits.get(head + sep)
        return found

    def definition(self, name: str) -> ThrottleDef | None:
        """The throttle a window name stands for (None if no rule or quota has it)."""
        if name.startswith(QUOTA_PREFIX):
            rate = self._quota_rate(name)
        else:
            rate = self._rates_by_tag.get(name.partition("@")[0])
        if rate is None:
            return None
        return _definition(name, rate, self.throttle_on_error, self.deadline_ms)

    def describe(self) -> str:
        """One line for ``mcluster config check``."""
        rules = " ".join(f"{r}{' (IPv6)' if r.ipv6 else ''}" for r in self.client_rates)
        quotas = "".join(f"\n  {q.describe()}" for q in self.quotas)
        return (
            f"Policy: client_rates {rules or 'none'}; on_error {self.on_error}; deadline_ms "
            f"{self.deadline_ms}; transaction_timeout {self.transaction_timeout:g} s{quotas}"
        )

    @property
    def throttle_on_error(self) -> Literal["allow", "deny"]:
        return "allow" if self.on_error == "DUNNO" else "deny"


@functools.lru_cache(maxsize=8192)
def _definition(
    name: str, rate: str, on_error: Literal["allow", "deny"], deadline: int
) -> ThrottleDef:
    return ThrottleDef(name=name, rate=rate, on_error=on_error, deadline_ms=deadline)


class WindowDefs(dict[str, ThrottleDef]):
    """Throttle definitions derived from window names (nothing stored, nothing to load).

    A definition once derived stays in the dict (a decision looks its windows up four
    times), up to ``RULES_CACHE`` names; then the dict starts again."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        return isinstance(name, str) and self._derive(name) is not None

    def __missing__(self, name: str) -> ThrottleDef:
        tdef = self._derive(name)
        if tdef is None:
            raise KeyError(name)
        return tdef

    def _derive(self, name: str) -> ThrottleDef | None:
        tdef = self.config.definition(name)
        if tdef is not None:
            if len(self) >= RULES_CACHE:
                self.clear()
            self[name] = tdef
        return tdef


@functools.lru_cache(maxsize=RULES_CACHE)
def parse_client(text: str) -> Address | None:
    """Postfix's ``client_address`` (an IPv4 or IPv6 address), or None (remembered: a
    busy client asks again and again; parsing showed as 3 % in a py-spy profile)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _issue(pos_holder: Option | Scope, message: str) -> ConfigIssue:
    pos = pos_holder.pos
    return ConfigIssue(pos.file, pos.line, pos.col, message)


def _rates(option: Option, ipv6: bool, issues: list[ConfigIssue]) -> list[ClientRate]:
    value = option.value
    entries = value.items if isinstance(value, ListValue) else (value,)
    most = 128 if ipv6 else 32
    out = []
    for entry in entries:
        text = scalar_text(entry)
        prefix_text, _, rate_text = (text or "").partition(",")
        prefix = parse_int(prefix_text)
        problem = ""
        if text is None or prefix is None or not 0 <= prefix <= most or not rate_text:
            problem = f'expected "PREFIX,RATE" with PREFIX 0..{most}, e.g. "24,200/60"'
        else:
            try:
                rate = parse_rate(rate_text)
            except ValueError as exc:
                problem = str(exc)
            else:
                if rate.unlimited:
                    problem = "a rate of 0 (unlimited) limits nothing"
                else:
                    out.append(ClientRate(prefix, rate, ipv6))
        if problem:
            pos = entry.pos
            issues.append(ConfigIssue(
                pos.file, pos.line, pos.col, f"{option.key} entry {describe(entry)}: {problem}"
            ))  # fmt: skip
    return out


def policy_config(config: ClusterConfig) -> PolicyConfig:
    """The ``Policy`` scope of the config (top level); ConfigError lists every problem."""
    scopes = config.tree.scopes(SCOPE)
    issues = [
        _issue(extra, f"duplicate {SCOPE} scope: first defined at {scopes[0].pos}")
        for extra in scopes[1:]
    ]
    if not scopes:
        return PolicyConfig()
    scope = scopes[0]
    fields: dict[str, object] = {"source": str(scope.pos)}
    rates: list[ClientRate] = []
    seen: set[str] = set()
    for item in scope.items:
        if isinstance(item, Scope):
            if not item.is_("Quota"):
                issues.append(_issue(item, f"unexpected scope {item.label} in {SCOPE}"))
            continue
        key = item.key.casefold()
        text = scalar_text(item.value)
        if key not in OPTIONS:
            valid = ", ".join(OPTIONS)
            issues.append(_issue(item, f"unknown option {item.key!r} in {SCOPE}: expected {valid}"))
        elif key in seen:
            issues.append(_issue(item, f"duplicate option {item.key!r} in {SCOPE}"))
        elif key in GUARD_OPTIONS:
            pass  # mcluster.security.clients.policy_guard reads and checks them
        elif key in ("client_rates", "client_rates_ipv6"):
            rates += _rates(item, key.endswith("ipv6"), issues)
        elif key == "on_error":
            action = (text or "").strip().upper()
            if action not in ACTIONS:
                got = describe(item.value)
                issues.append(_issue(item, f"on_error must be DUNNO or DEFER_IF_PERMIT, got {got}"))
            fields["on_error"] = action
        elif key == "deadline_ms":
            number = None if text is None else parse_int(text)
            if number is None or not 1 <= number <= 60_000:
                got = describe(item.value)
                issues.append(_issue(item, f"deadline_ms must be an integer 1..60000, got {got}"))
            fields["deadline_ms"] = number
        else:
            seconds = None if text is None else parse_float(text)
            if seconds is None or seconds <= 0:
                got = describe(item.value)
                issues.append(_issue(item, f"transaction_timeout must be seconds > 0, got {got}"))
            fields["transaction_timeout"] = seconds
        seen.add(key)
    fields["quotas"] = parse_quotas(scope.scopes("Quota"), issues)
    if issues:
        raise ConfigError(sorted(issues, key=lambda i: (i.file, i.line, i.col)))
    return PolicyConfig(client_rates=tuple(rates), **fields)  # type: ignore[arg-type]


__all__ = [
    "ACTIONS",
    "FAMILY",
    "GUARD_OPTIONS",
    "Address",
    "ClientRate",
    "PolicyConfig",
    "WindowDefs",
    "parse_client",
    "policy_config",
]
