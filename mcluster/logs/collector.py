"""The manager's log collector: consumer group ``master`` on every node's log stream,
lines written under ``log_dir`` as ``%Y/%m/%d/LOG/default/NODE`` (Momentum's
``%Y/%m/%d/%{l}/%{s}/%{n}``: log, subcluster, node), dated by the line's stream time.

Exactly once on disk, across restarts and crashes: after each batch (all to one file)
the collector records ``{last id, file, size}`` in a checkpoint file beside the logs,
then acknowledges and trims the stream. A restarted manager truncates the file back to
the checkpoint's size (dropping a batch written but not recorded), skips the entries up
to the checkpoint's id, and takes its pending entries before new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from mcluster.logs.config import SUBCLUSTER, LogKeys, log_dir, registry, stats
from mcluster.store.keys import ClusterKeys, text

log = logging.getLogger("mcluster.logs")

GROUP = "master"
COUNT = 1000
POLL = 0.1
STATS_EVERY = 0.5


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def out_path(root: Path, log_name: str, node: str, entry_id: str) -> Path:
    day = time.strftime("%Y/%m/%d", time.gmtime(_id_key(entry_id)[0] / 1000))
    return root / day / log_name / SUBCLUSTER / node


@dataclass
class Checkpoint:
    entry_id: str = "0-0"
    path: str = ""
    size: int = 0


@dataclass
class Collector:
    client: Redis
    keys: ClusterKeys
    root: Path
    consumer: str
    checkpoints: dict[tuple[str, str], Checkpoint] = field(default_factory=dict)
    lines: dict[tuple[str, str], int] = field(default_factory=dict)
    written: dict[tuple[str, str], int] = field(default_factory=dict)
    _groups: set[tuple[str, str]] = field(default_factory=set)
    _published: float = 0.0

    def _checkpoint_file(self, log_name: str, node: str) -> Path:
        return self.root / ".checkpoints" / f"{log_name}.{node}.json"

    def _load(self, log_name: str, node: str) -> Checkpoint:
        """The checkpoint, after cutting its file back to the size it records."""
        path = self._checkpoint_file(log_name, node)
        try:
            data = json.loads(path.read_text())
            cp = Checkpoint(str(data["id"]), str(data["path"]), int(data["size"]))
            self.lines[(log_name, node)] = int(data.get("lines", 0))
            self.written[(log_name, node)] = int(data.get("bytes", 0))
        except (OSError, ValueError, KeyError):
            return Checkpoint()
        target = Path(cp.path)
        with contextlib.suppress(OSError):
            if target.stat().st_size > cp.size:
                log.warning("log %s of %s: dropping a batch written after the checkpoint",
                            log_name, node)  # fmt: skip
                os.truncate(target, cp.size)
        return cp

    def _save(self, log_name: str, node: str, cp: Checkpoint) -> None:
        path = self._checkpoint_file(log_name, node)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        body = {"id": cp.entry_id, "path": cp.path, "size": cp.size,
                "lines": self.lines.get((log_name, node), 0),
                "bytes": self.written.get((log_name, node), 0)}  # fmt: skip
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)

    async def run(self, stopping: Any) -> None:
        """Collect until ``stopping()`` says so."""
        while not stopping():
            found = await self.client.hkeys(registry(self.keys))
            busy = False
            for raw in sorted(found):
                log_name, _, node = text(raw).partition(" ")
                busy |= await self.collect(log_name, node)
            if time.monotonic() - self._published >= STATS_EVERY or not busy:
                await self.publish_stats()
                self._published = time.monotonic()
            if not busy:
                await asyncio.sleep(POLL)

    async def _group(self, lk: LogKeys) -> None:
        if (lk.log, lk.node) in self._groups:
            return
        try:
            await self.client.xgroup_create(lk.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add((lk.log, lk.node))
        self.checkpoints[(lk.log, lk.node)] = self._load(lk.log, lk.node)

    async def collect(self, log_name: str, node: str) -> bool:
        """One read: pending entries of this consumer first, then new ones. True if any."""
        lk = LogKeys(self.keys, log_name, node)
        await self._group(lk)
        entries: list[tuple[str, bytes]] = []
        for start in ("0", ">"):
            reply: Any = await self.client.xreadgroup(
                GROUP, self.consumer, {lk.stream: start}, count=COUNT
            )
            for _, items in reply or []:
                entries += [(text(i), f.get(b"l", b"")) for i, f in items if f]
            if entries:
                break
        if not entries:
            return False
        await self._write(lk, entries)
        return True

    async def _write(self, lk: LogKeys, entries: list[tuple[str, bytes]]) -> None:
        cp = self.checkpoints[(lk.log, lk.node)]
        done = _id_key(cp.entry_id)
        fresh = [(i, line) for i, line in entries if _id_key(i) > done]
        # One file per batch (the day may change in the middle of a read).
        while fresh:
            target = out_path(self.root, lk.log, lk.node, fresh[0][0])
            batch = []
            for entry in fresh:
                if out_path(self.root, lk.log, lk.node, entry[0]) != target:
                    break
                batch.append(entry)
            fresh = fresh[len(batch) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            data = b"".join(line + b"\n" for _, line in batch)
            with target.open("ab") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
                size = out.tell()
            key = (lk.log, lk.node)
            self.lines[key] = self.lines.get(key, 0) + len(batch)
            self.written[key] = self.written.get(key, 0) + len(data)
            cp = Checkpoint(batch[-1][0], str(target), size)
            self._save(lk.log, lk.node, cp)
            self.checkpoints[key] = cp
        ids = [i for i, _ in entries]
        await self.client.xack(lk.stream, GROUP, *ids)
        ms, seq = _id_key(ids[-1])
        await self.client.xtrim(lk.stream, minid=f"{ms}-{seq + 1}")

    async def publish_stats(self) -> None:
        """Per log: bytes on disk (every node's files) and lines delivered to ``master``."""
        per_log: dict[str, dict[str, int]] = {}
        for (log_name, node), lines in self.lines.items():
            figures = per_log.setdefault(log_name, {"bytes_on_disk": 0, "lines": 0})
            figures["bytes_on_disk"] += self.written.get((log_name, node), 0)
            figures["lines"] += lines
        if per_log:
            await self.client.hset(
                stats(self.keys), mapping={k: json.dumps(v) for k, v in per_log.items()}
            )


async def collect_logs(manager: Any) -> None:
    """The manager's ``logs`` service (``manager`` is a ``mcluster.manager.manager.Manager``)."""
    root = Path(log_dir(manager.config))
    collector = Collector(manager.client, manager.keys, root, manager.name)
    await collector.run(lambda: manager.stopping)
