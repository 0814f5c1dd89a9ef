"""What the audit metrics of a cluster are (from its config) and how every face reads them.

* ``AuditSettings``: which event types are counted and where (``Replicate "metrics" {
  parameters = "connect;reception;..." }`` -> the cluster aggregate, ``Replicate
  "eccmgr_metrics" { parameters = "..." }`` -> the manager's only), the monitors of
  ``inbound_audit { monitors = (...) }``, and whether named series may be replicated.
* ``SeriesDef``: a named audit series (``define(name, type, interval, num_windows,
  replicate)``), kept in Redis so every node and the console read the same definition.
* ``show_ip``, ``ip_cluster``, ``outbound_counts``, ``series_count``: the reads.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio import Redis

from mcluster.config import ClusterConfig
from mcluster.errors import AuditError
from mcluster.objects import audit
from mcluster.objects.audit import (
    BY_BINDING,
    BY_DOMAIN,
    EVENT_TYPES,
    GLOBAL,
    INBOUND,
    INBOUND_LABELS,
    MANAGER,
    OUTBOUND,
    SERIES_FIELD,
    Target,
    monitor_target,
    node_aggregate,
    series_target,
)
from mcluster.objects.cidrtree import parse_address, parse_prefix
from mcluster.store.keys import ClusterKeys, ObjectKeys, text
from mcluster.store.scripts import Scripts

#: Monitors used when the config enables audit metrics but sets no inbound_audit monitors.
DEFAULT_MONITORS = ((300, 6),)
METRICS, ECCMGR = "metrics", "eccmgr_metrics"


@dataclass(frozen=True)
class AuditSettings:
    """Where each event type is counted, the monitors, and the series replication allowed."""

    monitors: tuple[tuple[int, int], ...]
    aggregates: dict[str, tuple[str, ...]]  # event type -> aggregates it is counted in
    series_cluster: bool
    series_manager: bool
    max_pending: int = 100
    max_delay: float = 1.0

    @staticmethod
    def from_config(config: ClusterConfig) -> AuditSettings:
        metrics = [p for o in config.of_type(METRICS) for p in o.parameters]
        manager = [p for o in config.of_type(ECCMGR) for p in o.parameters]
        aggregates = {
            t: tuple(a for a, on in ((GLOBAL, t in metrics), (MANAGER, t in manager)) if on)
            for t in EVENT_TYPES
        }
        stanzas = (*config.of_type(METRICS), *config.of_type(ECCMGR))
        return AuditSettings(
            monitors=config.audit_monitors or DEFAULT_MONITORS,
            aggregates={t: a for t, a in aggregates.items() if a},
            series_cluster="audit_series" in metrics,
            series_manager=bool(config.of_type(ECCMGR)),
            max_pending=min((o.max_pending for o in stanzas), default=100),
            max_delay=min((o.max_delay for o in stanzas), default=1.0),
        )

    @property
    def enabled(self) -> bool:
        return bool(self.aggregates) or self.series_cluster or self.series_manager

    def targets(self, aggregate: str) -> list[Target]:
        return [monitor_target(aggregate, w, n) for w, n in self.monitors]

    def aggregate_of(self, event_type: str, reader: str) -> str:
        """The aggregate a reader (``node`` or ``console``) reads an event type from."""
        places = self.aggregates.get(event_type, ())
        if GLOBAL in places:
            return GLOBAL
        if MANAGER in places:
            if reader == "node":
                raise AuditError(
                    f"{event_type} events go to the manager only (eccmgr_metrics): "
                    "nodes do not receive them; read them with the console"
                )
            return MANAGER
        raise AuditError(
            f"{event_type} events are not counted: add {event_type} to the parameters of "
            'Replicate "metrics" { parameters = "..." } in the cluster scope'
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "monitors": [list(m) for m in self.monitors],
            "aggregates": {t: list(a) for t, a in self.aggregates.items()},
            "series_cluster": self.series_cluster,
            "series_manager": self.series_manager,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> AuditSettings:
        return AuditSettings(
            monitors=tuple((int(w), int(n)) for w, n in data["monitors"]),
            aggregates={t: tuple(a) for t, a in data["aggregates"].items()},
            series_cluster=bool(data["series_cluster"]),
            series_manager=bool(data["series_manager"]),
        )


def settings_key(okeys: ObjectKeys) -> str:
    return f"{okeys.base}:settings"


def series_key(okeys: ObjectKeys) -> str:
    return f"{okeys.base}:series"


async def publish_settings(client: Redis, keys: ClusterKeys, settings: AuditSettings) -> None:
    """What a node counts where, for a console started without ``--config``."""
    await client.set(settings_key(audit.audit_keys(keys)), json.dumps(settings.to_json()))


async def load_settings(
    client: Redis, keys: ClusterKeys, config: ClusterConfig | None
) -> AuditSettings:
    if config is not None:
        return AuditSettings.from_config(config)
    raw = await client.get(settings_key(audit.audit_keys(keys)))
    if raw is None:
        raise AuditError("no audit metrics known: give --config FILE, or start an agent first")
    return AuditSettings.from_json(json.loads(text(raw)))


class SeriesDef(BaseModel):
    """A named audit series; span = interval x num_windows seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    type: Literal["cidr", "cidr_ipv6", "string"]
    interval: int = Field(ge=1, le=366 * 86400)
    num_windows: int = Field(ge=1, le=audit.MAX_WINDOWS)
    replicate: Literal["none", "cluster", "manager"] = "none"

    @field_validator("replicate", mode="before")
    @classmethod
    def _momentum_numbers(cls, value: object) -> object:
        """Sieve's replicate flag: 0 none, 1 cluster (metrics), -1 manager (eccmgr)."""
        return {0: "none", 1: "cluster", -1: "manager"}.get(value, value)  # type: ignore[call-overload]

    def aggregates(self, node: str) -> tuple[str, ...]:
        """Where an add goes: the node's own aggregate, and the cluster's or the manager's."""
        own = node_aggregate(node)
        return {"none": (own,), "cluster": (GLOBAL,), "manager": (own, MANAGER)}[self.replicate]

    def reader_aggregate(self, reader: str, node: str | None) -> str:
        """What a node (its own adds, plus the cluster's if replicated to it) or the
        console (the manager's for a manager series; ``from NODE`` for a node's) reads."""
        if reader == "node" or node is not None:
            if node is None:
                raise AuditError(f"series {self.name!r}: which node? (from NODE)")
            return GLOBAL if self.replicate == "cluster" else node_aggregate(node)
        if self.replicate == "none":
            raise AuditError(
                f"series {self.name!r} is not replicated (replicate none): each node keeps "
                "its own; read one with 'from NODE'"
            )
        return GLOBAL if self.replicate == "cluster" else MANAGER

    def target(self, aggregate: str) -> Target:
        return series_target(aggregate, self.name, self.interval, self.num_windows)

    def parse_key(self, key: str) -> bytes:
        """A key to add: an address of the series' family, or a string."""
        if self.type == "string":
            return audit.check_string_key(key).encode()
        packed = parse_address(key)
        if (len(packed) == 4) != (self.type == "cidr"):
            family = "IPv4" if self.type == "cidr" else "IPv6"
            raise AuditError(f"series {self.name!r} is {self.type}: {key!r} is not {family}")
        return packed


def series_def(**fields: Any) -> SeriesDef:
    """A SeriesDef, with pydantic's errors as one AuditError naming each bad field."""
    try:
        return SeriesDef(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise AuditError(f"bad series definition: {problems}") from None


async def define_series(client: Redis, keys: ClusterKeys, sdef: SeriesDef) -> bool:
    """Store a definition; True if new, False if the same one exists; AuditError if another."""
    key = series_key(audit.audit_keys(keys))
    body = sdef.model_dump_json()
    if await client.hsetnx(key, sdef.name, body):
        return True
    existing = await get_series(client, keys, sdef.name)
    if existing != sdef:
        raise AuditError(
            f"series {sdef.name!r} is already defined as {existing.model_dump()}; "
            f"cannot redefine it as {sdef.model_dump()}"
        )
    return False


async def get_series(client: Redis, keys: ClusterKeys, name: str) -> SeriesDef:
    raw = await client.hget(series_key(audit.audit_keys(keys)), name)
    if raw is None:
        raise AuditError(f"no audit series named {name!r}; define it first")
    return SeriesDef.model_validate_json(raw)


async def list_series(client: Redis, keys: ClusterKeys) -> list[SeriesDef]:
    raw = cast(dict[bytes, bytes], await client.hgetall(series_key(audit.audit_keys(keys))))
    return sorted((SeriesDef.model_validate_json(v) for v in raw.values()), key=lambda s: s.name)


# -- reads ------------------------------------------------------------------------------


async def show_ip(
    scripts: Scripts,
    keys: ClusterKeys,
    settings: AuditSettings,
    cidr: str,
    reader: str = "console",
    offset_ms: int = 0,
) -> dict[str, Any]:
    """``inbound_audit show ip CIDR``: per monitor, per window (0 = current), the counts of
    connections, receptions and rejections under the prefix; one script call per
    aggregate read (one, unless some types go to the manager only)."""
    plan = audit.address_plan(cidr)
    counted = [t for t in INBOUND if t in settings.aggregates]
    if not counted:
        settings.aggregate_of(INBOUND[0], reader)  # raises: names what to enable
    monitors: list[dict[str, Any]] = [
        {"window": w, "windows": n} | {INBOUND_LABELS[t]: [0] * n for t in INBOUND}
        for w, n in settings.monitors
    ]
    by_place: dict[str, list[str]] = {}
    for t in counted:
        by_place.setdefault(settings.aggregate_of(t, reader), []).append(t)
    okeys = audit.audit_keys(keys)
    for place, types in by_place.items():
        targets = settings.targets(place)
        spans = [(tg, 0, tg.windows - 1) for tg in targets]
        prefixes = [EVENT_TYPES[t] for t in types]
        _, counts = await audit.read_windows(scripts, okeys, plan, prefixes, spans, offset_ms)
        for entry, per_window in zip(monitors, counts, strict=True):
            for j, t in enumerate(types):
                entry[INBOUND_LABELS[t]] = [window[j] for window in per_window]
    return {"cidr": plan.label, "monitors": monitors}


async def ip_cluster(
    scripts: Scripts,
    keys: ClusterKeys,
    settings: AuditSettings,
    event_type: str,
    ip: str,
    monitor: int = 0,
    mask: int | None = None,
    offset_ms: int = 0,
) -> float:
    """``ec_ip_connections_cluster`` and friends: the weighted sliding average (see
    ``audit.weighted``) of the current and previous window of monitor ``monitor`` for
    ``ip/mask`` (mask defaults to the whole address)."""
    if event_type not in INBOUND:
        raise AuditError(f"event type must be one of {', '.join(INBOUND)}, got {event_type!r}")
    if not 0 <= monitor < len(settings.monitors):
        raise AuditError(f"monitor {monitor} does not exist: {len(settings.monitors)} defined")
    packed, plen = parse_prefix(ip)
    if mask is not None:
        if not 0 <= mask <= 8 * len(packed):
            raise AuditError(f"mask must be 0..{8 * len(packed)}, got {mask}")
        plen = mask
    place = settings.aggregate_of(event_type, "node")
    target = settings.targets(place)[monitor]
    plan = audit.address_plan(f"{ipaddress.ip_address(packed)}/{plen}")
    now, counts = await audit.read_windows(
        scripts,
        audit.audit_keys(keys),
        plan,
        [EVENT_TYPES[event_type]],
        [(target, 0, 1)],
        offset_ms,
    )
    (current,), (previous,) = counts[0]
    return audit.weighted(current, previous, target.window, now)


async def outbound_counts(
    scripts: Scripts,
    keys: ClusterKeys,
    settings: AuditSettings,
    by: str,
    key: str,
    reader: str = "console",
    offset_ms: int = 0,
) -> dict[str, Any]:
    """Deliveries, transient and permanent failures of one domain or binding, per
    monitor and window (as ``show_ip`` for addresses)."""
    if by not in ("domain", "binding"):
        raise AuditError(f"count by 'domain' or 'binding', got {by!r}")
    field = BY_DOMAIN if by == "domain" else BY_BINDING
    counted = [t for t in OUTBOUND if t in settings.aggregates]
    if not counted:
        settings.aggregate_of(OUTBOUND[0], reader)
    monitors: list[dict[str, Any]] = [
        {"window": w, "windows": n} | {t: [0] * n for t in OUTBOUND} for w, n in settings.monitors
    ]
    okeys = audit.audit_keys(keys)
    for t in counted:
        targets = settings.targets(settings.aggregate_of(t, reader))
        spans = [(tg, 0, tg.windows - 1) for tg in targets]
        plan = audit.string_plan(key)
        _, counts = await audit.read_windows(
            scripts, okeys, plan, [f"{EVENT_TYPES[t]}{field}:"], spans, offset_ms
        )
        for entry, per_window in zip(monitors, counts, strict=True):
            entry[t] = [window[0] for window in per_window]
    return {by: key, "monitors": monitors}


async def series_count(
    scripts: Scripts,
    keys: ClusterKeys,
    sdef: SeriesDef,
    key: str,
    start: int = 0,
    end: int | None = None,
    aggregate: str = GLOBAL,
    offset_ms: int = 0,
) -> int:
    """The sum of windows start..end (end defaults to start) of one key or CIDR block."""
    end = start if end is None else end
    if sdef.type == "string":
        plan = audit.string_plan(key)
    else:
        plan = audit.address_plan(key)
        packed_len = int(plan.suffix.split(":")[2])
        if (packed_len == 4) != (sdef.type == "cidr"):
            raise AuditError(f"series {sdef.name!r} is {sdef.type}: {key!r} is of another family")
    spans: Sequence[tuple[Target, int, int]] = [(sdef.target(aggregate), start, end)]
    _, counts = await audit.read_windows(
        scripts, audit.audit_keys(keys), plan, [SERIES_FIELD], spans, offset_ms
    )
    return sum(window[0] for window in counts[0])
