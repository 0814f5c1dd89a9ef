"""Console commands of the audit metrics (Momentum's ``inbound_audit`` and series):

    inbound_audit show ip CIDR                    Connections 300/0: 30 ... per monitor
    audit_series list                             the defined series
    audit_series count NAME KEY [START [END]] [from NODE]

A bad argument (ValueError, AuditError) is a UsageError with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult

from mcluster.console.commands.base import (
    CommandSpec,
    ConsoleContext,
    Result,
    command,
    usage_errors,
)
from mcluster.console.render import line
from mcluster.objects.audit import INBOUND, INBOUND_LABELS
from mcluster.objects.audit_views import (
    get_series,
    list_series,
    load_settings,
    series_count,
    show_ip,
)
from mcluster.store.scripts import Scripts


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


@command(
    "inbound_audit show",
    "ip ADDRESS_OR_CIDR",
    "Connections, receptions and rejections per monitor window.",
    order=10,
    module=True,
)
async def inbound_show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    with usage_errors():
        if len(rest) != 2 or rest[0].casefold() != "ip":
            raise ValueError("usage: inbound_audit show ip ADDRESS_OR_CIDR")
        settings = await load_settings(ctx.client, ctx.keys, ctx.config)
        data = await show_ip(Scripts(ctx.client), ctx.keys, settings, rest[1])
    return Result(Lines(inbound_lines(data)), data)


@command("audit_series list", "", "List the named audit series.", order=20, module=True)
async def series_list(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    with usage_errors():
        if rest:
            raise ValueError("audit_series list takes no arguments")
        found = await list_series(ctx.client, ctx.keys)
    lines = [
        f"{s.name}: {s.type} {s.interval},{s.num_windows} replicate {s.replicate}" for s in found
    ]
    data = {"series": [s.model_dump() for s in found]}
    return Result(Lines(lines or ["no audit series defined"]), data)


@command(
    "audit_series count",
    "NAME KEY [START [END]] [from NODE]",
    "Sum a named audit series over windows START..END.",
    order=30,
    module=True,
)
async def series_show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    with usage_errors():
        usage = "usage: audit_series count NAME KEY [START [END]] [from NODE]"
        node = None
        if len(rest) >= 2 and rest[-2].casefold() == "from":
            node, rest = rest[-1], rest[:-2]
        if not 2 <= len(rest) <= 4 or not all(w.isdigit() for w in rest[2:]):
            raise ValueError(usage)
        name, key = rest[0], rest[1]
        start = int(rest[2]) if len(rest) > 2 else 0
        end = int(rest[3]) if len(rest) > 3 else start
        sdef = await get_series(ctx.client, ctx.keys, name)
        where = sdef.reader_aggregate("console", node)
        n = await series_count(Scripts(ctx.client), ctx.keys, sdef, key, start, end, where)
    data = {"series": name, "key": key, "start": start, "end": end, "node": node, "count": n}
    return Result(Lines([f"{name} {key} {start}..{end}: {n}"]), data)


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
