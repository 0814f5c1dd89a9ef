"""The manager's console commands: ``broadcast COMMAND`` and ``unicast NODE COMMAND``.

A console anywhere (``mcluster console``, a console attached to the manager) sends the
command to the members over Redis (``store/requests``) and prints each member's answer;
a member that does not answer within the console's timeout is reported, not waited for.
"""

from __future__ import annotations

from mcluster.console.commands import (
    CommandError,
    ConsoleContext,
    Handler,
    NotFound,
    Result,
    UsageError,
)
from mcluster.console.ops_views import AnswersView
from mcluster.console.spec import CommandSpec
from mcluster.store import members, requests

__all__ = ["HANDLERS", "MANAGER", "ask_members"]

MANAGER = "Manager"


async def ask_members(
    ctx: ConsoleContext, nodes: list[str], command: str
) -> dict[str, requests.Answer]:
    """Every node's answer to ``command`` (a timeout answer for the silent ones), by node."""
    found: dict[str, requests.Answer] = {}
    async for node, answer in requests.ask(ctx.client, ctx.keys, nodes, command, ctx.timeout):
        found[node] = answer
    return {node: found[node] for node in nodes}


def _command(spec: CommandSpec, words: list[str]) -> str:
    if not words:
        raise UsageError(f"{spec.name} needs a command; usage: {spec.usage}")
    if words[0].casefold() in ("broadcast", "unicast"):
        raise UsageError(f"{spec.name} runs console commands, not {words[0]!r}")
    return " ".join(words)


def _not_inside(ctx: ConsoleContext, spec: CommandSpec) -> None:
    if ctx.local is not None:
        raise CommandError(f"{spec.name} runs from a console, not inside a member")


async def _broadcast(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    _not_inside(ctx, spec)
    command = _command(spec, rest)
    every = await members.all_members(ctx.client, ctx.keys)
    nodes = {m.node for m in every if m.node_type != MANAGER}
    # Nodes that stopped answering stay asked (and reported) after they were reaped.
    seen = await requests.responders(ctx.client, ctx.keys)
    nodes |= {node for node, kind in seen.items() if kind != MANAGER}
    answers = await ask_members(ctx, sorted(nodes), command)
    return Result(AnswersView(answers, ctx.timeout), answers)


async def _unicast(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    _not_inside(ctx, spec)
    if not rest:
        raise UsageError(f"{spec.name} needs a node and a command; usage: {spec.usage}")
    node, command = rest[0], _command(spec, rest[1:])
    seen = await requests.responders(ctx.client, ctx.keys)
    if node not in seen and await members.get(ctx.client, ctx.keys, node) is None:
        every = await members.all_members(ctx.client, ctx.keys)
        known = ", ".join(sorted({m.node for m in every} | set(seen)))
        raise NotFound(f"unknown node {node!r}; cluster members: {known or 'none'}")
    answers = await ask_members(ctx, [node], command)
    return Result(AnswersView(answers, ctx.timeout), answers)


HANDLERS: dict[tuple[str, ...], Handler] = {
    ("broadcast",): _broadcast,
    ("unicast",): _unicast,
}
