"""The core console commands: ``help``, ``shared list``, ``shared show``, ``nodename``,
``nodeaddr``, ``membership``, ``info``: read-only views of the cluster in Redis."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from mcluster.console.commands.base import (
    CommandError,
    CommandSpec,
    ConsoleContext,
    Result,
    UnknownCommand,
    UsageError,
    attached_node,
    cluster_commands,
    command,
    no_args,
)
from mcluster.console.render import (
    FOOTER_STYLE,
    HEADER_STYLE,
    InfoView,
    ListingView,
    MembershipView,
    Message,
    ObjectListView,
    line,
)
from mcluster.errors import NotFound
from mcluster.objects import cache_registry, views
from mcluster.objects.cache_registry import CacheInfo
from mcluster.objects.views import ObjectInfo
from mcluster.store import cluster_view, members

__all__ = ["HelpView", "parse_show_args"]


class HelpView:
    """``cluster help``: every command of Momentum's console, marking those not built yet."""

    NOT_HERE = "(not in this release)"

    def __init__(self, commands: Iterable[CommandSpec] | None = None) -> None:
        self.commands = list(cluster_commands() if commands is None else commands)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield line("Available commands (the leading 'cluster' is optional):", HEADER_STYLE)
        width = max(len(c.usage) for c in self.commands) if self.commands else 0
        for spec in self.commands:
            text = Text(f"  {spec.usage:<{width}}  {spec.summary}", no_wrap=True, end="\n")
            if not spec.implemented:
                text.append(f" {self.NOT_HERE}", style=FOOTER_STYLE)
            yield text


@command("help", "", "Display the available console commands.", order=10)
async def help_(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    topic = tuple(w.casefold() for w in rest)
    if topic and topic[0] == "cluster":
        topic = topic[1:]
    chosen = [c for c in cluster_commands() if c.words[: len(topic)] == topic[: len(c.words)]]
    if not chosen:
        raise UnknownCommand(f"no command matches 'cluster {' '.join(rest)}'; try 'cluster help'")
    data = [
        {"command": c.usage, "description": c.summary, "implemented": c.implemented} for c in chosen
    ]
    return Result(HelpView(chosen), {"commands": data})


@command("shared list", "", "Display the currently managed objects.", order=130)
async def shared_list(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    no_args(spec, rest)
    infos = await views.list_objects(ctx.client, ctx.keys, ctx.configured)
    caches = await cache_registry.list_caches(ctx.client, ctx.keys, ctx.configured, ctx.config)
    listed: list[ObjectInfo | CacheInfo] = sorted([*infos, *caches], key=lambda i: i.name)
    return Result(ObjectListView(listed), {"objects": [info.to_json() for info in listed]})


def parse_show_args(spec: CommandSpec, rest: list[str]) -> tuple[str, str | None, int | None]:
    """``OBJ [from NODE] [all | limit N]`` -> (object, node or None, row limit or None)."""
    usage = f"usage: {spec.usage}"
    if not rest:
        raise UsageError(f"{spec.name} needs an object name; {usage}")
    obj, opts = rest[0], rest[1:]
    node: str | None = None
    limit: int | None = views.DEFAULT_LIMIT
    seen: set[str] = set()
    i = 0
    while i < len(opts):
        word = opts[i].casefold()
        if word in seen or word not in ("from", "all", "limit"):
            raise UsageError(f"unexpected {opts[i]!r} in {spec.name}; {usage}")
        if word in ("all", "limit") and seen & {"all", "limit"}:
            raise UsageError(f"give either 'all' or 'limit N', not both; {usage}")
        seen.add(word)
        if word == "all":
            limit = None
            i += 1
            continue
        if i + 1 >= len(opts):
            wanted = "a node name" if word == "from" else "a number of rows"
            raise UsageError(f"'{word}' needs {wanted}; {usage}")
        value = opts[i + 1]
        if word == "from":
            node = value
        elif not value.isdigit():
            raise UsageError(f"'limit' needs a whole number of rows >= 0, got {value!r}")
        else:
            limit = int(value)
        i += 2
    return obj, node, limit


@command(
    "shared show",
    "OBJ [from NODE] [all | limit N]",
    "Display a shared object (global or from a node).",
    order=140,
)
async def shared_show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    obj, node, limit = parse_show_args(spec, rest)
    try:
        listing = await views.show(ctx.client, ctx.keys, obj, node, limit, ctx.configured)
    except NotFound:
        caches = await cache_registry.list_caches(ctx.client, ctx.keys, ctx.configured, ctx.config)
        if any(c.name == obj for c in caches):
            raise NotFound(
                f"{obj!r} is a replicated cache: it has no views; read a pair with "
                f"GET /v1/caches/{obj}/KEY on an agent"
            ) from None
        raise
    return Result(ListingView(listing), listing.to_json())


@command("nodename", "", "Show the name of the local node.", order=100)
async def nodename(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    no_args(spec, rest)
    node = attached_node(ctx, spec)
    return Result(Message(node), {"node": node})


@command("nodeaddr", "", "Show the node's cluster address.", order=110)
async def nodeaddr(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    no_args(spec, rest)
    node = attached_node(ctx, spec)
    member = await members.get(ctx.client, ctx.keys, node)
    if member is None:
        known = ", ".join(m.node for m in await members.all_members(ctx.client, ctx.keys))
        raise NotFound(f"unknown node {node!r}; cluster members: {known or 'none'}")
    if member.address is None:
        raise CommandError(f"node {node!r} has no cluster address in its member record")
    return Result(Message(member.address), {"node": node, "address": member.address})


@command("membership", "", "Display every live member of the cluster.", order=80)
async def membership(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    no_args(spec, rest)
    rows = await cluster_view.membership(ctx.client, ctx.keys)
    return Result(MembershipView(rows), [row.to_json() for row in rows])


@command("info", "", "Display operating status and parameters.", order=90)
async def info(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    no_args(spec, rest)
    info = await cluster_view.cluster_info(ctx.client, ctx.keys, ctx.node)
    return Result(InfoView(info), info.to_json())
