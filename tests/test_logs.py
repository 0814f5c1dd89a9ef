"""Cluster logs without processes: config, the append script on Redis 7 and 6.2, the
shipper across truncation and rotation, and the collector's exactly-once checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from mcluster.config import ConfigError, parse_config
from mcluster.logs.collector import Collector
from mcluster.logs.config import LogKeys, log_files, registry
from mcluster.logs.shipper import Shipper, _split
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts
from tests.helpers import until
from tests.redis_servers import RedisServer


def test_log_files_from_the_cluster_scope() -> None:
    conf = parse_config('cluster { logs = [ mainlog = "/var/log/{node}/main", paniclog = "/p" ] }')
    assert log_files(conf, "n1") == {"mainlog": "/var/log/n1/main", "paniclog": "/p"}
    assert log_files(parse_config("cluster {}")) == {}
    for text, message in [
        ('cluster { logs = "/x" }', "logs must be a dictionary"),
        ('cluster { logs = [ "a b" = "/x" ] }', "logs: bad log name 'a b'"),
        ('cluster { logs = [ mainlog = ("/x") ] }', "logs: mainlog needs a file path"),
    ]:
        with pytest.raises(ConfigError, match=message):
            log_files(parse_config(text, "t.conf"))


def test_split_keeps_byte_counts() -> None:
    lines, rest = _split(b"a\nbb\nccc")
    assert lines == [(b"a", 2), (b"bb", 3)] and rest == b"ccc"
    long = b"x" * (70 * 1024)
    lines, rest = _split(long)
    assert lines == [(long[: 64 * 1024], len(long))] and rest == b""


@pytest.fixture
async def client(any_redis: RedisServer) -> Any:
    client = Redis.from_url(any_redis.url)
    yield client
    await client.aclose()


async def test_append_is_exactly_once(client: Redis, namespace: str) -> None:
    lk = LogKeys(ClusterKeys(namespace), "mainlog", "n1")
    scripts = Scripts(client)

    async def append(fid: str, before: int, after: int, *lines: str) -> Any:
        return await scripts.run(
            "log_append", [lk.stream, lk.position], [fid, before, after, *lines]
        )

    assert await append("1:1", 0, 4, "a", "b") == b"ok"
    assert await append("1:1", 0, 4, "a", "b") == b"dup"  # a retry after a lost reply
    assert await append("1:1", 2, 6, "c") == [b"pos", b"1:1", b"4"]  # out of step
    assert await append("1:1", 4, 6, "c") == b"ok"
    assert await append("1:2", 0, 2, "d") == b"ok"  # rotated: another file from its start
    entries = await client.xrange(lk.stream)
    assert [e[1][b"l"] for e in entries] == [b"a", b"b", b"c", b"d"]


async def test_shipper_follows_truncation_and_rotation(
    client: Redis, namespace: str, tmp_path: Path
) -> None:
    keys = ClusterKeys(namespace)
    lk = LogKeys(keys, "mainlog", "n1")
    path = tmp_path / "mainlog"
    path.write_bytes(b"1\n2\n")
    shipper = Shipper(client, Scripts(client), lk, str(path), max_len=3)
    task = asyncio.create_task(shipper.run())

    async def lines() -> list[bytes]:
        return [e[1][b"l"] for e in await client.xrange(lk.stream)]

    async def shipped(want: list[bytes]) -> bool:
        return await lines() == want

    try:
        await until(lambda: shipped([b"1", b"2"]), 5, "first lines")
        with path.open("ab") as out:
            out.write(b"3\n4\n5\n")
        await until(lambda: shipped([b"1", b"2", b"3", b"4", b"5"]), 5, "one batch more")
        with path.open("ab") as out:  # backpressure: the stream is at its bound (3)
            out.write(b"6\n")
        await asyncio.sleep(0.5)
        assert await lines() == [b"1", b"2", b"3", b"4", b"5"]
        await client.xtrim(lk.stream, maxlen=0)
        await until(lambda: shipped([b"6"]), 5, "the rest once trimmed")
        path.write_bytes(b"7\n")  # truncated in place (copytruncate)
        await until(lambda: shipped([b"6", b"7"]), 5, "after truncation")
        with path.open("ab") as out:
            out.write(b"8")  # no newline yet...
        os.rename(path, tmp_path / "mainlog.1")  # ...then rotated: the last line still ships
        await client.xtrim(lk.stream, maxlen=0)
        path.write_bytes(b"9\n")
        await until(lambda: shipped([b"8", b"9"]), 5, "across the rotation")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_collector_truncates_an_unrecorded_batch(
    client: Redis, namespace: str, tmp_path: Path
) -> None:
    keys = ClusterKeys(namespace)
    lk = LogKeys(keys, "mainlog", "n1")
    await client.hset(registry(keys), "mainlog n1", "/x")
    for i in range(5):
        await client.xadd(lk.stream, {"l": f"line {i}"})
    collector = Collector(client, keys, tmp_path, "mgr")
    assert await collector.collect("mainlog", "n1")
    files = list(tmp_path.glob("*/*/*/mainlog/default/n1"))
    assert len(files) == 1 and files[0].read_bytes().count(b"\n") == 5
    with files[0].open("ab") as out:  # a crash after writing a batch, before recording it
        out.write(b"half-written\n")
    await client.xadd(lk.stream, {"l": "line 5"})
    again = Collector(client, keys, tmp_path, "mgr")
    assert await again.collect("mainlog", "n1")
    assert files[0].read_bytes().splitlines() == [f"line {i}".encode() for i in range(6)]
    assert await client.xlen(lk.stream) == 0  # acknowledged and trimmed
    await again.publish_stats()
