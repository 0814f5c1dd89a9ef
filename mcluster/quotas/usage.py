"""Reading and resetting quota windows: for ``policy show``, ``policy reset`` and
``GET /v1/policy/...``, from Redis alone (a console may have no config file).

Each agent running the policy service publishes its quotas (key, limit, count, action,
overrides) in the hash ``B:quotas`` (``B`` the policy family's base) when it starts, and
adds its refusals and WARN quotas' would-have-refused counts to ``B:quota_counts`` every
few seconds. A key's use and retry time are reckoned from its window hash as
``_window.lua`` reckons them (plain reads: a read-only console user may show quotas); a
node's share (``from NODE``) is the sum of its share's live buckets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from mcluster.errors import InvalidValue, NotFound
from mcluster.objects import throttle
from mcluster.objects.quota_config import Quota
from mcluster.objects.quota_keys import KeySpec, parse_key, split_window, window_name
from mcluster.objects.rates import Rate, parse_rate
from mcluster.store import members
from mcluster.store.keys import ClusterKeys, ObjectKeys, text

TOP = 10  # keys per quota that ``policy show`` lists
SCAN_COUNT = 1000
EMPTY_SHOWN = "<>"  # how an empty key value (no login, the null sender) is typed and shown


def quotas_key(okeys: ObjectKeys) -> str:
    return f"{okeys.base}:quotas"


def counts_key(okeys: ObjectKeys) -> str:
    return f"{okeys.base}:quota_counts"


@dataclass(frozen=True)
class QuotaInfo:
    """A quota as the agents published it."""

    name: str
    key: str
    limit: str
    count: str = "messages"
    action: str = "DEFER_IF_PERMIT"
    overrides: dict[str, str] = field(default_factory=dict, hash=False)

    @staticmethod
    def of(quota: Quota) -> QuotaInfo:
        return QuotaInfo(
            quota.name,
            str(quota.key),
            str(quota.limit),
            quota.count,
            quota.action,
            {value: str(rate) for value, rate in quota.overrides.items()},
        )

    @property
    def spec(self) -> KeySpec:
        return parse_key(self.key)

    def rate_for(self, value: str) -> Rate:
        return parse_rate(self.overrides.get(value, self.limit))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "limit": self.limit,
            "count": self.count,
            "action": self.action,
            "overrides": dict(self.overrides),
        }


@dataclass(frozen=True)
class KeyUse:
    """One key value of a quota: its use in the window now, its limit, and how long until
    one more message, recipient or byte fits (0: it fits now)."""

    quota: str
    key: str
    used: int
    limit: int
    period: float
    retry_after_ms: int
    count: str = "messages"
    node: str | None = None

    @property
    def fraction(self) -> float:
        return self.used / self.limit if self.limit else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "quota": self.quota,
            "key": self.key,
            "used": self.used,
            "limit": self.limit,
            "period": self.period,
            "count": self.count,
            "retry_after_ms": self.retry_after_ms,
            "node": self.node,
        }


async def publish(client: Redis, okeys: ObjectKeys, quotas: Iterable[Quota]) -> None:
    """Write this agent's quotas where consoles read them (the last agent started or
    reloaded wins)."""
    mapping: dict[Any, Any] = {q.name: json.dumps(QuotaInfo.of(q).to_json()) for q in quotas}
    key = quotas_key(okeys)
    gone = [k for k in map(text, await client.hkeys(key)) if k not in mapping]
    if gone:  # quotas a reload removed (no MULTI: the least ACL user has none)
        await client.hdel(key, *gone)
    if mapping:
        await client.hset(key, mapping=mapping)


async def add_counts(client: Redis, okeys: ObjectKeys, counts: Mapping[str, int]) -> None:
    """Add refusal counts (``refused:QUOTA``, ``would_refuse:QUOTA``) to the cluster's."""
    pipe = client.pipeline(transaction=False)
    for name, value in counts.items():
        pipe.hincrby(counts_key(okeys), name, value)
    await pipe.execute()


def hot_key(okeys: ObjectKeys, quota: str) -> str:
    """A sorted set: the quota's key values that had half their limit or less left, by
    when an agent last saw that (ms)."""
    return f"{okeys.base}:hot:{quota}"


async def add_hot(
    client: Redis, okeys: ObjectKeys, hot: Mapping[str, set[str]], periods: Mapping[str, float]
) -> None:
    """Note key values near their limit now; forget those not seen so for a window."""
    now = await members.server_time_ms(client)
    pipe = client.pipeline(transaction=False)
    for quota, values in hot.items():
        period_ms = int(periods.get(quota, 86400) * 1000)
        key = hot_key(okeys, quota)
        pipe.zadd(key, dict.fromkeys(values, now))
        pipe.zremrangebyscore(key, 0, now - period_ms)
        pipe.pexpire(key, period_ms + 60_000)
    await pipe.execute()


async def hot_values(client: Redis, okeys: ObjectKeys, quota: str) -> list[str]:
    raw = cast(list[bytes], await client.zrangebyscore(hot_key(okeys, quota), "-inf", "+inf"))
    return sorted(text(v) for v in raw)


async def load(client: Redis, okeys: ObjectKeys) -> dict[str, QuotaInfo]:
    """The published quotas by name."""
    raw = cast(dict[bytes, bytes], await client.hgetall(quotas_key(okeys)))
    known = {f.name for f in dataclasses.fields(QuotaInfo)}  # another release may add some
    return {
        text(k): QuotaInfo(**{f: x for f, x in json.loads(v).items() if f in known})
        for k, v in sorted(raw.items())
    }


async def counts(client: Redis, okeys: ObjectKeys) -> dict[str, int]:
    raw = cast(dict[bytes, bytes], await client.hgetall(counts_key(okeys)))
    return {text(k): int(v) for k, v in raw.items()}


def find(quotas: Mapping[str, QuotaInfo], name: str) -> QuotaInfo:
    """The quota named ``name`` (case-insensitive); NotFound lists the known ones."""
    for info in quotas.values():
        if info.name.casefold() == name.casefold():
            return info
    known = ", ".join(quotas) or "none (no agent with quotas has started)"
    raise NotFound(f"unknown quota {name!r}; quotas: {known}")


def key_value(info: QuotaInfo, typed: str) -> str:
    """A key as an operator typed it (``Alice``, ``10.1.2.3`` for a /24 key, ``<>``), in
    the form the quota's windows use; InvalidValue if the key cannot take it."""
    if typed == EMPTY_SHOWN:
        return ""
    value = info.spec.canonical(typed)
    if value is None:
        raise InvalidValue(f"{typed!r} is not a value quota {info.name!r} ({info.key}) takes")
    return value


def window_use(raw: Mapping[bytes | str, bytes | str], rate: Rate, now: int) -> tuple[int, int]:
    """(used, ms until one more fits: 0 when it fits now) of a window hash, as
    ``_window.lua`` reckons them (``window_open`` and ``window_retry_after``), read-only:
    the live buckets are those from the oldest the window overlaps, less that oldest one
    once its last count is a period old; a bucket leaves a period after its last count
    (``m<bucket>``; without one, a period after the bucket's end)."""
    p, w = rate.period_ms, rate.bucket_ms
    oldest = (now - p) // w
    counts: dict[int, int] = {}
    times: dict[int, int] = {}
    for field_, value in raw.items():
        name = text(field_)
        if name.isdigit() and int(name) >= oldest:
            counts[int(name)] = int(value)
        elif name.startswith("m") and name[1:].isdigit():
            times[int(name[1:])] = int(value)
    last = times.get(oldest)
    if last is not None and last + p <= now:
        counts.pop(oldest, None)
    used = sum(counts.values())
    excess = used + 1 - rate.count
    if excess <= 0:
        return used, 0
    for bucket in sorted(counts):
        excess -= counts[bucket]
        if excess <= 0:
            leaves = times.get(bucket, (bucket + 1) * w) + p
            return used, min(p, max(1, leaves - now))
    return used, p


async def _read(
    client: Redis, okeys: ObjectKeys, windows: list[tuple[str, Rate]], node: str | None = None
) -> list[tuple[int, int]]:
    """(used, retry ms) of each window, cluster-wide, or ``node``'s share (used only):
    plain reads (HGETALL and TIME), so a read-only console user may run them."""
    now = await members.server_time_ms(client)
    pipe = client.pipeline(transaction=False)
    for name, _ in windows:
        pipe.hgetall(throttle.window_key(okeys, name, node))
    replies = await pipe.execute()
    return [window_use(raw, rate, now) for (_, rate), raw in zip(windows, replies, strict=True)]


async def uses(
    client: Redis,
    okeys: ObjectKeys,
    info: QuotaInfo,
    values: list[str],
    node: str | None = None,
) -> list[KeyUse]:
    """The use of each key value of one quota, cluster-wide or ``node``'s share."""
    windows = [(window_name(info.name, v), info.rate_for(v)) for v in values]
    cluster = await _read(client, okeys, windows)
    shares = await _read(client, okeys, windows, node) if node is not None else cluster
    out = []
    for value, (_, rate), (_, retry), (used, _) in zip(
        values, windows, cluster, shares, strict=True
    ):
        out.append(KeyUse(info.name, value, used, rate.count, rate.period, retry, info.count, node))
    return out


async def keys_in_use(client: Redis, okeys: ObjectKeys, quota: str) -> list[str]:
    """Every key value with a window of ``quota`` in Redis (SCAN: an admin's read)."""
    windows = throttle.window_key(okeys, "")  # B:w: then the window's name
    found = []
    match = f"{windows}{window_name(quota, '')}*"
    async for raw in client.scan_iter(match=match, count=SCAN_COUNT):
        split = split_window(text(raw)[len(windows) :])
        if split is not None and split[0] == quota:
            found.append(split[1])
    return sorted(set(found))


async def top(
    client: Redis,
    okeys: ObjectKeys,
    info: QuotaInfo,
    node: str | None = None,
    limit: int = TOP,
) -> list[KeyUse]:
    """The ``limit`` keys of a quota that use most of their limit (ties by key)."""
    values = [v for v in await keys_in_use(client, okeys, info.name) if not v.startswith("(sha")]
    rows = [u for u in await uses(client, okeys, info, values, node) if u.used > 0]
    rows.sort(key=lambda u: (-u.fraction, -u.used, u.key))
    return rows[:limit]


async def reset(client: Redis, okeys: ObjectKeys, info: QuotaInfo, value: str) -> int:
    """Clear one key value's window and every node's share of it; how many keys went."""
    name = window_name(info.name, value)
    doomed = [throttle.window_key(okeys, name)]
    pattern = throttle.window_key(okeys, name, "*")
    doomed += [text(k) async for k in client.scan_iter(match=pattern, count=SCAN_COUNT)]
    deleted = 0
    for key in doomed:  # one at a time: on a Redis Cluster DEL takes one slot per call
        deleted += int(await client.delete(key))
    return deleted


@dataclass(frozen=True)
class QuotaUse:
    """One quota's top keys and the cluster's refusal counts for it."""

    info: QuotaInfo
    top: list[KeyUse]
    refused: int = 0
    would_refuse: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.info.to_json(),
            "refused": self.refused,
            "would_refuse": self.would_refuse,
            "top": [row.to_json() for row in self.top],
        }


async def overview(
    client: Redis, okeys: ObjectKeys, quota: str | None = None, node: str | None = None
) -> list[QuotaUse]:
    """Every quota (or the one named) with its top keys, cluster-wide or ``node``'s."""
    quotas = await load(client, okeys)
    chosen = [find(quotas, quota)] if quota is not None else list(quotas.values())
    counted = await counts(client, okeys)
    return [
        QuotaUse(
            info,
            await top(client, okeys, info, node),
            counted.get(f"refused:{info.name}", 0),
            counted.get(f"would_refuse:{info.name}", 0),
        )
        for info in chosen
    ]


async def one_key(
    client: Redis, okeys: ObjectKeys, quota: str, typed: str, node: str | None = None
) -> tuple[QuotaInfo, KeyUse]:
    """One key of a quota, as an operator typed it."""
    info = find(await load(client, okeys), quota)
    (use,) = await uses(client, okeys, info, [key_value(info, typed)], node)
    return info, use


async def nearest(client: Redis, okeys: ObjectKeys, n: int = TOP) -> list[KeyUse]:
    """The key values nearest their quota's limit (the dashboard): those the agents noted
    with half their limit or less left, read now; no scan of the windows."""
    rows: list[KeyUse] = []
    for name, info in (await load(client, okeys)).items():
        values = await hot_values(client, okeys, name)
        rows += [u for u in await uses(client, okeys, info, values) if u.used > 0]
    rows.sort(key=lambda u: (-u.fraction, -u.used, u.quota, u.key))
    return rows[:n]


async def check_node(client: Redis, keys: ClusterKeys, node: str | None) -> None:
    """NotFound unless ``node`` (of ``from NODE``) is a member of the cluster."""
    if node is None:
        return
    known = sorted({m.node for m in await members.all_members(client, keys)})
    if node not in known:
        raise NotFound(f"unknown node {node!r}; cluster members: {', '.join(known) or 'none'}")
