"""Audit metrics in time windows: inbound audit (``connect``, ``reception``,
``rejection``), outbound (``delivery``, ``transfail``, ``permfail``) and named series.

Storage (``lua_scripts/audit_apply.lua``): every key lives under the hash tag
``{audit}``. A *target* is one series of windows (a monitor ``W,N`` of one aggregate, or a
named series); window ``e = floor(now / W)`` (Redis server time) of target ``T`` keeps

* ``ns:{audit}:T:e:t:4:HEX``: the 256-ary address tree of ``cidrtree`` (buckets of /0,
  /8, /16; leaves as two-byte fields of the /16 bucket), every field prefixed with the
  event type's letter, so one ``HMGET`` reads all types of one prefix;
* ``ns:{audit}:T:e:s``: string keys (destination domains, bindings, string series).

Each key expires when its window leaves the span (``(e + N) * W``): an expired window
costs nothing, and a prefix count is one ``HMGET`` per window, whatever the number of
addresses under it. Aggregates: ``g`` (cluster: every node reads it), ``m`` (the
manager's, ``eccmgr_metrics``: nodes never read it), ``n:NODE`` (one node's own).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from mcluster.errors import InvalidValue
from mcluster.objects.cidrtree import count_plan, parse_address, parse_prefix
from mcluster.store.keys import ClusterKeys, ObjectKeys, check_name
from mcluster.store.scripts import Scripts

OBJECT = "audit"
#: Event types and the letter prefixing their fields.
EVENT_TYPES: dict[str, str] = {
    "connect": "c",
    "reception": "r",
    "rejection": "j",
    "delivery": "d",
    "transfail": "t",
    "permfail": "p",
}
INBOUND = ("connect", "reception", "rejection")
OUTBOUND = ("delivery", "transfail", "permfail")
#: What ``inbound_audit show ip`` calls each inbound type.
INBOUND_LABELS = {"connect": "connections", "reception": "receptions", "rejection": "rejections"}
#: Where an outbound event's string key is counted: by destination domain or by binding.
BY_DOMAIN, BY_BINDING = "d", "b"
#: Field prefix of a named series (one series per target).
SERIES_FIELD = "n"
#: Most windows of one target (a query sums at most this many HMGETs).
MAX_WINDOWS = 1000
GLOBAL, MANAGER = "g", "m"
Scope = Literal["none", "cluster", "manager"]


def audit_keys(keys: ClusterKeys) -> ObjectKeys:
    return keys.object(OBJECT)


def applied_key(okeys: ObjectKeys) -> str:
    """The hash of origin -> last applied batch seq (the script's only declared key)."""
    return f"{okeys.base}:applied"


def node_aggregate(node: str) -> str:
    return f"n:{check_name('node', node)}"


@dataclass(frozen=True)
class Target:
    """One series of time windows: ``name`` is the key part after the base."""

    name: str
    window: int
    windows: int


def monitor_target(aggregate: str, window: int, windows: int) -> Target:
    return Target(f"{aggregate}:{window}", window, windows)


def series_target(aggregate: str, name: str, interval: int, windows: int) -> Target:
    return Target(f"{aggregate}:S:{name}:{interval}", interval, windows)


class Item(NamedTuple):
    """One counted key: form ``t`` (packed address) or ``s`` (string), its field prefix."""

    form: str
    prefix: str
    key: bytes

    @staticmethod
    def address(prefix: str, text: str) -> Item:
        return Item("t", prefix, parse_address(text))

    @staticmethod
    def string(prefix: str, key: str) -> Item:
        return Item("s", prefix, check_string_key(key).encode())


def check_string_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidValue("key must be a non-empty string")
    if len(key.encode()) > 1024:
        raise InvalidValue(f"key is {len(key.encode())} bytes long; at most 1024")
    return key


def item_cost(item: Item) -> int:
    """Script work of one item per target, in hash increments."""
    return len(item.key) if item.form == "t" else 1


Argv = list[bytes | str | int]


def apply_args(
    okeys: ObjectKeys,
    origin: str,
    seq: int,
    groups: Sequence[tuple[Sequence[Target], Mapping[Item, int]]],
    offset_ms: int = 0,
) -> tuple[list[str], Argv]:
    """KEYS and ARGV of ``audit_apply`` for some groups (targets, item -> count)."""
    argv: Argv = [okeys.base, origin, seq, offset_ms, len(groups)]
    for targets, items in groups:
        argv.append(len(targets))
        for target in targets:
            argv += [target.name, target.window, target.windows]
        sorts: dict[tuple[str, str], Argv] = {}
        for (form, prefix, key), n in items.items():
            sorts.setdefault((form, prefix), []).extend((key, n))
        argv.append(len(sorts))
        for (form, prefix), flat in sorts.items():
            argv += [form, prefix, len(flat) // 2, *flat]
    return [applied_key(okeys)], argv


async def apply(
    scripts: Scripts,
    okeys: ObjectKeys,
    origin: str,
    seq: int,
    groups: Sequence[tuple[Sequence[Target], Mapping[Item, int]]],
    offset_ms: int = 0,
) -> tuple[bool, int]:
    """Apply one batch: (applied, Redis time in ms). ``offset_ms`` shifts the time (tests)."""
    keys, argv = apply_args(okeys, origin, seq, groups, offset_ms)
    applied, now, _ = await scripts.run("audit_apply", keys, argv)
    return bool(applied), int(now)


@dataclass(frozen=True)
class Plan:
    """Where a query reads: the key suffix of the bucket or string hash, and its fields."""

    suffix: str
    fields: list[bytes]
    label: str


def address_plan(text: str) -> Plan:
    """An address or CIDR block: the one bucket holding it and the fields that add up."""
    if not isinstance(text, str):
        raise InvalidValue(f"expected an IP address or CIDR block, got {text!r}")
    packed, plen = parse_prefix(text)
    prefix, fields = count_plan(packed, plen)
    net = ipaddress.ip_network((ipaddress.ip_address(packed), plen))
    return Plan(f":t:{len(packed)}:{prefix.hex()}", fields, str(net))


def string_plan(key: str) -> Plan:
    return Plan(":s", [check_string_key(key).encode()], key)


def window_range(target: Target, start: int, end: int) -> tuple[int, int] | None:
    """Windows start..end clamped to the target's span, or None when none is inside it."""
    if start < 0 or end < start:
        raise InvalidValue(f"bad window range {start}..{end}: need 0 <= start <= end")
    if start >= target.windows:
        return None
    return start, min(end, target.windows - 1)


async def read_windows(
    scripts: Scripts,
    okeys: ObjectKeys,
    plan: Plan,
    prefixes: Sequence[str],
    spans: Sequence[tuple[Target, int, int]],
    offset_ms: int = 0,
) -> tuple[int, list[list[list[int]]]]:
    """Counts per span (target, first, last window), per window, per prefix: one script
    call. Windows past a target's span read zero. Returns (Redis time in ms, counts)."""
    clamped = [(t, window_range(t, first, last)) for t, first, last in spans]
    argv: Argv = [okeys.base, offset_ms, plan.suffix, sum(1 for _, r in clamped if r)]
    for target, bounds in clamped:
        if bounds is not None:
            argv += [target.name, target.window, *bounds]
    argv += [len(prefixes), *prefixes, *plan.fields]
    flat: list[Any] = await scripts.run("audit_count", [applied_key(okeys)], argv)
    now, values = int(flat[0]), iter(int(v) for v in flat[1:])
    out: list[list[list[int]]] = []
    for (_, first, last), (_, bounds) in zip(spans, clamped, strict=True):
        per_window = []
        for win in range(first, last + 1):
            inside = bounds is not None and bounds[0] <= win <= bounds[1]
            per_window.append([next(values) if inside else 0 for _ in prefixes])
        out.append(per_window)
    return now, out


def weighted(current: int, previous: int, window: int, now_ms: int) -> float:
    """Momentum's weighted sliding average of the current and previous window:

        current + previous * (W - elapsed) / W

    where ``elapsed`` is the time already spent in the current window (``now mod W``,
    Redis time). It estimates the count over the last W seconds, taking the events of the
    previous window as spread evenly over it: at the start of a window it is the previous
    window's count, at its end the current one's.
    """
    span = window * 1000
    elapsed = now_ms % span
    return current + previous * (span - elapsed) / span
