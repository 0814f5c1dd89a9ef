"""Jobs: long operations (re-syncs, reaping, broadcasts, resets, DuraVIP moves) with an
id, a state and progress in Redis, listed by ``cluster jobs`` and stopped by ``cluster abort ID``.

    job = await Job.start(client, keys, "resync", "lease lost", runner="relay-0-1",
                          runner_private="#e7-41#relay-0-1", total=n)
    async with job:                  # done, aborted (JobAborted) or failed; re-raised
        for chunk in chunks:
            ...                      # apply one chunk
            await job.step(done)     # progress (at most every 0.1 s); JobAborted if asked

Keys (tag ``{cluster}``): ``:jobs`` hash id -> JSON record, ``:job_id`` counter,
``:jobs:abort`` set of the ids an operator asked to abort. The runner checks the set when
it records progress, so an abort takes effect after the chunk in flight; what the job
does on ``JobAborted`` (keep what it did, or roll it back) is the job's own rule.

A running job whose runner is gone (its lease no longer holds the runner's private name,
or a console job past its deadline) is listed as ``lost``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from types import TracebackType
from typing import Literal, Self, cast

from pydantic import BaseModel
from redis.asyncio import Redis

from mcluster.errors import JobError
from mcluster.store import members
from mcluster.store.keys import ClusterKeys, text

__all__ = [
    "PROGRESS_EVERY",
    "Job",
    "JobAborted",
    "JobRecord",
    "JobUnknown",
    "console_runner",
    "get",
    "list_jobs",
    "request_abort",
    "settle_lost",
]

log = logging.getLogger("mcluster.jobs")

State = Literal["running", "done", "aborted", "failed", "lost"]
#: Seconds between two progress writes (and abort checks) of one job.
PROGRESS_EVERY = 0.1
#: Finished jobs kept (the oldest beyond this are removed when a job starts).
KEEP_FINISHED = 100
#: A console's job (no lease of its own) is lost this long after its deadline.
CONSOLE_GRACE_MS = 5_000


class JobAborted(JobError):
    """An operator asked to abort the job (``cluster abort ID``)."""


class JobUnknown(JobError, LookupError):
    """No job with that id (or it was removed long ago)."""

    def __str__(self) -> str:
        return str(self.args[0])


class JobRecord(BaseModel):
    """One job as ``cluster jobs`` shows it."""

    id: int
    kind: str
    what: str
    runner: str
    runner_private: str | None = None
    state: State = "running"
    done: int = 0
    total: int = 0
    started_ms: int
    updated_ms: int
    ended_ms: int | None = None
    deadline_ms: int | None = None
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


class Job:
    """The runner's handle on one job: progress, abort checks, and the end state."""

    def __init__(self, client: Redis, keys: ClusterKeys, record: JobRecord) -> None:
        self.client = client
        self.keys = keys
        self.record = record
        self._next = 0.0
        self._offset_ms = record.started_ms - int(time.time() * 1000)

    @property
    def id(self) -> int:
        return self.record.id

    @classmethod
    async def start(
        cls,
        client: Redis,
        keys: ClusterKeys,
        kind: str,
        what: str,
        *,
        runner: str,
        runner_private: str | None = None,
        total: int = 0,
        deadline_ms: int | None = None,
    ) -> Job:
        """Record a new running job (and remove the oldest finished ones beyond a limit)."""
        job_id = int(await client.incr(keys.job_id))
        now_ms = await members.server_time_ms(client)
        record = JobRecord(
            id=job_id, kind=kind, what=what, runner=runner, runner_private=runner_private,
            total=total, started_ms=now_ms, updated_ms=now_ms, deadline_ms=deadline_ms,
        )  # fmt: skip
        await client.hset(keys.jobs, str(job_id), record.model_dump_json())
        if job_id % 16 == 0:
            await _trim(client, keys)
        log.info("job %d started: %s %s (%s)", job_id, kind, what, runner)
        return cls(client, keys, record)

    async def step(self, done: int, total: int | None = None, *, force: bool = False) -> None:
        """Record progress at most every ``PROGRESS_EVERY`` s; raise JobAborted if asked."""
        self.record.done = done
        if total is not None:
            self.record.total = total
        loop = asyncio.get_running_loop()
        if not force and loop.time() < self._next:
            return
        self._next = loop.time() + PROGRESS_EVERY
        self.record.updated_ms = self._now_ms()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.jobs, str(self.id), self.record.model_dump_json())
            pipe.sismember(self.keys.jobs_abort, str(self.id))
            _, asked = await pipe.execute()
        if asked:
            raise JobAborted(f"job {self.id} ({self.record.kind}) aborted by the operator")

    def _now_ms(self) -> int:
        """Redis time, from the offset measured when the job started (no round trip)."""
        return int(time.time() * 1000) + self._offset_ms

    async def finish(self, state: State, detail: str = "") -> None:
        now_ms = self._now_ms()
        self.record.state, self.record.detail = state, detail or self.record.detail
        self.record.updated_ms = self.record.ended_ms = now_ms
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self.keys.jobs, str(self.id), self.record.model_dump_json())
            pipe.srem(self.keys.jobs_abort, str(self.id))
            await pipe.execute()
        log.info("job %d %s: %d/%d %s", self.id, state, self.record.done, self.record.total,
                 self.record.detail)  # fmt: skip

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Done on success, ``aborted`` on JobAborted, ``failed`` otherwise (re-raised)."""
        if e is None:
            await self.finish("done")
        elif isinstance(e, JobAborted):
            await self.finish("aborted", self.record.detail or "aborted by the operator")
        else:
            try:
                await self.finish("failed", f"{type(e).__name__}: {e}")
            except Exception:  # Redis may be the reason it failed; the job stays listed
                log.warning("job %d failed and could not be recorded as failed", self.id)


def console_runner(node: str | None) -> str:
    """The runner of a console's job: the attached node, or ``console@HOST:PID``."""
    return f"console@{socket.gethostname()}:{os.getpid()}" if node is None else node


async def list_jobs(client: Redis, keys: ClusterKeys) -> list[JobRecord]:
    """Every job kept, newest first; a running job whose runner is gone is ``lost``."""
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.jobs))
    jobs = [JobRecord.model_validate_json(v) for v in raw.values()]
    running = [j for j in jobs if j.running and j.runner_private is not None]
    leases = await client.mget([keys.lease(j.runner) for j in running]) if running else []
    held = {
        j.id for j, lease in zip(running, leases, strict=True)
        if lease is not None and text(lease) == j.runner_private
    }  # fmt: skip
    now_ms = await members.server_time_ms(client)
    for job in jobs:
        if not job.running:
            continue
        if (job.runner_private is not None and job.id not in held) or (
            job.deadline_ms is not None and now_ms > job.deadline_ms + CONSOLE_GRACE_MS
        ):
            job.state = "lost"
    return sorted(jobs, key=lambda j: -j.id)


async def get(client: Redis, keys: ClusterKeys, job_id: int) -> JobRecord:
    for job in await list_jobs(client, keys):
        if job.id == job_id:
            return job
    raise JobUnknown(f"no job {job_id}; 'cluster jobs' lists them")


async def request_abort(client: Redis, keys: ClusterKeys, job_id: int) -> JobRecord:
    """Ask the runner of a running job to stop; ValueError if it is not running."""
    job = await get(client, keys, job_id)
    if not job.running:
        raise ValueError(f"job {job_id} is {job.state}: nothing to abort")
    await client.sadd(keys.jobs_abort, str(job_id))
    log.info("abort of job %d requested", job_id)
    return job


async def settle_lost(client: Redis, keys: ClusterKeys) -> list[int]:
    """Record as ``lost`` the running jobs whose runner is gone (the manager does this
    every few seconds), so they end like any other job and are trimmed in time."""
    settled = []
    now_ms = await members.server_time_ms(client)
    for job in await list_jobs(client, keys):
        if job.state != "lost" or job.ended_ms is not None:
            continue
        job.ended_ms = job.updated_ms = now_ms
        job.detail = job.detail or "its runner went away"
        # Only if still stored as running: a runner finishing meanwhile wins.
        raw = await client.hget(keys.jobs, str(job.id))
        if raw is not None and JobRecord.model_validate_json(raw).running:
            await client.hset(keys.jobs, str(job.id), job.model_dump_json())
            settled.append(job.id)
            log.warning("job %d (%s %s) lost: its runner %s is gone", job.id, job.kind,
                        job.what, job.runner)  # fmt: skip
    if settled:
        await _trim(client, keys)
    return settled


async def _trim(client: Redis, keys: ClusterKeys) -> None:
    raw = cast(dict[bytes, bytes], await client.hgetall(keys.jobs))
    finished = sorted((int(k), json.loads(v).get("state")) for k, v in raw.items())  # oldest first
    old = [str(i) for i, state in finished if state != "running"]
    if len(old) > KEEP_FINISHED:
        await client.hdel(keys.jobs, *old[: len(old) - KEEP_FINISHED])
