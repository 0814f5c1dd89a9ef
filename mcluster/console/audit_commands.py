"""Console commands of the audit metrics (Momentum's ``inbound_audit`` and series):

    inbound_audit show ip CIDR                    Connections 300/0: 30 ... per monitor
    audit_series list                             the defined series
    audit_series count NAME KEY [START [END]] [from NODE]

Handlers return (renderable, JSON data); bad arguments raise ValueError with the reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult

from mcluster.config import ClusterConfig
from mcluster.console.render import line
from mcluster.objects.audit import INBOUND, INBOUND_LABELS
from mcluster.objects.audit_views import (
    get_series,
    list_series,
    load_settings,
    series_count,
    show_ip,
)
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts

Answer = tuple[RenderableType, dict[str, Any]]


class Lines:
    """Plain lines, never wrapped (rows an operator copies)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for text in self.lines:
            yield line(text)


def inbound_lines(data: dict[str, Any]) -> list[str]:
    """``Connections 300/0: 30``: type, window size/offset, count; per monitor, per type."""
    out = []
    for monitor in data["monitors"]:
        for t in INBOUND:
            label = INBOUND_LABELS[t]
            for offset, n in enumerate(monitor[label]):
                out.append(f"{label.capitalize()} {monitor['window']}/{offset}: {n}")
    return out


async def inbound_show(
    client: Redis, keys: ClusterKeys, config: ClusterConfig | None, rest: list[str]
) -> Answer:
    if len(rest) != 2 or rest[0].casefold() != "ip":
        raise ValueError("usage: inbound_audit show ip ADDRESS_OR_CIDR")
    settings = await load_settings(client, keys, config)
    data = await show_ip(Scripts(client), keys, settings, rest[1])
    return Lines(inbound_lines(data)), data


async def series_list(
    client: Redis, keys: ClusterKeys, config: ClusterConfig | None, rest: list[str]
) -> Answer:
    if rest:
        raise ValueError("audit_series list takes no arguments")
    found = await list_series(client, keys)
    lines = [
        f"{s.name}: {s.type} {s.interval},{s.num_windows} replicate {s.replicate}" for s in found
    ]
    return Lines(lines or ["no audit series defined"]), {"series": [s.model_dump() for s in found]}


async def series_show(
    client: Redis, keys: ClusterKeys, config: ClusterConfig | None, rest: list[str]
) -> Answer:
    usage = "usage: audit_series count NAME KEY [START [END]] [from NODE]"
    node = None
    if len(rest) >= 2 and rest[-2].casefold() == "from":
        node, rest = rest[-1], rest[:-2]
    if not 2 <= len(rest) <= 4 or not all(w.isdigit() for w in rest[2:]):
        raise ValueError(usage)
    name, key = rest[0], rest[1]
    start = int(rest[2]) if len(rest) > 2 else 0
    end = int(rest[3]) if len(rest) > 3 else start
    sdef = await get_series(client, keys, name)
    where = sdef.reader_aggregate("console", node)
    n = await series_count(Scripts(client), keys, sdef, key, start, end, where)
    data = {"series": name, "key": key, "start": start, "end": end, "node": node, "count": n}
    return Lines([f"{name} {key} {start}..{end}: {n}"]), data


def candidates(
    words: tuple[str, ...], rest: list[str], series: Sequence[str], nodes: Sequence[str]
) -> tuple[list[str], list[str]]:
    """Tab completion after the command ``words`` and the complete arguments ``rest``:
    (keywords, names). ``inbound_audit show ip``; ``audit_series count NAME KEY [START
    [END]] [from NODE]`` offers the series names, then ``from`` and the node names."""
    if words == ("inbound_audit", "show"):
        return (["ip"] if not rest else []), []
    if words != ("audit_series", "count"):
        return [], []
    folded = [w.casefold() for w in rest]
    if not rest:
        return [], list(series)
    if folded[-1] == "from":
        return [], list(nodes)
    if "from" in folded or len(rest) < 2:
        return [], []
    return ["from"], []


Handler = Callable[[Redis, ClusterKeys, ClusterConfig | None, list[str]], Awaitable[Answer]]
HANDLERS: dict[tuple[str, ...], Handler] = {
    ("inbound_audit", "show"): inbound_show,
    ("audit_series", "list"): series_list,
    ("audit_series", "count"): series_show,
}
