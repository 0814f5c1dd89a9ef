"""Helpers for the cluster-operations tests: a manager process beside a Farm, and the
console run as a real ``mcluster console`` process (the interface operators script)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.agents import Farm, _die_with_parent


@dataclass
class Console:
    """What one ``mcluster console -c`` run printed, and how long it took."""

    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        assert self.code == 0, f"console exited {self.code}: {self.err}"
        return json.loads(self.out)


async def console(farm: Farm, command: str, *args: str, timeout: float | None = None) -> Console:
    """Run ``mcluster console --redis URL --namespace NS [--timeout T] ARGS -c COMMAND``."""
    argv = [sys.executable, "-m", "mcluster", "console", "--redis", farm.redis.url,
            "--namespace", farm.namespace, *args, "-c", command]  # fmt: skip
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return Console(proc.returncode, out.decode(), err.decode(), time.monotonic() - started)


@dataclass
class ManagerProcess:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        """SIGTERM and wait: the manager leaves the cluster cleanly."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=15)


def spawn_manager(farm: Farm, name: str = "mgr") -> ManagerProcess:
    """``mcluster manager --config FARM_CONFIG --redis URL --name NAME`` in the background."""
    log_path = farm.workdir / f"{farm.namespace}-{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcluster", "manager", "--config", str(farm.config_path),
             "--redis", farm.redis.url, "--name", name],
            env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
    return ManagerProcess(name, proc, log_path)
