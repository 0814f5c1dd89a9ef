"""Console commands of shaping, read straight from Redis (the console is not a node):

    shaping show                      actions in force with time left, AIMD rates, warm-up days
    shaping history [NAME] [limit N]  the newest entries of the shaping audit series
    shaping clear NAME DEST           lift rule NAME's action on DEST (domain:x, provider:y,
                                      host:z) before its expiry

The adaptive and warm-up rules come from the console's ``--config`` when it has one, else
from what the nodes published in Redis (``ShapingKeys.defs``).
"""

from __future__ import annotations

import datetime as dt

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mcluster.console.commands.base import (
    CommandSpec,
    ConsoleContext,
    NotFound,
    Result,
    UsageError,
    command,
)
from mcluster.console.render import line
from mcluster.shaping.config import ShapingConfig, shaping_config
from mcluster.shaping.model import HistoryEntry, ShapingError, ShapingState
from mcluster.shaping.service import (
    ShapingKeys,
    published_config,
    shaping_clear,
    shaping_history,
    shaping_state,
)

DEFAULT_HISTORY = 20


async def _rules(ctx: ConsoleContext, keys: ShapingKeys) -> ShapingConfig:
    if ctx.config is not None:
        config = shaping_config(ctx.config)
        if config.enabled:
            return config
    return await published_config(ctx.client, keys)


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def state_view(state: ShapingState) -> RenderableType:
    """The three tables of ``shaping show`` (or one line when nothing is shaped)."""
    parts: list[RenderableType] = []
    if state.actions:
        table = Table(title="actions in force", title_justify="left")
        for column in ("rule", "destination", "action", "value", "remaining s"):
            table.add_column(column, justify="right" if column == "remaining s" else "left")
        for a in state.actions:
            table.add_row(a.rule, a.destination, a.action, a.value or "-",
                          f"{a.remaining_ms / 1000:.1f}")  # fmt: skip
        parts.append(table)
    else:
        parts.append(Text("no shaping action in force"))
    if state.adaptive:
        table = Table(title="adaptive rates", title_justify="left")
        for column in ("name", "destination", "rate", "min..max", "transfail ratio"):
            table.add_column(column)
        for r in state.adaptive:
            per = f"/{r.period:g}"
            ratio = "-" if r.transfail_ratio is None else f"{r.transfail_ratio:.2f}"
            table.add_row(r.name, r.destination, f"{r.rate:.1f}{per}",
                          f"{r.min:g}..{r.max:g}{per}", ratio)  # fmt: skip
        parts.append(table)
    if state.warmups:
        table = Table(title="warm-ups", title_justify="left")
        for column in ("name", "binding", "day", "rate"):
            table.add_column(column)
        for w in state.warmups:
            day = "not begun" if w.day is None else str(w.day)
            rate = w.rate or ("warm" if w.day is not None else "-")
            table.add_row(w.name, w.binding, day, rate)
        parts.append(table)
    return Group(*parts)


@command(
    "shaping show",
    "",
    "Shaping actions in force, AIMD rates, warm-up days.",
    order=40,
    module=True,
)
async def show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    if rest:
        raise UsageError(f"{spec.name} takes no arguments; usage: {spec.usage}")
    keys = ShapingKeys.of(ctx.keys)
    state = await shaping_state(ctx.client, keys, await _rules(ctx, keys))
    return Result(state_view(state), state.to_json())


def history_view(entries: list[HistoryEntry]) -> RenderableType:
    if not entries:
        return Text("no shaping history")
    # one line per entry, never wrapped: replies are long, and operators grep these
    lines = []
    for e in entries:
        what = f"{e.action} {e.value}".strip()
        until = f" until {_when(e.expires_ms)}" if e.expires_ms else ""
        reply = f"  {e.reply}" if e.reply else ""
        lines.append(line(f"{_when(e.at_ms)}  {e.rule}  {what}  {e.destination}  "
                          f"by {e.node}{until}{reply}"))  # fmt: skip
    return Group(*lines)


@command(
    "shaping history",
    "[NAME] [limit N]",
    "Recent shaping actions (audit).",
    order=50,
    module=True,
)
async def history(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    usage = f"usage: {spec.usage}"
    rule, limit = None, DEFAULT_HISTORY
    words = list(rest)
    if len(words) >= 2 and words[-2].casefold() == "limit":
        if not words[-1].isdigit() or not 1 <= int(words[-1]) <= 10_000:
            raise UsageError(f"'limit' needs a whole number 1..10000, got {words[-1]!r}; {usage}")
        limit = int(words[-1])
        words = words[:-2]
    if len(words) > 1:
        raise UsageError(f"unexpected {words[1]!r}; {usage}")
    if words:
        rule = words[0]
    entries = await shaping_history(ctx.client, ShapingKeys.of(ctx.keys), rule, limit)
    return Result(history_view(entries), {"history": [e.to_json() for e in entries]})


@command("shaping clear", "NAME DEST", "Lift a shaping action now.", order=60, module=True)
async def clear(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    if len(rest) != 2:
        raise UsageError(f"{spec.name} needs a rule and a destination; usage: {spec.usage}")
    rule, dest = rest
    who = f"console@{ctx.node}" if ctx.node else "console"
    try:
        cleared = await shaping_clear(ctx.client, ShapingKeys.of(ctx.keys), rule, dest, who)
    except ShapingError as exc:
        raise UsageError(str(exc)) from None
    if not cleared:
        raise NotFound(f"no action of rule {rule!r} in force on {dest!r} (see shaping show)")
    return Result(Text(f"cleared {rule} on {dest}"), {"rule": rule, "destination": dest,
                                                     "cleared": True})  # fmt: skip
