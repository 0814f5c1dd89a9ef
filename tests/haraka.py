"""Real Haraka processes for the integration tests of ``integrations/haraka`` (the npm
package haraka-plugin-mcluster), loopback SMTP sinks that record concurrent sessions, and
a small SMTP client.

Haraka 3.x and haraka-plugin-limit are installed from npm by ``.ci/run``
(``npm ci --prefix integrations/haraka``, exact versions from its package-lock.json) into
``integrations/haraka/node_modules`` (ignored by git); ``MCLUSTER_HARAKA_MODULES`` names
another ``node_modules`` folder holding them. Without node or that install the tests skip,
saying how to install.

    sink = await Sink.start(hold=0.2)                     # records sessions and messages
    haraka = Haraka(tmp_path / "h1", plugins=["mcluster"], routes={"capped.test": sink.port},
                    ini={"mcluster.ini": "[main]\\nurl=http://127.0.0.1:4802\\n"})
    await haraka.start()
    await send_mail(haraka.port, ["a@capped.test"])
    haraka.kill()                                         # SIGKILL
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.agents import _die_with_parent, until
from tests.redis_servers import free_port

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "integrations" / "haraka"
HOW_TO_INSTALL = (
    "Haraka is not installed: run `npm ci --prefix integrations/haraka` (as .ci/run does; "
    "needs node >= 20 and npm), or set MCLUSTER_HARAKA_MODULES to a node_modules folder "
    "holding Haraka 3.x and haraka-plugin-limit"
)

#: A test-only Haraka plugin: every client may relay, and each destination domain's MX is
#: a loopback sink named in config/test_routes.json (no DNS): a port, or a list of
#: [MX name, port] in priority order. A named MX is given as Haraka gives one it resolved
#: in DNS (the address in ``exchange``, the name in ``from_dns``), so the mcluster plugin
#: reports the name as the MX host (outbound.ini's local_mx_ok lets Haraka connect to it).
ROUTE_PLUGIN = """
'use strict'
exports.register = function () {
  this.routes = this.config.get('test_routes.json', 'json') || {}
}
exports.hook_connect_init = function (next, connection) {
  connection.relaying = true
  next()
}
exports.hook_get_mx = function (next, hmail, domain) {
  const route = this.routes[domain]
  if (!route) return next()
  if (!Array.isArray(route)) return next(OK, { exchange: '127.0.0.1', port: route, priority: 10 })
  next(OK, route.map(([name, port], i) => (
    { exchange: '127.0.0.1', port, priority: 10 * (i + 1), from_dns: name })))
}
"""


def node_modules() -> Path | None:
    """The node_modules folder holding Haraka, or None."""
    chosen = os.environ.get("MCLUSTER_HARAKA_MODULES")
    folder = Path(chosen) if chosen else PLUGIN_DIR / "node_modules"
    return folder if (folder / "Haraka" / "bin" / "haraka").is_file() else None


def skip_reason() -> str | None:
    """Why the Haraka tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (Debian: apt-get install nodejs npm); " + HOW_TO_INSTALL
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        return f"Haraka 3.x needs node >= 20, this is {version.strip()}; " + HOW_TO_INSTALL
    if node_modules() is None:
        return HOW_TO_INSTALL
    return None


# -- sinks -------------------------------------------------------------------------------------


@dataclass
class Sink:
    """A loopback SMTP server that accepts everything and records, per session, when it
    opened and closed, and the time of every message (at end of DATA). ``hold`` seconds
    are spent in each DATA, so sessions overlap; ``quit_delay`` seconds before answering
    QUIT, as a receiver slow to close."""

    hold: float = 0.0
    #: the answer at the end of DATA
    reply: str = "250 2.0.0 OK"
    #: seconds before QUIT is answered (a receiver slow to close: the session stays open)
    quit_delay: float = 0.0
    port: int = 0
    current: int = 0
    peak: int = 0
    sessions: int = 0
    #: session starts that found ``cap`` or more sessions already open (see ``over``)
    starts_at: list[int] = field(default_factory=list)
    messages: list[float] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @classmethod
    async def start(
        cls, hold: float = 0.0, reply: str = "250 2.0.0 OK", quit_delay: float = 0.0
    ) -> Sink:
        sink = cls(hold, reply, quit_delay)
        loop = asyncio.get_running_loop()
        sink._server = await loop.create_server(lambda: _SinkSMTP(sink), "127.0.0.1", 0)
        sink.port = sink._server.sockets[0].getsockname()[1]
        return sink

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def opened(self) -> None:
        self.starts_at.append(self.current)  # how many were open when this one came
        self.current += 1
        self.sessions += 1
        self.peak = max(self.peak, self.current)

    def closed(self) -> None:
        self.current -= 1

    def over(self, cap: int) -> int:
        """How many sessions opened while ``cap`` or more were already open."""
        return sum(1 for n in self.starts_at if n >= cap)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold:
            await asyncio.sleep(self.hold)
        self.messages.append(time.monotonic())
        return self.reply

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.quit_delay:
            await asyncio.sleep(self.quit_delay)
        return "221 Bye"


class _SinkSMTP(SMTP):
    def __init__(self, sink: Sink) -> None:
        super().__init__(sink, hostname="sink.test", ident="sink")
        self._sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sink.opened()
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._sink.closed()


def densest(times: list[float], window: float) -> int:
    """The most of ``times`` inside any ``window`` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


# -- Haraka ------------------------------------------------------------------------------------


class Haraka:
    """One Haraka process with its own instance folder (config, queue, log) under ``home``."""

    def __init__(
        self,
        home: Path,
        *,
        plugins: list[str],
        routes: Mapping[str, int | list[tuple[str, int]]] | None = None,
        ini: dict[str, str] | None = None,
    ) -> None:
        modules = node_modules()
        assert modules is not None, HOW_TO_INSTALL
        self.modules = modules
        self.home = home
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        config = home / "config"
        for folder in (config, home / "plugins", home / "queue", home / "node_modules"):
            folder.mkdir(parents=True, exist_ok=True)
        link = home / "node_modules" / "haraka-plugin-mcluster"
        if not link.exists():
            link.symlink_to(PLUGIN_DIR)
        (home / "plugins" / "test_route.js").write_text(ROUTE_PLUGIN)
        shutil.copy(modules / "Haraka" / "config" / "connection.ini", config / "connection.ini")
        (config / "smtp.ini").write_text(f"listen=127.0.0.1:{self.port}\nnodes=0\n")
        (config / "log.ini").write_text("[main]\nlevel=info\ntimestamps=true\n")
        (config / "outbound.ini").write_text("local_mx_ok=true\n")
        (config / "me").write_text(f"{home.name}.haraka.test\n")
        (config / "plugins").write_text("\n".join(["test_route", *plugins]) + "\n")
        (config / "test_routes.json").write_text(json.dumps(routes or {}))
        for name, text in (ini or {}).items():
            (config / name).write_text(text)

    @property
    def log_path(self) -> Path:
        return self.home / "haraka.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def start(self, timeout: float = 30.0) -> None:
        """Start Haraka and wait until it greets on its port (220, or 421 from a plugin)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["node", str(self.modules / "Haraka" / "bin" / "haraka"), "-c", str(self.home)],
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                cwd=self.home,
            )  # fmt: skip

        async def greets() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                f"Haraka exited:\n{self.log()[-3000:]}"
            )
            client = await SmtpClient.connect(self.port)
            try:
                return client.greeting in (220, 421)
            finally:
                await client.close()

        await until(greets, timeout, what=f"Haraka on port {self.port} greets", interval=0.1)
        # Haraka listens before its outbound queue is set up, and that set-up deletes the
        # temporary files of messages being queued meanwhile ("Unable to rename tmp file")
        await until(lambda: self.grep("files in my temp fail queue"), timeout,
                    what=f"Haraka on port {self.port} loaded its queue", interval=0.05)  # fmt: skip

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait()

    def grep(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]


# -- an SMTP client ----------------------------------------------------------------------------


class SmtpClient:
    """A plain SMTP client: each call sends one command and answers the reply's code."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = 0
        self.last = ""

    @classmethod
    async def connect(cls, port: int) -> SmtpClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.greeting = await client.reply()
        return client

    async def reply(self) -> int:
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 30)).decode(errors="replace")
            if not line:
                raise ConnectionError("connection closed")
            self.last = line.rstrip()
            if line[3:4] != "-":
                return int(line[:3])

    async def command(self, text: str) -> int:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def message(self, rcpts: list[str], sender: str = "s@source.test") -> tuple[int, str]:
        """One message; returns the first code that is not a success and its text, or the
        final 250 and its text."""
        for cmd in (f"MAIL FROM:<{sender}>", *(f"RCPT TO:<{r}>" for r in rcpts)):
            code = await self.command(cmd)
            if code != 250:
                return code, self.last
        if (code := await self.command("DATA")) != 354:
            return code, self.last
        code = await self.command("Subject: test\r\n\r\nhello\r\n.")
        return code, self.last

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await self.writer.drain()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def send_mail(port: int, rcpts: list[str], count: int = 1) -> list[int]:
    """``count`` messages to ``rcpts`` in one session; the final code of each."""
    client = await SmtpClient.connect(port)
    try:
        assert client.greeting == 220, f"greeting {client.greeting} {client.last}"
        assert await client.command("EHLO client.test") == 250
        return [(await client.message(rcpts))[0] for _ in range(count)]
    finally:
        await client.close()


__all__ = [
    "HOW_TO_INSTALL",
    "PLUGIN_DIR",
    "Haraka",
    "Sink",
    "SmtpClient",
    "densest",
    "node_modules",
    "send_mail",
    "skip_reason",
]
