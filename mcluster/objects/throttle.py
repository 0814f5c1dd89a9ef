"""Shared named throttles: definitions, the windows in Redis, and batched decisions.

All keys live under the object's hash tag (``{shared_named_throttles}``), so one script
call decides many requests, each naming several throttles, all-or-nothing. On Redis
Cluster that is one slot: one EVALSHA per batch, whatever the number of throttles.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio import Redis

from mcluster.config import ClusterConfig, ConfigError, ConfigIssue, Option, to_python
from mcluster.errors import ConflictReply, InvalidValue, ThrottleError
from mcluster.objects.rates import Rate, parse_rate
from mcluster.store.keys import ObjectKeys, text
from mcluster.store.scripts import Scripts

OBJECT = "shared_named_throttles"
#: The replication types whose objects are throttle tables (the console lists their use).
FAMILIES = (OBJECT, "OBTM", "OBTC")
MAX_COST = 1_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,199}$")


class ThrottleConflict(ThrottleError):
    """The name exists with another rate."""


class ThrottleDef(BaseModel):
    """A named throttle: rate, Momentum's epsilon, mode and what to do when Redis is away."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    rate: str
    epsilon: float = Field(default=0.95, gt=0, lt=1)
    mode: Literal["exact", "local_quota"] = "exact"
    on_error: Literal["allow", "deny"] = "allow"
    deadline_ms: int = Field(default=50, ge=1, le=60_000)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise InvalidValue(
                f"bad throttle name {value!r}: 1-200 letters, digits or . _ : @ / + -"
            )
        return value

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: object) -> str:
        return str(parse_rate(cast(str, value)))

    @functools.cached_property
    def parsed(self) -> Rate:
        return parse_rate(self.rate)

    @functools.cached_property
    def window_args(self) -> tuple[int, int, int]:
        """N, period ms and bucket ms: this throttle's window in ``throttle_acquire``'s
        ARGV (``plan``), worked out once per definition, not on every call."""
        rate = self.parsed
        return rate.count, rate.period_ms, rate.bucket_ms


def defs_key(okeys: ObjectKeys) -> str:
    return f"{okeys.base}:defs"


def window_key(okeys: ObjectKeys, name: str, node: str | None = None) -> str:
    """The window of a throttle: the cluster's, or one node's share of it."""
    return _window_key(okeys.base, name, node)


def _window_key(base: str, name: str, node: str | None) -> str:
    return f"{base}:w:{name}" if node is None else f"{base}:n:{node}:w:{name}"


@functools.lru_cache(maxsize=1 << 16)
def _window_keys(base: str, name: str, node: str) -> tuple[str, str]:
    """``window_key`` of ``name``, the cluster's and ``node``'s share, remembered: a call
    of ``plan`` made both again for every window (a policy decision names five or so)."""
    return _window_key(base, name, None), _window_key(base, name, node)


async def define(scripts: Scripts, okeys: ObjectKeys, tdef: ThrottleDef) -> bool:
    """Create ``tdef``; True if created, False if it existed with the same rate."""
    try:
        created = await scripts.run(
            "throttle_define", [defs_key(okeys)], [tdef.name, tdef.model_dump_json(), tdef.rate]
        )
    except ConflictReply as exc:
        existing = str(exc).split(" ", 1)[1]
        raise ThrottleConflict(
            f"throttle {tdef.name!r} exists with rate {existing!r}, not {tdef.rate!r}"
        ) from None
    return bool(created)


async def load_defs(client: Redis, okeys: ObjectKeys) -> dict[str, ThrottleDef]:
    raw = cast(dict[bytes, bytes], await client.hgetall(defs_key(okeys)))
    return {text(k): ThrottleDef.model_validate_json(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Request:
    """One decision: the throttles it names with their costs; ``force`` counts regardless."""

    limits: tuple[tuple[str, int], ...]
    force: bool = False


@dataclass(frozen=True)
class Decision:
    """A throttle decision: allowed or not, when to retry, what is left of each limit, and
    whether it was ``degraded`` (Redis did not answer in time: the policy decided)."""

    allowed: bool
    retry_after_ms: int
    remaining: tuple[tuple[str, int], ...]
    degraded: bool = False
    at_ms: int = 0  # Redis server time of the decision (0 when degraded)
    reason: str | None = None  # why it was refused, when a rule says (shaping)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "allowed": self.allowed,
            "retry_after_ms": self.retry_after_ms,
            "degraded": self.degraded,
            "limits": [{"name": n, "remaining": r} for n, r in self.remaining],
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def valid_cost(cost: object, most: int = MAX_COST) -> bool:
    """A cost is an integer 1..most (a bool or float is not)."""
    return type(cost) is int and 0 < cost <= most


def check_request(
    request: Request,
    defs: Mapping[str, ThrottleDef],
    max_cost: int = MAX_COST,
    probes: bool = False,
) -> None:
    """ThrottleError unless every name is defined and every cost valid; with ``probes``
    a negative cost -c (room for c, nothing counted; see throttle_acquire.lua) is too."""
    if not request.limits:
        raise ThrottleError("a request must name at least one throttle")
    for name, cost in request.limits:
        if name not in defs:
            known = ", ".join(sorted(defs)[:20]) or "none"
            raise ThrottleError(f"unknown throttle {name!r}; defined: {known}")
        probe = probes and type(cost) is int and cost < 0
        if not valid_cost(-cost if probe else cost, max_cost):
            raise ThrottleError(f"cost for {name!r} must be an integer 1..{max_cost}, got {cost!r}")


def plan(
    okeys: ObjectKeys,
    requests: Sequence[Request],
    defs: Mapping[str, ThrottleDef],
    node: str,
) -> tuple[list[str], list[int | str]]:
    """KEYS and ARGV of one ``throttle_acquire`` call deciding ``requests``."""
    base = okeys.base
    number: dict[str, int] = {}
    keys: list[str] = []
    shares: list[str] = []
    head: list[int | str] = []
    tail: list[int | str] = []
    for request in requests:
        tail.extend((1 if request.force else 0, len(request.limits)))
        for name, cost in request.limits:
            k = number.get(name)
            if k is None:
                k = number[name] = len(number) + 1
                window, share = _window_keys(base, name, node)
                keys.append(window)
                shares.append(share)
                head.extend(defs[name].window_args)
            tail.extend((k, cost))
    return keys + shares, [len(keys), *head, *tail]


def plan_one(
    okeys: ObjectKeys, request: Request, defs: Mapping[str, ThrottleDef], node: str
) -> tuple[str, list[str], list[int | str]]:
    """Script, KEYS and ARGV deciding one request alone: ``throttle_one`` when it names
    one throttle (the same reply for less work), else ``throttle_acquire``."""
    if len(request.limits) != 1 or request.limits[0][1] < 0:  # throttle_one has no probes
        keys, args = plan(okeys, [request], defs, node)
        return "throttle_acquire", keys, args
    name, cost = request.limits[0]
    rate = defs[name].parsed
    keys = [window_key(okeys, name), window_key(okeys, name, node)]
    return (
        "throttle_one",
        keys,
        [rate.count, rate.period_ms, rate.bucket_ms, cost, int(request.force)],
    )


def decisions(requests: Sequence[Request], reply: Sequence[int]) -> list[Decision]:
    """Split the flat reply of ``throttle_acquire`` into one Decision per request."""
    out = []
    at = int(reply[0])
    i = 1
    for request in requests:
        allowed, retry = bool(reply[i]), int(reply[i + 1])
        m = len(request.limits)
        remaining = tuple(
            (name, int(r))
            for (name, _), r in zip(request.limits, reply[i + 2 : i + 2 + m], strict=True)
        )
        out.append(Decision(allowed, retry, remaining, at_ms=at))
        i += 2 + m
    return out


async def usage(
    client: Redis, okeys: ObjectKeys, node: str | None = None
) -> list[tuple[str, int, str]]:
    """(name, used in the current window, rate) for every defined throttle, cluster-wide
    or by one node (its share)."""
    defs = await load_defs(client, okeys)
    seconds, micros = await client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    rows = []
    for name in sorted(defs):
        rate = defs[name].parsed
        oldest = (now - rate.period_ms) // rate.bucket_ms
        raw = cast(dict[bytes, bytes], await client.hgetall(window_key(okeys, name, node)))
        used = sum(int(c) for b, c in raw.items() if b.isdigit() and int(b) >= oldest)
        rows.append((name, used, str(rate)))
    return rows


def config_throttles(config: ClusterConfig) -> list[ThrottleDef]:
    """``Shared_Throttle "name" { rate = "1000/10" ... }`` scopes of the cluster scope."""
    cluster = config.tree.scope("cluster")
    if cluster is None:
        return []
    found, issues = [], []
    for scope in cluster.scopes("Shared_Throttle"):
        fields = {o.key.lower(): to_python(o.value) for o in scope.items if isinstance(o, Option)}
        try:
            found.append(ThrottleDef.model_validate({"name": scope.name or "", **fields}))
        except ValidationError as exc:
            pos = scope.pos
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            detail = f"{where}: {first['msg'].removeprefix('Value error, ')}"
            issues.append(
                ConfigIssue(
                    pos.file, pos.line, pos.col, f"Shared_Throttle {scope.name!r}: {detail}"
                )
            )
    if issues:
        raise ConfigError(issues)
    return found
