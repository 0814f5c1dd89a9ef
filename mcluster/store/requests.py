"""Console commands over Redis: a request list per member, a reply list per request.

Asking (``broadcast``, ``unicast``, a console attached to a node)::

    RPUSH  {ns}:{cluster}:requests:NODE  {"id", "command", "reply_to", "deadline_ms"}
    PEXPIRE the list, so the list of a member that died goes away
    BLPOP  {ns}:{cluster}:reply:ID  (at most 1 s at a time) until every member answered
           or the deadline passed

Answering (every agent and the manager run ``serve``)::

    BLPOP  requests:NODE (1 s at a time); a request whose deadline (Redis server time)
           has passed is dropped unrun, so a node that was stopped never runs stale ones
    RPUSH  reply:ID {"node", "ok", "output" | "error"}; PEXPIRE the reply list

A member that does not answer in time is reported as ``{"ok": false, "error":
"timeout"}``: the asker never waits longer than its timeout for anyone. Lists work on
standalone Redis, Sentinel and Cluster alike (one key per call).

Who answers: each server keeps ``{ns}:{cluster}:responders`` (node -> its member type and
when it was last seen, refreshed every ``SEEN_EVERY`` seconds) and removes itself when it
stops cleanly. ``responders`` gives the nodes seen within ``FORGET_AFTER`` seconds, so a
node that was stopped, killed or cut off is still asked (and reported as not answering)
after its lease expired and its member record was reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mcluster.store import members
from mcluster.store.keys import ClusterKeys
from mcluster.store.retry import worth_logging

__all__ = [
    "TIMEOUT",
    "Answer",
    "Handler",
    "Request",
    "ask",
    "responders",
    "serve",
    "timeout_answer",
]

log = logging.getLogger("mcluster.requests")

#: ``{"ok": true, "output": TEXT}`` or ``{"ok": false, "error": TEXT}``.
Answer = dict[str, Any]
Handler = Callable[[str], Awaitable[Answer]]

TIMEOUT = "timeout"
#: Longest single BLPOP: below the client's socket timeout, and short enough to stop fast.
POLL = 1.0
#: Reply and request lists outlive the request by this much, then Redis drops them.
LINGER_MS = 30_000
#: Requests one member runs at once; more wait in its list.
CONCURRENCY = 8
#: A server refreshes its responder entry this often (seconds)...
SEEN_EVERY = 10.0
#: ... and a silent one is no longer asked after this long (seconds).
FORGET_AFTER = 600.0
_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def timeout_answer() -> Answer:
    return {"ok": False, "error": TIMEOUT}


@dataclass(frozen=True)
class Request:
    """One console command for one member, answered on ``reply_to`` before ``deadline_ms``."""

    id: str
    command: str
    reply_to: str
    deadline_ms: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Request:
        """Parse a request; ValueError names what is wrong with it."""
        try:
            data = json.loads(raw)
            return cls(
                id=str(data["id"]),
                command=str(data["command"]),
                reply_to=str(data["reply_to"]),
                deadline_ms=int(data["deadline_ms"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"bad console request {raw!r}: {exc!r}") from None


async def ask(
    client: Redis,
    keys: ClusterKeys,
    nodes: Sequence[str],
    command: str,
    timeout: float,
    tick: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[str, Answer]]:
    """Send ``command`` to every node; yield (node, answer) as answers arrive, then a
    timeout answer for each node that did not answer within ``timeout`` seconds.

    ``tick()`` runs at least once a second while waiting (a job's abort check). The
    caller may stop early (an aborted job): late answers expire unread.
    """
    request_id = uuid.uuid4().hex
    now_ms = await members.server_time_ms(client)
    request = Request(request_id, command, keys.reply(request_id), now_ms + int(timeout * 1000))
    linger = int(timeout * 1000) + LINGER_MS
    async with client.pipeline(transaction=False) as pipe:
        for node in nodes:
            pipe.rpush(keys.requests(node), request.to_json())
            pipe.pexpire(keys.requests(node), linger)
        await pipe.execute()
    waiting = set(nodes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while waiting:
        left = deadline - loop.time()
        if left <= 0:
            break
        popped = await client.blpop([request.reply_to], timeout=max(0.01, min(POLL, left)))
        if tick is not None:
            await tick()
        if popped is None:
            continue
        node, answer = _parse_answer(popped[1])
        if node in waiting:
            waiting.discard(node)
            yield node, answer
    for node in sorted(waiting):
        yield node, timeout_answer()
    await client.delete(request.reply_to)


def _parse_answer(raw: bytes | str) -> tuple[str, Answer]:
    data = json.loads(raw)
    node = str(data.pop("node"))
    return node, data


async def responders(client: Redis, keys: ClusterKeys) -> dict[str, str]:
    """Nodes seen answering console requests within ``FORGET_AFTER`` s: node -> type."""
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.responders))
    now_ms = await members.server_time_ms(client)
    found = {}
    for node, value in raw.items():
        entry = json.loads(value)
        if now_ms - int(entry["seen_ms"]) <= FORGET_AFTER * 1000:
            found[node.decode()] = str(entry["type"])
    return found


async def _seen(client: Redis, keys: ClusterKeys, node: str, member_type: str) -> None:
    now_ms = await members.server_time_ms(client)
    entry = json.dumps({"type": member_type, "seen_ms": now_ms})
    await client.hset(keys.responders, node, entry)


async def serve(
    client: Redis,
    keys: ClusterKeys,
    node: str,
    handler: Handler,
    stopping: Callable[[], bool],
    member_type: str = "Momentum",
) -> None:
    """Answer the console requests sent to ``node`` until ``stopping()``; never raises for
    a bad request or a Redis outage (it logs and goes on)."""
    running: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(CONCURRENCY)
    failures = 0
    loop = asyncio.get_running_loop()
    next_seen = 0.0
    try:
        while not stopping():
            try:
                if loop.time() >= next_seen:
                    await _seen(client, keys, node, member_type)
                    next_seen = loop.time() + SEEN_EVERY
                popped = await client.blpop([keys.requests(node)], timeout=POLL)
                failures = 0
            except _ERRORS as exc:
                failures += 1
                if worth_logging(failures):
                    log.warning("console requests of %s: Redis error (%s)", node, exc)
                await asyncio.sleep(POLL)
                continue
            if popped is None:
                continue
            try:
                request = Request.from_json(popped[1])
            except ValueError as exc:
                log.warning("%s: %s; ignored", node, exc)
                continue
            await slots.acquire()
            task = asyncio.create_task(_answer(client, node, request, handler, slots))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()
        if stopping():  # a clean stop: not a node that stopped answering
            with contextlib.suppress(*_ERRORS):
                await client.hdel(keys.responders, node)


async def _answer(
    client: Redis, node: str, request: Request, handler: Handler, slots: asyncio.Semaphore
) -> None:
    try:
        if await members.server_time_ms(client) > request.deadline_ms:
            log.info("console request %r of %s came too late; not run", request.command, node)
            return
        try:
            answer = await handler(request.command)
        except Exception as exc:  # a command's failure is an answer, never a dead server
            log.exception("console command %r failed", request.command)
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        linger = max(0, request.deadline_ms - await members.server_time_ms(client)) + LINGER_MS
        async with client.pipeline(transaction=False) as pipe:
            pipe.rpush(request.reply_to, json.dumps({"node": node, **answer}))
            pipe.pexpire(request.reply_to, linger)
            await pipe.execute()
    except _ERRORS as exc:
        log.warning("could not answer console request %r: %s", request.command, exc)
    finally:
        slots.release()
