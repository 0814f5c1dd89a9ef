"""Cluster logs with real processes: two nodes ship 100k lines across a rotation, the
manager is killed (-9) and restarted meanwhile, and every line arrives once, in order."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mcluster.logs.collector import out_path
from tests.agents import Farm, until

LINES = 50_000  # per node
NODES = ("n1", "n2")


def manager(farm: Farm, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mcluster", "manager", "--config", str(farm.config_path),
             "--redis", farm.redis.url, "--name", "mgr"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def collected(root: Path, node: str) -> list[bytes]:
    """Every line written for ``node``'s mainlog, files in date order."""
    files = sorted(root.glob(f"*/*/*/mainlog/default/{node}"))
    return [line for f in files for line in f.read_bytes().splitlines()]


async def write_lines(path: Path, node: str, start: int, stop: int) -> None:
    """Append lines in chunks, as a logger would, yielding to the test's loop."""
    for first in range(start, stop, 2000):
        with path.open("ab") as out:
            out.write(
                b"".join(
                    f"{node} {i:06d} x\n".encode() for i in range(first, min(stop, first + 2000))
                )
            )
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_lines_arrive_once_in_order_across_rotation_and_manager_restart(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    farm = Farm(
        tmp_path,
        extra_cluster=f'  logs = [ mainlog = "{tmp_path}/{{node}}/mainlog" ]\n'
        f'  log_dir = "{out}"\n  log_stream_max = 20000\n',
    )
    for node in NODES:
        (tmp_path / node).mkdir()
    mlog = tmp_path / "manager.log"
    proc = manager(farm, mlog)
    try:
        await farm.start(*NODES)
        half = LINES // 2
        await asyncio.gather(*(write_lines(tmp_path / n / "mainlog", n, 0, half) for n in NODES))
        await until(lambda: all(len(collected(out, n)) > 1000 for n in NODES), 60,
                    what="the manager writes lines")  # fmt: skip
        proc.kill()  # kill -9 in the middle of collecting
        proc.wait()
        for node in NODES:  # rotate: rename, then a new file
            os.rename(tmp_path / node / "mainlog", tmp_path / node / "mainlog.1")
        proc = manager(farm, mlog)
        await asyncio.gather(
            *(write_lines(tmp_path / n / "mainlog", n, half, LINES) for n in NODES)
        )
        await until(lambda: all(len(collected(out, n)) >= LINES for n in NODES), 120,
                    what="every line on disk")  # fmt: skip
        for node in NODES:
            want = [f"{node} {i:06d} x".encode() for i in range(LINES)]
            assert collected(out, node) == want
        size = sum(len(line) + 1 for n in NODES for line in collected(out, n))
        position = f"00000000:{2 * LINES:08x}"
        want = {"mainlog": {"bytes_on_disk": size, "subscribers": {"master": position}}}

        def shown() -> object:
            result = subprocess.run(
                [sys.executable, "-m", "mcluster", "console", "--redis", farm.redis.url,
                 "--namespace", farm.namespace, "--json", "-c", "cluster show logs"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            return json.loads(result.stdout)

        await until(lambda: shown() == want, 10, what=f"show logs says {want}")
        assert out_path(out, "mainlog", "n1", "0-0").parts[-3:] == ("mainlog", "default", "n1")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        await farm.close()
