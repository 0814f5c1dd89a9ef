"""Reaping: taking the contribution of dead views out of the global views, in chunks.

A view is live while its node's lease holds the view's private name. The leader retires
every view that is not live (``view_retire``: from then on a late batch of it is refused)
and drains it: each chunk of at most ``REAP_CHUNK`` keys sets the dead view's counts to
zero and subtracts them from the global view in one script call, so Redis is never busy
for long, whatever the size of the view. Progress is kept in ``{cluster}:reaping``.

Aborting a reap job (``cluster abort ID``) pauses the drain of that view: it stops after
the chunk in flight (what was drained stays drained: each chunk left global == sum of the
views), the view stays retired (its late batches are refused), and no leader takes it up
again for ``hold`` seconds (``resync_hold``, default 30; the key
``{cluster}:reap_paused:OBJ#SHARD:VIEW`` expires then). A new ``reap`` job then drains the
rest: a dead node's counts must leave the global views, so an abort never cancels that.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import cast

from redis.asyncio import Redis

from mcluster.agent.outbox import key_cost
from mcluster.errors import Error, StaleReply
from mcluster.objects.kinds import Kind
from mcluster.store.jobs import Job, JobAborted
from mcluster.store.keys import ClusterKeys, ObjectKeys, text
from mcluster.store.scripts import Scripts

log = logging.getLogger("mcluster.reaper")

#: Keys per reaping script call: 32 IPv4 addresses touch about 600 hash fields (~1 ms).
REAP_CHUNK = 32


class Closed(Error):
    """The view being drained was closed meanwhile (another node drained it)."""


def slot_records(okeys: ObjectKeys, view: str) -> str:
    """The hash of a view's connection slot records (``outbound_slots``; agent/slots.py)."""
    return f"{okeys.view_base(view)}:slots"


async def retire(scripts: Scripts, okeys: ObjectKeys, view: str, node: str) -> bool:
    """Stop ``view`` being live; its later batches are refused. True if it was live."""
    done = await scripts.run("view_retire", [okeys.views, okeys.reaping], [view, node])
    return bool(done)


async def drain(
    scripts: Scripts,
    keys: ClusterKeys,
    kind: Kind,
    okeys: ObjectKeys,
    view: str,
    node: str,
    job: Job | None = None,
) -> int:
    """Zero a retired view chunk by chunk, then unregister it; returns keys removed.

    With a ``job``, each chunk records progress and JobAborted stops the drain after the
    chunk in flight: the view stays retired and listed in ``reaping`` (the leader drains
    the rest); every chunk left global == sum of the views."""
    client = scripts.client
    meta = cast(dict[bytes, bytes], await client.hgetall(okeys.meta(view)))
    total = kind.distinct_keys(meta)
    progress = {"object": okeys.name, "node": node, "total": total, "done": 0}
    progress["started_ms"] = int(time.time() * 1000)
    done = 0
    try:
        done = await _walk_and_zero(scripts, keys, kind, okeys, view, progress, job)
    except Closed:
        log.info("%s of %s was drained by another node", view, okeys.name)
        done = 0
    await scripts.run("view_close", [okeys.reaping, okeys.seq, okeys.meta(view)], [view])
    await client.delete(slot_records(okeys, view))  # the view's connection slots, if any
    await client.hdel(keys.reaping, f"{okeys.name} {view}")
    if done:
        log.info("reaped %s of %s: %d keys", view, okeys.name, done)
    return done


async def _walk_and_zero(
    scripts: Scripts,
    keys: ClusterKeys,
    kind: Kind,
    okeys: ObjectKeys,
    view: str,
    progress: dict[str, object],
    job: Job | None,
) -> int:
    client = scripts.client
    done = 0
    passes = 0
    while True:  # one walk drains the view; a second finds nothing (else walk again)
        passes += 1
        chunk: list[bytes] = []
        walked = cost = 0
        async for key in kind.leaves(client, okeys, view):
            chunk.append(key)
            walked += 1
            cost += key_cost(key)
            if cost >= REAP_CHUNK:
                done = await _zero(scripts, kind, okeys, view, chunk, done, progress, keys)
                chunk, cost = [], 0
                if job is not None:
                    await job.step(done)
        if chunk:
            done = await _zero(scripts, kind, okeys, view, chunk, done, progress, keys)
        if job is not None:
            await job.step(done, force=not walked)
        if not walked:
            break
        if passes > 3:
            raise RuntimeError(f"reaping {okeys.name} view {view} makes no progress")
    return done


async def _zero(
    scripts: Scripts,
    kind: Kind,
    okeys: ObjectKeys,
    view: str,
    chunk: list[bytes],
    done: int,
    progress: dict[str, object],
    keys: ClusterKeys,
) -> int:
    """Set one chunk of a retired view to zero (and out of the global view)."""
    call_keys, args = kind.apply_call(okeys, view, dict.fromkeys(chunk, 0), 0, "r")
    try:
        await scripts.run(kind.script, call_keys, args)
    except StaleReply:  # another drainer finished and closed it
        raise Closed from None
    done += len(chunk)
    progress["done"] = done
    if done % (REAP_CHUNK * 16) < len(chunk):
        await scripts.client.hset(keys.reaping, f"{okeys.name} {view}", json.dumps(progress))
    if done % (REAP_CHUNK * 1000) < len(chunk):
        log.info("reaping %s of %s: %d/%d keys", view, okeys.name, done, progress["total"])
    return done


async def dead_views(client: Redis, keys: ClusterKeys, okeys: ObjectKeys) -> dict[str, str]:
    """Registered views whose node's lease does not hold them: view id -> node."""
    views = cast(dict[bytes, bytes], await client.hgetall(okeys.views))
    if not views:
        return {}
    pairs = [(v.decode(), n.decode()) for v, n in views.items()]
    leases = await client.mget([keys.lease(n) for _, n in pairs])
    return {
        v: n
        for (v, n), lease in zip(pairs, leases, strict=True)
        if lease is None or text(lease) != v
    }


async def reap(
    scripts: Scripts,
    keys: ClusterKeys,
    objects: Iterable[tuple[Kind, ObjectKeys]],
    runner: tuple[str, str] | None = None,
    hold: float = 30.0,
) -> int:
    """One pass of the leader: retire dead views and drain every retired one.

    With ``runner`` (the leader's node and private name), each drain of a view that holds
    keys is a job (``cluster jobs``); an aborted one stops after its chunk in flight, and
    its view is skipped for ``hold`` seconds, then drained by a new job."""
    client = scripts.client
    removed = 0
    nodes = [text(f) for f in await client.hkeys(keys.members) if not text(f).endswith(":hb")]
    if nodes:
        gone = await scripts.run(
            "member_reap", [keys.members, *(keys.lease(n) for n in nodes)], nodes
        )
        for node in gone:
            log.warning("node %s lost its lease: removed from the membership", text(node))
    for kind, okeys in objects:
        for view, node in (await dead_views(client, keys, okeys)).items():
            if await retire(scripts, okeys, view, node):
                log.warning("node %s (%s) is gone: reaping its %s view", node, view, okeys.name)
        retired = cast(dict[bytes, bytes], await client.hgetall(okeys.reaping))
        for dead, owner in retired.items():
            target = (kind, okeys, text(dead), text(owner))
            removed += await _reap_view(scripts, keys, target, runner, hold)
    return removed


def paused_key(keys: ClusterKeys, okeys: ObjectKeys, view: str) -> str:
    """Set (with an expiry) while the reaping of ``view`` is paused by an abort."""
    return f"{keys.base}:reap_paused:{okeys.name}#{okeys.shard}:{view}"


async def _reap_view(
    scripts: Scripts,
    keys: ClusterKeys,
    target: tuple[Kind, ObjectKeys, str, str],
    runner: tuple[str, str] | None,
    hold: float,
) -> int:
    """Drain one retired view (kind, object keys, view, node), as a job when it has keys."""
    kind, okeys, view, node = target
    client = scripts.client
    paused = paused_key(keys, okeys, view)
    if await client.get(paused) is not None:  # GET: the documented ACL has no EXISTS
        return 0
    total = kind.distinct_keys(cast(dict[bytes, bytes], await client.hgetall(okeys.meta(view))))
    if runner is None or not total:
        return await drain(scripts, keys, kind, okeys, view, node)
    job = await Job.start(
        client, keys, "reap", f"{okeys.name} view {view} of {node}",
        runner=runner[0], runner_private=runner[1], total=total,
    )  # fmt: skip
    try:
        async with job:
            try:
                return await drain(scripts, keys, kind, okeys, view, node, job)
            except JobAborted:  # paused before the job ends: no leader takes it up meanwhile
                await client.set(paused, str(job.id), px=max(1, int(hold * 1000)))
                left = job.record.total - job.record.done
                job.record.detail = (
                    f"paused for {hold:g} s, then a new job reaps the {left:,} keys left"
                )
                raise
    except JobAborted:
        log.warning("reaping %s of %s aborted: paused for %g s", view, okeys.name, hold)
        return 0
