"""A node ships each configured log file, line by line, into its Redis stream.

* Bounded memory: the file is read in chunks of ``CHUNK`` bytes; only complete lines are
  shipped (a line longer than ``MAX_LINE`` is cut), batches of at most ``BATCH`` lines.
* Exactly once: every batch carries (file id, offset before, offset after) and the
  ``log_append`` script applies it only where the last one ended; a retry after a lost
  reply is recognised. A restarted node resumes at the offset Redis holds.
* Backpressure: while the stream holds ``log_stream_max`` entries not yet consumed and
  trimmed by the manager, the shipper waits (the file keeps the lines meanwhile).
* Rotation: when the path names another file (renamed and re-created) the old one is
  read to its end first, then the new one from its start; a file truncated in place
  (copytruncate) is read again from its start.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import BinaryIO

from redis.asyncio import Redis

from mcluster.agent.outbox import RETRY_ERRORS, stop_if_cancelled
from mcluster.agent.service import ServiceContext
from mcluster.errors import Error
from mcluster.logs.config import LogKeys, registry
from mcluster.store.keys import ClusterKeys, text
from mcluster.store.scripts import Scripts

log = logging.getLogger("mcluster.logs")

CHUNK = 256 * 1024
BATCH = 500
MAX_LINE = 64 * 1024
POLL = 0.1


def file_id(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


@dataclass
class Shipper:
    client: Redis
    scripts: Scripts
    lk: LogKeys
    path: str
    max_len: int
    shipped: int = 0  # lines appended by this process

    async def run(self) -> None:
        """Ship forever (cancel to stop); Redis errors are retried, never fatal."""
        while True:
            stop_if_cancelled()
            try:
                await self._ship()
            except RETRY_ERRORS as exc:
                log.warning("log %s: Redis error (%s); retrying", self.lk.log, exc)
                await asyncio.sleep(1.0)
            except OutOfStep as exc:  # resume from the position Redis holds
                log.error("%s; resuming from it", exc)
                await asyncio.sleep(POLL)

    async def _position(self) -> tuple[str, int]:
        raw = await self.client.hmget(self.lk.position, ["file", "off"])
        return (text(raw[0]) if raw[0] else ""), int(raw[1] or 0)

    async def _open(self) -> BinaryIO:
        while True:
            try:
                return open(self.path, "rb")
            except OSError:
                await asyncio.sleep(POLL * 5)

    async def _ship(self) -> None:
        stream = await self._open()
        try:
            fid = file_id(os.fstat(stream.fileno()))
            held_file, held_off = await self._position()
            size = os.fstat(stream.fileno()).st_size
            offset = held_off if held_file == fid and held_off <= size else 0
            stream.seek(offset)
            rest = b""
            while True:
                stop_if_cancelled()
                offset, rest, got = await self._drain(stream, fid, offset, rest)
                if got:
                    continue
                rotated = await self._rotated(fid, offset + len(rest))
                if rotated is None:
                    await asyncio.sleep(POLL)
                    continue
                if rotated == "renamed":  # what was written before the rename, then the rest
                    offset, rest, _ = await self._drain(stream, fid, offset, rest, to_end=True)
                    if rest:  # the old file's last line had no newline
                        await self._append(fid, offset, offset + len(rest), [rest[:MAX_LINE]])
                stream.close()
                stream = await self._open()
                fid = file_id(os.fstat(stream.fileno()))
                offset, rest = 0, b""
                log.info("log %s: %s; reading %s from its start", self.lk.log, rotated, self.path)
        finally:
            stream.close()

    async def _drain(
        self, stream: BinaryIO, fid: str, offset: int, rest: bytes, *, to_end: bool = False
    ) -> tuple[int, bytes, bool]:
        """Ship the complete lines of one chunk (every chunk up to the end with ``to_end``);
        returns the new offset, the incomplete rest, and whether anything was read."""
        got = False
        while data := stream.read(CHUNK):
            got = True
            lines, rest = _split(rest + data)
            for start in range(0, len(lines), BATCH):
                batch = lines[start : start + BATCH]
                size = sum(used for _, used in batch)
                await self._append(fid, offset, offset + size, [b for b, _ in batch])
                offset += size
            if not to_end:
                break
        return offset, rest, got

    async def _rotated(self, fid: str, end: int) -> str | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None  # renamed, not yet re-created: keep the old one
        if file_id(st) != fid:
            return "renamed"
        if st.st_size < end:
            return "truncated"
        return None

    async def _append(self, fid: str, before: int, after: int, lines: list[bytes]) -> None:
        while True:
            while await self.client.xlen(self.lk.stream) >= self.max_len:
                await asyncio.sleep(POLL)  # backpressure: the manager has not caught up
            reply = await self.scripts.run(
                "log_append", [self.lk.stream, self.lk.position], [fid, before, after, *lines]
            )
            if isinstance(reply, bytes | str):
                if text(reply) == "ok":
                    self.shipped += len(lines)
                return  # "dup": applied before (a lost reply)
            raise OutOfStep(
                f"log {self.lk.log}: Redis holds position {reply!r}, shipper at {fid}@{before}"
            )


class OutOfStep(Error, RuntimeError):
    """Redis holds another shipping position than this shipper's."""


def _split(data: bytes) -> tuple[list[tuple[bytes, int]], bytes]:
    """Complete lines as (line without newline, bytes consumed) and the incomplete rest;
    an over-long line is cut at MAX_LINE (its bytes all consumed)."""
    parts = data.split(b"\n")
    rest = parts.pop()
    lines = [(p[:MAX_LINE], len(p) + 1) for p in parts]
    if len(rest) > MAX_LINE:  # a line without end in sight: ship what fits
        lines.append((rest[:MAX_LINE], len(rest)))
        rest = b""
    return lines, rest


async def ship_logs(
    client: Redis, scripts: Scripts, keys: ClusterKeys, node: str, files: dict[str, str],
    max_len: int,
) -> None:  # fmt: skip
    """Register every log of ``node`` for the manager and ship them until cancelled."""
    if not files:
        return
    await client.hset(
        registry(keys), mapping={f"{name} {node}": path for name, path in files.items()}
    )
    shippers = [Shipper(client, scripts, LogKeys(keys, name, node), path, max_len)
                for name, path in files.items()]  # fmt: skip
    await asyncio.gather(*(s.run() for s in shippers))


class LogShipping:
    """The node's log shipping as a ``Service`` (``agent/service.py``)."""

    name = "logs"

    def __init__(self, ctx: ServiceContext, files: dict[str, str], max_len: int) -> None:
        self.ctx = ctx
        self.files = files
        self.max_len = max_len
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ctx = self.ctx
        shipping = ship_logs(ctx.client, ctx.scripts(), ctx.keys, ctx.node, self.files,
                             self.max_len)  # fmt: skip
        self._task = ctx.spawn(shipping, self.name)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None

    def on_rejoin(self) -> None:
        """The logs are the node's, not its epoch's: shipping goes on."""
