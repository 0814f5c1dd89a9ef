"""Adaptive shaping from the config: response rules, AIMD rates and warm-up schedules.

    Shaping "yahoo_ts" { domain = "yahoo.test"  match = "/\\[TS0[1-4]\\]/"
                         action = "suspend"  duration = 1800  trigger = "3/60" }
    Adaptive "yahoo" { provider = "yahoo"  min = "10/60"  max = "1000/60"  decrease = 0.5
                       increase = "10/60"  every = 60  transfail_above = 0.2 }
    Warmup "new_ip" { binding = "b1"  schedule = ("1:200/86400" "2:500/86400") }

The scopes may stand at the top level or inside the ``cluster`` scope. A destination is
one of ``domain``, ``provider`` (a ``Provider "NAME" { mx_suffix = (...) }`` scope of the
same config) or ``host`` (an MX name). Every problem is a ConfigIssue at FILE:LINE:COL,
all of them reported at once, so ``mcluster config check`` lists them together.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from mcluster.config import ClusterConfig, ConfigError, ConfigIssue, Option, Pos, Scope, to_python
from mcluster.errors import InvalidValue
from mcluster.objects.outbound import PROVIDER_OPTIONS
from mcluster.objects.providers import Provider, provider_of, read_providers
from mcluster.objects.rates import Rate, parse_rate

ACTIONS = ("suspend", "rate", "connections")
DEST_KINDS = ("domain", "provider", "host")
#: How long an action holds when the rule does not say (seconds).
DEFAULT_DURATION = 300.0
MAX_DURATION = 86400.0 * 366
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_STEP = re.compile(r"^\s*(\d+)\s*:\s*(.+)$")
Action = Literal["suspend", "rate", "connections"]


@dataclass(frozen=True)
class Destination:
    """Where a rule applies: ``kind`` is domain, provider or host; ``value`` is folded."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    @staticmethod
    def parse(text: str) -> Destination:
        """``domain:yahoo.test`` -> Destination; ValueError names what is wrong."""
        kind, sep, value = text.partition(":")
        if not sep or kind not in DEST_KINDS or not value:
            raise InvalidValue(
                f"bad destination {text!r}: expected domain:NAME, provider:NAME or host:NAME"
            )
        return Destination(kind, value.casefold())


@dataclass(frozen=True)
class ShapingRule:
    """One response rule: when a reply to ``dest`` matches ``pattern`` (``trigger`` times
    in its window, cluster-wide, when set), take ``action`` for ``duration`` seconds."""

    name: str
    dest: Destination
    pattern: re.Pattern[str]
    action: Action
    duration: float
    factor: float = 1.0  # action "rate": the OBTM rate is multiplied by this
    limit: int = 0  # action "connections": at most this many open connections
    trigger: Rate | None = None  # None: the first match fires
    pos: Pos = field(default=Pos("<string>", 0, 0), compare=False)

    @property
    def value(self) -> str:
        """The action's parameter as stored with it in Redis."""
        if self.action == "rate":
            return f"{self.factor:g}"
        return str(self.limit) if self.action == "connections" else ""


@dataclass(frozen=True)
class AdaptiveRule:
    """AIMD on one destination's message rate. Rates are counts per ``period`` seconds
    (the period of ``max``): ``min``, ``max`` and ``increase`` are converted to it."""

    name: str
    dest: Destination
    period: float
    min: float
    max: float
    decrease: float
    increase: float
    every: float
    transfail_above: float
    pos: Pos = field(default=Pos("<string>", 0, 0), compare=False)

    def to_json(self) -> dict[str, Any]:
        """The rule as the nodes publish it (``shaping show`` on a console without the
        config reads it back with ``from_json``)."""
        return {"name": self.name, "dest": str(self.dest), "period": self.period, "min": self.min,
                "max": self.max, "decrease": self.decrease, "increase": self.increase,
                "every": self.every, "transfail_above": self.transfail_above}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdaptiveRule:
        return cls(**{**data, "dest": Destination.parse(data["dest"])})


@dataclass(frozen=True)
class WarmupRule:
    """A new sending IP's limit by day of its warm-up: ``schedule`` is (first day, rate),
    ascending; after the last day's rate holds for a day the binding is warm (no limit)."""

    name: str
    binding: str
    schedule: tuple[tuple[int, Rate], ...]
    start_ms: int | None = None  # from ``start = "YYYY-MM-DD"``; None: first use
    pos: Pos = field(default=Pos("<string>", 0, 0), compare=False)

    def to_json(self) -> dict[str, Any]:
        """The rule as the nodes publish it; ``from_json`` reads it back."""
        return {"name": self.name, "binding": self.binding, "start_ms": self.start_ms,
                "schedule": [f"{day}:{rate}" for day, rate in self.schedule]}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WarmupRule:
        schedule = []
        for step in data["schedule"]:
            day, _, rate = step.partition(":")
            schedule.append((int(day), parse_rate(rate)))
        return cls(**{**data, "schedule": tuple(schedule)})

    def rate_on(self, day: int) -> Rate | None:
        """The rate of warm-up day ``day`` (1 = the first), None when warm (or not begun)."""
        current = None
        for first, rate in self.schedule:
            if first <= day:
                current = rate
        last = self.schedule[-1][0]
        return None if day > last or day < 1 else current


@dataclass(frozen=True)
class ShapingConfig:
    """Everything shaping reads from one config."""

    rules: tuple[ShapingRule, ...] = ()
    adaptive: tuple[AdaptiveRule, ...] = ()
    warmups: tuple[WarmupRule, ...] = ()
    providers: tuple[Provider, ...] = ()  # the config's Provider scopes (outbound's)

    @property
    def enabled(self) -> bool:
        return bool(self.rules or self.adaptive or self.warmups)

    def provider_of(self, host: str | None, mx_hosts: tuple[str, ...] = ()) -> str | None:
        """The (folded) name of the Provider whose ``mx_suffix`` matches ``host`` (else one
        of ``mx_hosts``), as outbound matches it (``mcluster/objects/providers.py``)."""
        name = provider_of(list(self.providers), host, mx_hosts)
        return name.casefold() if name is not None else None


class _Reader:
    """Reads one scope's options, collecting issues instead of stopping at the first."""

    def __init__(self, scope: Scope, issues: list[ConfigIssue]) -> None:
        self.scope = scope
        self.issues = issues
        self.what = f"{scope.kind} {scope.name!r}"
        self.options = {o.key.casefold(): o for o in scope.options()}

    def fail(self, pos: Pos, message: str) -> None:
        self.issues.append(ConfigIssue(pos.file, pos.line, pos.col, f"{self.what}: {message}"))

    def raw(self, key: str) -> tuple[Any, Option] | None:
        option = self.options.get(key)
        return None if option is None else (to_python(option.value), option)

    def number(self, key: str, default: float | None, low: float, high: float) -> float | None:
        found = self.raw(key)
        if found is None:
            if default is None:
                self.fail(self.scope.pos, f"{key} is required")
            return default
        value, option = found
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.fail(option.pos, f"{key} must be a number, got {value!r}")
            return default
        try:
            number = float(value)
        except ValueError:
            self.fail(option.pos, f"{key} must be a number, got {value!r}")
            return default
        if not low <= number <= high:
            self.fail(option.pos, f"{key} must be from {low:g} to {high:g}, got {number:g}")
            return default
        return number

    def rate(self, key: str, required: bool = True) -> Rate | None:
        found = self.raw(key)
        if found is None:
            if required:
                self.fail(self.scope.pos, f'{key} is required (a rate such as "10/60")')
            return None
        value, option = found
        try:
            rate = parse_rate(value)
        except ValueError as exc:
            self.fail(option.pos, f"{key}: {exc}")
            return None
        if rate.unlimited:
            self.fail(option.pos, f"{key}: a rate of 0 is unlimited; give a positive count")
            return None
        return rate

    def text(self, key: str) -> tuple[str, Option] | None:
        found = self.raw(key)
        if found is None:
            return None
        value, option = found
        if not isinstance(value, str) or not value.strip():
            self.fail(option.pos, f"{key} must be a non-empty string, got {value!r}")
            return None
        return value.strip(), option

    def destination(self, providers: set[str]) -> Destination | None:
        given = [(k, self.options[k]) for k in DEST_KINDS if k in self.options]
        if len(given) != 1:
            where = given[1][1].pos if len(given) > 1 else self.scope.pos
            self.fail(where, "give exactly one destination: domain, provider or host")
            return None
        kind = given[0][0]
        found = self.text(kind)
        if found is None:
            return None
        value, option = found
        if kind == "provider" and value.casefold() not in providers:
            known = ", ".join(sorted(providers)) or "none"
            self.fail(
                option.pos,
                f'unknown provider {value!r}: no Provider "{value}" {{ mx_suffix = (...) }} '
                f"scope in this config (defined: {known})",
            )
            return None
        if kind in ("domain", "host") and (
            len(value) > 255 or not value.isprintable() or any(c.isspace() for c in value)
        ):
            self.fail(option.pos, f"{kind} {value!r} is not a domain name")
            return None
        return Destination(kind, value.casefold().rstrip("."))


def _scopes(config: ClusterConfig, kind: str) -> list[Scope]:
    """Scopes of ``kind`` at the top level and inside ``cluster`` scopes."""
    found = list(config.tree.scopes(kind))
    for cluster in config.tree.scopes("cluster"):
        found += cluster.scopes(kind)
    return found


def _named(reader: _Reader, seen: set[str]) -> str | None:
    scope = reader.scope
    name = scope.name or ""
    if not _NAME.match(name):
        reader.fail(scope.pos, "name must be 1-100 letters, digits, '.', '_' or '-'")
        return None
    if name.casefold() in seen:
        reader.fail(scope.pos, f"a second {scope.kind} scope named {name!r}")
        return None
    seen.add(name.casefold())
    return name


def _pattern(reader: _Reader) -> re.Pattern[str] | None:
    found = reader.text("match")
    if found is None:
        if "match" not in reader.options:
            reader.fail(reader.scope.pos, 'match is required (a regex such as "/\\[TS0[1-4]\\]/")')
        return None
    text, option = found
    flags = 0
    if len(text) >= 2 and text.startswith("/") and text.rstrip("i").endswith("/"):
        if text.endswith("i") and not text.endswith("/"):
            flags, text = re.IGNORECASE, text[:-1]
        body = text[1:-1]
    else:
        reader.fail(option.pos, f'match must be a regex between slashes, "/.../", got {text!r}')
        return None
    try:
        return re.compile(body, flags)
    except re.error as exc:
        reader.fail(option.pos, f"match: bad regex {body!r}: {exc}")
        return None


def _rule(reader: _Reader, providers: set[str], seen: set[str]) -> ShapingRule | None:
    name = _named(reader, seen)
    dest = reader.destination(providers)
    pattern = _pattern(reader)
    action_found = reader.text("action")
    action = action_found[0].casefold() if action_found else None
    if action_found is None and "action" not in reader.options:
        reader.fail(reader.scope.pos, f"action is required: one of {', '.join(ACTIONS)}")
    elif action_found is not None and action not in ACTIONS:
        reader.fail(
            action_found[1].pos, f"action must be one of {', '.join(ACTIONS)}, got {action!r}"
        )
        action = None
    duration = reader.number("duration", DEFAULT_DURATION, 0.001, MAX_DURATION)
    factor, limit = 1.0, 0
    if action == "rate":
        factor = reader.number("factor", None, 0.0, 1.0) or 0.0
        if "factor" in reader.options and factor <= 0:
            reader.fail(reader.options["factor"].pos, "factor must be above 0 (use suspend)")
    elif action == "connections":
        limit = int(reader.number("limit", None, 1, 1_000_000) or 0)
    trigger = reader.rate("trigger", required=False)
    if trigger is not None and trigger.count > 10_000:
        reader.fail(reader.options["trigger"].pos, "trigger: at most 10000 matches per window")
        trigger = None
    if name is None or dest is None or pattern is None or action not in ACTIONS:
        return None
    assert duration is not None
    kind = cast(Action, action)
    return ShapingRule(
        name, dest, pattern, kind, duration, factor, limit, trigger, reader.scope.pos
    )


def _adaptive(reader: _Reader, providers: set[str], seen: set[str]) -> AdaptiveRule | None:
    name = _named(reader, seen)
    dest = reader.destination(providers)
    if dest is not None and dest.kind == "host":
        reader.fail(reader.options["host"].pos, "an Adaptive rate is by domain or provider")
        dest = None
    low, high, step = reader.rate("min"), reader.rate("max"), reader.rate("increase")
    decrease = reader.number("decrease", 0.5, 0.01, 0.99)
    every = reader.number("every", 60.0, 0.1, 86400.0)
    above = reader.number("transfail_above", 0.2, 0.0, 1.0)
    if low is None or high is None or step is None or name is None or dest is None:
        return None
    period = high.period
    lo, hi = low.count * period / low.period, float(high.count)
    if lo > hi:
        reader.fail(reader.options["min"].pos, f"min ({low}) is above max ({high})")
        return None
    inc = step.count * period / step.period
    assert decrease is not None and every is not None and above is not None
    return AdaptiveRule(name, dest, period, lo, hi, decrease, inc, every, above, reader.scope.pos)


def _warmup(reader: _Reader, seen: set[str]) -> WarmupRule | None:
    name = _named(reader, seen)
    binding = reader.text("binding")
    if binding is None and "binding" not in reader.options:
        reader.fail(reader.scope.pos, "binding is required")
    found = reader.raw("schedule")
    steps: list[tuple[int, Rate]] = []
    if found is None:
        reader.fail(reader.scope.pos, 'schedule is required, e.g. ("1:200/86400" "2:500/86400")')
    else:
        value, option = found
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            match = _STEP.match(str(item))
            try:
                if match is None:
                    raise ValueError("expected DAY:RATE")
                day, rate = int(match.group(1)), parse_rate(match.group(2))
                if day < 1:
                    raise ValueError("days count from 1")
                if steps and day <= steps[-1][0]:
                    raise ValueError(f"day {day} does not come after day {steps[-1][0]}")
                if rate.unlimited:
                    raise ValueError("a rate of 0 is unlimited")
            except ValueError as exc:
                reader.fail(option.value_pos, f"schedule: bad step {item!r}: {exc}")
                steps = []
                break
            steps.append((day, rate))
        if steps and steps[0][0] != 1:
            reader.fail(option.value_pos, "schedule: the first step must be day 1")
            steps = []
        elif not steps and items == ():
            reader.fail(option.value_pos, "schedule: no steps")
    start_ms = None
    start = reader.text("start")
    if start is not None:
        try:
            day0 = dt.date.fromisoformat(start[0])
            start_ms = int(
                dt.datetime(day0.year, day0.month, day0.day, tzinfo=dt.UTC).timestamp() * 1000
            )
        except ValueError:
            reader.fail(start[1].pos, f"start must be a date YYYY-MM-DD (UTC), got {start[0]!r}")
            return None
    if name is None or binding is None or not steps:
        return None
    return WarmupRule(name, binding[0], tuple(steps), start_ms, reader.scope.pos)


def shaping_config(config: ClusterConfig) -> ShapingConfig:
    """The Shaping, Adaptive and Warmup scopes of ``config``; ConfigError lists every problem."""
    issues: list[ConfigIssue] = []
    # Provider scopes are outbound's (OutboundPolicy reports their own problems)
    found, _ = read_providers(config.tree, PROVIDER_OPTIONS, [])
    providers = {p.name.casefold() for p in found}
    seen: set[str] = set()
    rules = [_rule(_Reader(s, issues), providers, seen) for s in _scopes(config, "Shaping")]
    seen = set()
    adaptive = [_adaptive(_Reader(s, issues), providers, seen) for s in _scopes(config, "Adaptive")]
    seen = set()
    warmups = [_warmup(_Reader(s, issues), seen) for s in _scopes(config, "Warmup")]
    if issues:
        raise ConfigError(issues)
    return ShapingConfig(
        tuple(r for r in rules if r is not None),
        tuple(a for a in adaptive if a is not None),
        tuple(w for w in warmups if w is not None),
        tuple(found),
    )
