"""The manager's console commands: ``broadcast COMMAND``, ``unicast NODE COMMAND``,
``cluster jobs``, ``cluster abort ID``; and the commands that run inside a member
process (``cluster reset``, ``config reload``), sent to the attached node over Redis.

A console anywhere (``mcluster console``, a console attached to the manager) sends the
command to the members over Redis (``store/requests``) and prints each member's answer;
a member that does not answer within the console's timeout is reported, not waited for.
A broadcast is a job (progress: nodes answered or timed out, so a finished one shows
N/N); aborting it stops the wait, and the nodes that had not answered are reported as
``aborted``.
"""

from __future__ import annotations

import asyncio
import contextlib

from mcluster.config import ConfigError
from mcluster.console.commands.base import (
    CommandError,
    CommandSpec,
    ConsoleContext,
    NotFound,
    Result,
    UsageError,
    command,
)
from mcluster.console.local import LocalMember
from mcluster.console.ops_views import AnswersView, JobsView
from mcluster.console.render import Message
from mcluster.store import jobs, members, requests

__all__ = ["MANAGER", "ask_members"]

MANAGER = "Manager"


async def ask_members(
    ctx: ConsoleContext,
    nodes: list[str],
    command: str,
    job: jobs.Job | None = None,
    found: dict[str, requests.Answer] | None = None,
) -> dict[str, requests.Answer]:
    """Every node's answer to ``command`` (a timeout answer for the silent ones), by node.
    With a ``job``, answers are its progress and JobAborted ends the wait (the answers so
    far are in ``found``)."""
    found = {} if found is None else found

    async def tick() -> None:
        if job is not None:
            await job.step(len(found))

    async for node, answer in requests.ask(ctx.client, ctx.keys, nodes, command, ctx.timeout, tick):
        found[node] = answer
    if job is not None:  # the last tick ran before the last answer was counted
        job.record.done = len(found)
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


@command(
    "broadcast", "COMMAND", "Run a command on every node; print each answer.", order=170, top=True
)
async def broadcast(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    _not_inside(ctx, spec)
    command = _command(spec, rest)
    every = await members.all_members(ctx.client, ctx.keys)
    # Nodes that stopped answering stay asked (and reported) after they were reaped.
    seen = await requests.responders(ctx.client, ctx.keys)
    known = [(m.node, m.node_type) for m in every] + list(seen.items())
    nodes = sorted({node for node, kind in known if kind != MANAGER})
    deadline_ms = await members.server_time_ms(ctx.client) + int(ctx.timeout * 1000)
    job = await jobs.Job.start(
        ctx.client, ctx.keys, "broadcast", command, runner=jobs.console_runner(ctx.node),
        total=len(nodes), deadline_ms=deadline_ms,
    )  # fmt: skip
    found: dict[str, requests.Answer] = {}
    with contextlib.suppress(jobs.JobAborted):  # recorded as aborted; report what came
        async with job:
            await ask_members(ctx, nodes, command, job, found)
    answers = {node: found.get(node, {"ok": False, "error": "aborted"}) for node in nodes}
    return Result(AnswersView(answers, ctx.timeout), answers)


@command("unicast", "NODE COMMAND", "Run a command on one member.", order=180, top=True)
async def unicast(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
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


@command(
    "jobs", "", "List jobs (re-syncs, reaping, broadcasts, DuraVIP moves) with progress.", order=160
)
async def jobs_(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    if rest:
        raise UsageError(f"{spec.name} takes no arguments, got {' '.join(rest)!r}")
    found = [job.model_dump() for job in await jobs.list_jobs(ctx.client, ctx.keys)]
    now_ms = await members.server_time_ms(ctx.client)
    return Result(JobsView(found, now_ms), {"jobs": found})


@command("abort", "ID", "Abort the job with the specified id.", order=20)
async def abort(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    """Ask the job's runner to stop, and wait (up to the console's timeout) until it has."""
    if len(rest) != 1 or not rest[0].isdigit():
        raise UsageError(f"{spec.name} needs one job id (a number); usage: {spec.usage}")
    job_id = int(rest[0])
    try:
        job = await jobs.request_abort(ctx.client, ctx.keys, job_id)
    except jobs.JobUnknown as exc:
        raise NotFound(str(exc)) from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.timeout
    while job.running and loop.time() < deadline:
        await asyncio.sleep(0.05)
        job = await jobs.get(ctx.client, ctx.keys, job_id)
    if job.running:
        message = f"abort of job {job_id} requested; it stops after the chunk in flight"
    else:
        message = f"job {job_id} {job.state}: {job.done:,}/{job.total:,} ({job.detail})"
    return Result(Message(message), job.model_dump())


async def _in_member(
    ctx: ConsoleContext, spec: CommandSpec, rest: list[str]
) -> tuple[LocalMember | None, Result | None]:
    """The member process to run ``spec`` in: this one (``ctx.local``), or the attached
    node's, asked over Redis (then its answer is the result)."""
    if rest:
        raise UsageError(f"{spec.name} takes no arguments, got {' '.join(rest)!r}")
    if ctx.local is not None:
        return ctx.local, None
    if ctx.node is None:
        raise CommandError(
            f"{spec.name} needs --node NAME (the member to run it in), or: broadcast {spec.name}"
        )
    answer = (await ask_members(ctx, [ctx.node], spec.name))[ctx.node]
    if not answer["ok"]:
        raise CommandError(f"{ctx.node}: {answer['error']}")
    return None, Result(Message(str(answer["output"])), {"node": ctx.node, **answer})


@command("reset", "", "Leave and rejoin with a new epoch; re-publish the state.", order=120)
async def reset(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    member, forwarded = await _in_member(ctx, spec, rest)
    if member is None:
        assert forwarded is not None
        return forwarded
    done = await member.reset()
    message = (
        f"reset: rejoined as {done.private_name} (epoch {done.epoch}); "
        f"{done.republished:,} keys re-published"
    )
    return Result(Message(message), done.to_json())


@command("config reload", "", "Re-read the config file and apply it.", order=190, top=True)
async def config_reload(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    member, forwarded = await _in_member(ctx, spec, rest)
    if member is None:
        assert forwarded is not None
        return forwarded
    try:
        done = await member.reload()
    except (ConfigError, ValueError) as exc:
        raise CommandError(f"config reload failed, nothing changed: {exc}") from None
    if not done.file:
        return Result(Message(f"nothing to reload: {done.reason or ''}"), done.to_json())
    lines = [f"reloaded {done.file}"]
    parts = (done.added, done.removed, done.changed, done.needs_restart)
    for what, names in zip(("added", "removed", "changed", "needs_restart"), parts, strict=True):
        lines.append(f"{what.replace('_', ' ')}: {', '.join(names) if names else 'none'}")
    return Result(Message("\n".join(lines)), done.to_json())
