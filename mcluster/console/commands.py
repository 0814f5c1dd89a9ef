"""Running one console command: ``cluster shared show inbound_cidr from relay-0-1``.

Each command returns a Result holding a rich renderable (text mode) and a JSON-able dict
(``--json``). Problems are exceptions: CommandError (exit 1), NotFound (exit 2).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from rich.console import RenderableType

from mcluster.config import ClusterConfig
from mcluster.console import audit_commands
from mcluster.console.local import LocalMember
from mcluster.console.render import (
    HelpView,
    InfoView,
    ListingView,
    MembershipView,
    Message,
    ObjectListView,
)
from mcluster.console.spec import COMMANDS, CommandSpec, family, match
from mcluster.errors import Error, NotFound
from mcluster.objects import cache_registry, views
from mcluster.objects.cache_registry import CacheInfo
from mcluster.objects.views import ObjectInfo
from mcluster.store import cluster_view, members
from mcluster.store.keys import ClusterKeys

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "CommandError",
    "ConsoleContext",
    "NotFound",
    "NotInRelease",
    "Result",
    "UnknownCommand",
    "UsageError",
    "exit_code",
    "parse_show_args",
    "run_command",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_FOUND = 2


class CommandError(Error):
    """A command that cannot run as typed (exit status 1); the message says why."""

    exit_code = EXIT_ERROR

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "command failed"


class UnknownCommand(CommandError):
    """No such console command."""


class UsageError(CommandError):
    """A known command with wrong or missing arguments."""


class NotInRelease(CommandError):
    """A command of Momentum's console that this release does not implement yet."""


def exit_code(exc: BaseException) -> int:
    """The process exit status for an error: 2 for an unknown object or node, else 1."""
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, CommandError):
        return exc.exit_code
    return EXIT_ERROR


@dataclass
class ConsoleContext:
    """What a console is attached to: a Redis, a namespace, maybe a node and a config.

    ``local`` is the member process itself when the command runs inside it (a request
    over Redis); commands that need the process (``cluster reset``) go there.
    ``timeout`` bounds how long ``broadcast`` and ``unicast`` wait for answers.
    """

    client: Redis
    keys: ClusterKeys
    node: str | None = None
    configured: list[tuple[str, str]] = field(default_factory=list)
    timeout: float = 5.0
    local: LocalMember | None = None
    config: ClusterConfig | None = None


@dataclass(frozen=True)
class Result:
    """A command's answer: ``renderable`` for text mode, ``data`` for ``--json``.

    ``data`` is a JSON object, or a list of them for ``cluster membership``.
    """

    renderable: RenderableType
    data: dict[str, Any] | list[dict[str, Any]]


Handler = Callable[[ConsoleContext, CommandSpec, list[str]], Awaitable[Result]]


async def run_command(ctx: ConsoleContext, line: str) -> Result:
    """Run one command line (the leading ``cluster`` is optional, verbs ignore case)."""
    words = line.split()
    if words and words[0].casefold() == "cluster":
        words = words[1:]
    if not words:
        raise UsageError("empty command; type 'cluster help' for the list of commands")
    spec, rest = match(words)
    if spec is None:
        siblings = family(words[0])
        typed = " ".join(("cluster", *words))
        if siblings:
            choices = " | ".join(s.usage for s in siblings)
            raise UsageError(f"incomplete command {typed!r}; one of: {choices}")
        raise UnknownCommand(f"unknown command {typed!r}; type 'cluster help' for the list")
    if spec.coming_with is not None:
        raise NotInRelease(f"{spec.name}: not in this release (coming with {spec.coming_with})")
    handler = _HANDLERS.get(spec.words) or _MODULE_HANDLERS[spec.words]
    return await handler(ctx, spec, rest)


def _no_args(spec: CommandSpec, rest: list[str]) -> None:
    if rest:
        raise UsageError(f"{spec.name} takes no arguments, got {' '.join(rest)!r}")


def _attached_node(ctx: ConsoleContext, spec: CommandSpec) -> str:
    if ctx.node is None:
        raise CommandError(f"{spec.name} needs --node NAME (the node this console is attached to)")
    return ctx.node


async def _help(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    topic = tuple(w.casefold() for w in rest)
    if topic and topic[0] == "cluster":
        topic = topic[1:]
    chosen = [c for c in COMMANDS if c.words[: len(topic)] == topic[: len(c.words)]]
    if not chosen:
        raise UnknownCommand(f"no command matches 'cluster {' '.join(rest)}'; try 'cluster help'")
    data = [
        {"command": c.usage, "description": c.summary, "implemented": c.implemented} for c in chosen
    ]
    return Result(HelpView(chosen), {"commands": data})


async def _shared_list(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    _no_args(spec, rest)
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


async def _shared_show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
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


async def _nodename(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    _no_args(spec, rest)
    node = _attached_node(ctx, spec)
    return Result(Message(node), {"node": node})


async def _nodeaddr(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    _no_args(spec, rest)
    node = _attached_node(ctx, spec)
    member = await members.get(ctx.client, ctx.keys, node)
    if member is None:
        known = ", ".join(m.node for m in await members.all_members(ctx.client, ctx.keys))
        raise NotFound(f"unknown node {node!r}; cluster members: {known or 'none'}")
    if member.address is None:
        raise CommandError(f"node {node!r} has no cluster address in its member record")
    return Result(Message(member.address), {"node": node, "address": member.address})


async def _membership(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    _no_args(spec, rest)
    rows = await cluster_view.membership_json(ctx.client, ctx.keys)
    return Result(MembershipView(rows), rows)


async def _info(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    _no_args(spec, rest)
    info = await cluster_view.info_json(ctx.client, ctx.keys, ctx.node)
    return Result(InfoView(info), info)


async def _audit(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    try:
        handler = audit_commands.HANDLERS[spec.words]
        renderable, data = await handler(ctx.client, ctx.keys, ctx.config, rest)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return Result(renderable, data)


_HANDLERS: dict[tuple[str, ...], Handler] = {
    ("help",): _help,
    ("shared", "list"): _shared_list,
    ("shared", "show"): _shared_show,
    ("nodename",): _nodename,
    ("nodeaddr",): _nodeaddr,
    ("membership",): _membership,
    ("info",): _info,
}

from mcluster.console import cluster_ops  # noqa: E402  (its handlers use the names above)

_HANDLERS.update(cluster_ops.HANDLERS)
_MODULE_HANDLERS: dict[tuple[str, ...], Handler] = dict.fromkeys(audit_commands.HANDLERS, _audit)

# DuraVIP and ARP commands live in their own module (it imports this one).
from mcluster.console.duravip_commands import HANDLERS as _DURAVIP_HANDLERS  # noqa: E402

_HANDLERS.update(_DURAVIP_HANDLERS)
from mcluster.console.logs_commands import HANDLERS as _LOGS_HANDLERS  # noqa: E402

_HANDLERS.update(_LOGS_HANDLERS)
# The policy service's quotas (mcluster/quotas/console.py imports this module).
from mcluster.quotas.console import HANDLERS as _QUOTA_HANDLERS  # noqa: E402

_MODULE_HANDLERS.update(_QUOTA_HANDLERS)
from mcluster.shaping.console import HANDLERS as _SHAPING_HANDLERS  # noqa: E402

_MODULE_HANDLERS.update(_SHAPING_HANDLERS)
