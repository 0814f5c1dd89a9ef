"""A policy client that talks as Postfix's smtpd does (for the tests and the benchmark).

One ``Smtpd`` is one smtpd process: one connection to the policy service, reused for
every SMTP session it serves; each request is every attribute smtpd sends, in its
order, ended by an empty line, and smtpd waits for ``action=...`` and an empty line
before it sends the next. ``instance`` is the same for every request of one mail
transaction and changes with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.agents import Farm
from tests.redis_servers import free_port

_pids = itertools.count(os.getpid() % 40000 + 1000)


def request(
    state: str,
    client: str,
    instance: str,
    *,
    recipient: str = "",
    count: int = 0,
    sender: str = "alice@example.net",
    login: str = "",
    size: int | None = None,
) -> bytes:
    """The bytes smtpd sends for one policy request (``login``: the SASL username)."""
    if size is None:
        size = 1234 if state == "END-OF-MESSAGE" else 0
    attrs = [
        ("request", "smtpd_access_policy"),
        ("protocol_state", state),
        ("protocol_name", "ESMTP"),
        ("helo_name", "mail.example.net"),
        ("queue_id", "4ABC12D3E" if state in ("DATA", "END-OF-MESSAGE") else ""),
        ("sender", sender),
        ("recipient", recipient),
        ("recipient_count", str(count)),
        ("client_address", client),
        ("client_name", "unknown"),
        ("reverse_client_name", "unknown"),
        ("instance", instance),
        ("sasl_method", "PLAIN" if login else ""),
        ("sasl_username", login),
        ("sasl_sender", ""),
        ("size", str(size)),
        ("ccert_subject", ""),
        ("ccert_issuer", ""),
        ("ccert_fingerprint", ""),
        ("ccert_pubkey_fingerprint", ""),
        ("encryption_protocol", "TLSv1.3"),
        ("encryption_cipher", "TLS_AES_256_GCM_SHA384"),
        ("encryption_keysize", "256"),
        ("etrn_domain", ""),
        ("stress", ""),
        ("server_address", "192.0.2.25"),
        ("server_port", "25"),
        ("compatibility_level", "3.6"),
        ("mail_version", "3.7.11"),
        ("client_port", "50123"),
    ]
    return "".join(f"{k}={v}\n" for k, v in attrs).encode() + b"\n"


@dataclass
class Smtpd:
    """One smtpd process's connection to the policy service."""

    port: int
    host: str = "127.0.0.1"
    pid: int = field(default_factory=lambda: next(_pids))
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Smtpd:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._writer = None

    def new_instance(self) -> str:
        """The ``instance`` of the next mail transaction (as smtpd makes it)."""
        now = time.time()
        return f"{self.pid:x}.{int(now):x}.{int(now % 1 * 1e6):x}.{next(self._seq):x}"

    async def ask(self, state: str, client: str, instance: str, **kw: str | int) -> str:
        """Send one request; the action of the reply (what follows ``action=``)."""
        assert self._reader is not None and self._writer is not None
        rcpt, count = str(kw.get("recipient", "bob@example.org")), int(kw.get("count", 0))
        self._writer.write(request(state, client, instance, recipient=rcpt, count=count))
        await self._writer.drain()
        line = await self._reader.readline()
        blank = await self._reader.readline()
        if not line:
            raise ConnectionError("the policy service closed the connection")
        assert blank == b"\n", f"reply not ended by an empty line: {line!r} {blank!r}"
        text = line.decode().rstrip("\n")
        assert text.startswith("action="), text
        return text.removeprefix("action=")

    async def transaction(self, client: str, recipients: int = 2) -> list[str]:
        """One whole mail transaction as smtpd asks about it: RCPT per recipient, DATA,
        END-OF-MESSAGE (policy in smtpd_recipient, data and end_of_data restrictions)."""
        instance = self.new_instance()
        answers = []
        for i in range(recipients):
            answers.append(
                await self.ask("RCPT", client, instance, recipient=f"r{i}@example.org", count=i)
            )
        if answers[0] == "DUNNO":
            answers.append(await self.ask("DATA", client, instance, count=recipients))
            answers.append(await self.ask("END-OF-MESSAGE", client, instance, count=recipients))
        return answers

    async def send_raw(self, data: bytes, wait: float = 2.0) -> tuple[bytes, bool]:
        """Write bytes as they are; what comes back within ``wait`` seconds, and whether
        the service closed the connection."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(data)
        await self._writer.drain()
        out, closed = b"", False
        try:
            async with asyncio.timeout(wait):
                while chunk := await self._reader.read(4096):
                    out += chunk
                closed = True
        except TimeoutError:
            pass
        except (ConnectionError, OSError):
            closed = True
        return out, closed


@contextlib.asynccontextmanager
async def policy_agent(workdir: Path, client_rates: str) -> AsyncIterator[tuple[Farm, int]]:
    """One real ``mcluster agent --policy`` process (node ``n1``) with these rates; the
    farm and the policy port."""
    farm = Farm(workdir, extra=f"Policy {{ client_rates = ({client_rates}) }}")
    port = free_port()
    try:
        await farm.start("n1", args=("--policy", f"127.0.0.1:{port}"))
        yield farm, port
    finally:
        await farm.close()
