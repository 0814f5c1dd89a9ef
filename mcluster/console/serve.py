"""A member answering console commands sent over Redis (``broadcast``, ``unicast``).

Every agent and the manager run ``serve_console``: each request is run as the console
would run it attached to this member (``ConsoleContext.node`` is the member's name and
``ConsoleContext.local`` the process itself), and the answer is the text the console
would print, or the error it would report.
"""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from mcluster.console.commands import CommandError, ConsoleContext, NotFound, run_command
from mcluster.console.local import LocalMember
from mcluster.console.ops_views import plain_text
from mcluster.store import requests
from mcluster.store.keys import ClusterKeys

__all__ = ["answer", "serve_console"]


async def answer(ctx: ConsoleContext, command: str) -> requests.Answer:
    """Run one command; ``{"ok": true, "output": TEXT}`` or ``{"ok": false, "error": ...}``."""
    try:
        result = await run_command(ctx, command)
    except (CommandError, NotFound) as exc:
        return {"ok": False, "error": str(exc)}
    except RedisError as exc:
        return {"ok": False, "error": f"Redis error: {exc}"}
    return {"ok": True, "output": plain_text(result.renderable)}


async def serve_console(
    client: Redis,
    keys: ClusterKeys,
    member: LocalMember,
    configured: Callable[[], list[tuple[str, str]]],
    stopping: Callable[[], bool],
    member_type: str = "Momentum",
) -> None:
    """Answer the console requests sent to ``member`` until ``stopping()``."""

    async def handle(command: str) -> requests.Answer:
        ctx = ConsoleContext(client, keys, member.name, configured(), local=member)
        return await answer(ctx, command)

    await requests.serve(client, keys, member.name, handle, stopping, member_type)
