"""Plumbing an address: the ``up`` / ``down`` command, run asynchronously with a timeout.

Commands of one address run one at a time, in the order asked (an ``up`` never overtakes
the ``down`` before it). A failure (exit status, timeout, missing program) is logged as
an error naming the address, the command and its output; it never stops the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
from dataclasses import dataclass, field

from mcluster.duravip.config import DuraVipConfig, command_line

log = logging.getLogger("mcluster.duravip")

OUTPUT_LIMIT = 2000


@dataclass
class Plumber:
    """Runs the DuraVIP command of one node; ``last[address]`` is the latest outcome."""

    cfg: DuraVipConfig
    node: str
    last: dict[str, str] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def run(self, action: str, address: str, *, quiet: bool = False) -> bool:
        """Run every command line of ``action`` for ``address``; True when all succeeded.

        ``quiet``: a failure is expected (unplumbing at startup what is not plumbed) and
        logged at INFO instead of ERROR.
        """
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            ok = True
            for argv in command_line(self.cfg, action, address):
                if self.cfg.command is None and argv[0] == "arping" and not shutil.which("arping"):
                    log.debug("DuraVIP %s: no arping on PATH, no gratuitous ARP sent", address)
                    continue
                problem = await self._exec(argv)
                if problem is not None:
                    ok = False
                    level = logging.INFO if quiet else logging.ERROR
                    log.log(level, "DuraVIP %s %s failed: %s: %s", action, address,
                            shlex.join(argv), problem)  # fmt: skip
                    break
            self.last[address] = f"{action} {'ok' if ok else 'failed'}"
            if ok:
                log.info("DuraVIP %s %s: done", action, address)
            return ok

    async def _exec(self, argv: list[str]) -> str | None:
        """None when the command exits 0, else what went wrong."""
        env = {**os.environ, "MCLUSTER_NODE": self.node}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: a timeout kills all of it
            )
        except OSError as exc:
            return f"cannot run it ({exc.strerror or exc})"
        try:
            async with asyncio.timeout(self.cfg.timeout):
                output, _ = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return f"no answer within {self.cfg.timeout:g} s (duravip_command_timeout); killed"
        if proc.returncode != 0:
            text = output.decode(errors="replace").strip()[-OUTPUT_LIMIT:]
            return f"exit status {proc.returncode}" + (f": {text}" if text else "")
        return None
