"""The Postfix policy service: config, a scripted smtpd sequence, leases, garbage, Redis away."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcluster import Node, parse_config
from mcluster.config import ConfigError
from mcluster.faces.policy import PolicyService
from mcluster.objects.policy import ClientRate, policy_config
from mcluster.objects.rates import Rate
from tests.helpers import until
from tests.postfix import Smtpd, policy_agent
from tests.redis_servers import RedisServer, start_redis

CONF = """
cluster {
  Replicate "inbound_cidr" {}
}
Policy {
  client_rates = ("32,3/60" "24,5/60")
  client_rates_ipv6 = ("64,2/60")
  %s
}
"""
DUNNO4 = ["DUNNO"] * 4


def test_policy_scope_parses() -> None:
    config = policy_config(parse_config(CONF % "on_error = DEFER_IF_PERMIT deadline_ms = 40"))
    assert config.client_rates == (
        ClientRate(32, Rate(3, 60)),
        ClientRate(24, Rate(5, 60)),
        ClientRate(64, Rate(2, 60), ipv6=True),
    )
    assert (config.on_error, config.deadline_ms, config.transaction_timeout) == (
        "DEFER_IF_PERMIT", 40, 600.0,
    )  # fmt: skip
    assert policy_config(parse_config("cluster {}")).client_rates == ()


def test_bad_policy_scope_lists_every_problem_with_its_place() -> None:
    text = (
        "Policy {\n"
        '  client_rates = ("33,3/60" "24,abc" "24,0")\n'
        "  on_error = REJECT\n"
        "  deadline_ms = 0\n"
        "  transaction_timeout = -1\n"
        "  colour = blue\n"
        "}\n"
    )
    with pytest.raises(ConfigError) as caught:
        policy_config(parse_config(text, "p.conf"))
    lines = str(caught.value).splitlines()
    assert lines[0].startswith('p.conf:2:19: client_rates entry "33,3/60": expected "PREFIX,RATE"')
    assert lines[1].startswith('p.conf:2:29: client_rates entry "24,abc": bad rate')
    assert lines[2].endswith('entry "24,0": a rate of 0 (unlimited) limits nothing')
    assert lines[3] == 'p.conf:3:3: on_error must be DUNNO or DEFER_IF_PERMIT, got "REJECT"'
    assert lines[4] == 'p.conf:4:3: deadline_ms must be an integer 1..60000, got "0"'
    assert lines[5] == 'p.conf:5:3: transaction_timeout must be seconds > 0, got "-1"'
    assert lines[6].startswith("p.conf:6:3: unknown option 'colour' in Policy")


def test_config_check_reports_policy_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text('cluster {\n  Replicate "inbound_cidr" {}\n}\nPolicy { on_error = maybe }\n')
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "config", "check", str(bad)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"{bad}:4:10: on_error must be DUNNO or DEFER_IF_PERMIT")


def test_config_check_summarises_the_policy_scope(tmp_path: Path) -> None:
    good = tmp_path / "good.conf"
    good.write_text(CONF % "on_error = DEFER_IF_PERMIT")
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "config", "check", str(good)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "Policy: client_rates 32,3/60 24,5/60 64,2/60 (IPv6); on_error DEFER_IF_PERMIT; "
        "deadline_ms 100; transaction_timeout 600 s"
    ) in result.stdout


# -- in-process agents ---------------------------------------------------------------------


@dataclass
class Agent:
    node: Node
    service: PolicyService

    async def count(self, key: str) -> int:
        await self.node.flush()
        return await self.node.count("inbound_cidr", key)


@contextlib.asynccontextmanager
async def agent(url: str, namespace: str, name: str, extra: str = "") -> AsyncIterator[Agent]:
    config = parse_config(CONF % extra)
    async with Node(config, name, url, namespace=namespace) as node:
        service = PolicyService(node, policy_config(config))
        await service.start("127.0.0.1", 0)
        try:
            yield Agent(node, service)
        finally:
            await service.stop()


@pytest.fixture
async def pair(redis_server: RedisServer, namespace: str) -> AsyncIterator[tuple[Agent, Agent]]:
    async with (
        agent(redis_server.url, namespace, "relay-1") as a,
        agent(redis_server.url, namespace, "relay-2") as b,
    ):
        yield a, b


async def test_scripted_sequence_admits_defers_and_releases(pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    async with Smtpd(a.service.port) as s1, Smtpd(b.service.port) as s2:
        # One transaction, four recipients, DATA, END-OF-MESSAGE: counted once, leased
        # in inbound_cidr while it runs, released at END-OF-MESSAGE.
        instance = s1.new_instance()
        assert await s1.ask("RCPT", "10.1.0.1", instance) == "DUNNO"
        assert await a.count("10.1.0.1") == 1
        for i in range(1, 4):
            assert await s1.ask("RCPT", "10.1.0.1", instance, count=i) == "DUNNO"
        assert await s1.ask("DATA", "10.1.0.1", instance, count=4) == "DUNNO"
        assert await a.count("10.1.0.1") == 1
        assert await s1.ask("END-OF-MESSAGE", "10.1.0.1", instance, count=4) == "DUNNO"
        assert await a.count("10.1.0.1") == 0
        # The /32 allows 3 per 60 s across the cluster: two more, on either node.
        assert await s2.transaction("10.1.0.1") == DUNNO4
        assert await s1.transaction("10.1.0.1", recipients=3) == ["DUNNO"] * 5
        deferred = await s2.transaction("10.1.0.1", recipients=3)
        assert len(set(deferred)) == 1 and len(deferred) == 3
        assert deferred[0].startswith(
            "DEFER_IF_PERMIT 4.7.1 too many mail transactions from 10.1.0.1/32 "
            "(cluster limit 3 per 60 s); try again in "
        )
        wait = int(deferred[0].rsplit("try again in ", 1)[1].removesuffix(" s"))
        assert 1 <= wait <= 60, deferred[0]  # never longer than the window
        # Refused all-or-nothing: the /24 holds 3 of its 5, so two more addresses pass.
        assert await s1.transaction("10.1.0.2") == DUNNO4
        assert await s2.transaction("10.1.0.3") == DUNNO4
        blocked = await s1.transaction("10.1.0.4", recipients=1)
        assert blocked[0].startswith("DEFER_IF_PERMIT 4.7.1 too many mail transactions from "
                                     "10.1.0.0/24 (cluster limit 5 per 60 s)")  # fmt: skip
        assert await s2.transaction("10.2.0.1") == DUNNO4  # another /24
        assert await s1.transaction("2001:db8::1") == DUNNO4
        assert await s2.transaction("2001:db8::2") == DUNNO4
        assert (await s1.transaction("2001:db8::3"))[0].startswith(
            "DEFER_IF_PERMIT 4.7.1 too many mail transactions from 2001:db8::/64"
        )
    assert await a.count("0.0.0.0/0") == 0 and await b.count("::/0") == 0
    total = a.service.stats.actions + b.service.stats.actions
    assert total == {"DUNNO": 6 + 5 + 6 * 4, "DEFER_IF_PERMIT": 3 + 1 + 2}
    assert a.service.stats.transactions + b.service.stats.transactions == 11
    assert not a.service.transactions and not b.service.transactions


async def test_leases_end_when_smtpd_moves_on_closes_or_times_out(
    pair: tuple[Agent, Agent],
) -> None:
    a, _ = pair
    async with Smtpd(a.service.port) as s:
        assert await s.ask("RCPT", "10.3.0.1", s.new_instance()) == "DUNNO"
        assert await a.count("10.3.0.1") == 1
        # RSET or QUIT: no END-OF-MESSAGE; the next transaction of this smtpd ends it.
        assert await s.ask("RCPT", "10.3.0.2", s.new_instance()) == "DUNNO"
        assert (await a.count("10.3.0.1"), await a.count("10.3.0.2")) == (0, 1)
    await until(lambda: _zero(a, "10.3.0.0/24"), 5, "the closed connection's lease released")
    async with Smtpd(a.service.port) as s:
        assert await s.ask("MAIL", "10.3.0.3", s.new_instance()) == "DUNNO"
        assert await a.count("10.3.0.3") == 1
        assert a.service.sweep(time.monotonic() + 599) == 0
        assert a.service.sweep(time.monotonic() + 601) == 1
        assert await a.count("10.3.0.3") == 0
    assert a.service.stats.released == {"next": 1, "closed": 1, "timeout": 1}


async def _zero(a: Agent, key: str) -> bool:
    return await a.count(key) == 0


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"hello world\n\n", "a line that is not name=value: 'hello world'"),
        (b"request=smtpd_access_policy\nclient_address=" + b"1" * 5000 + b"\n\n",
         "a line longer than 4096 bytes"),
        (b"request=smtpd_access_policy\x00\x01\xff\n\n", "binary data (control characters)"),
        (b"request=\xff\xfe\xfd\n\n", "binary data (not UTF-8 text)"),
        (b"request=smtpd_access_policy\n" + b"x" * 70000, "a line longer than 4096 bytes"),
        (b"request=other\n\n", "request='other', expected smtpd_access_policy"),
    ],
)  # fmt: skip
async def test_garbage_closes_that_connection_only(
    pair: tuple[Agent, Agent], garbage: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair
    caplog.set_level(logging.WARNING, "mcluster.policy")
    async with Smtpd(a.service.port) as good, Smtpd(a.service.port) as bad:
        assert await bad.ask("RCPT", "10.4.0.9", bad.new_instance()) == "DUNNO"
        out, closed = await bad.send_raw(garbage)
        assert (out, closed) == (b"", True)
        assert await good.transaction("10.4.0.1") == DUNNO4
    assert a.service.stats.garbage == 1
    assert f"sent {reason}; connection closed" in caplog.text
    assert await a.count("10.4.0.9") == 0  # its lease went with the connection


@pytest.mark.parametrize(
    ("on_error", "want"),
    [("DUNNO", "DUNNO"),
     ("DEFER_IF_PERMIT", "DEFER_IF_PERMIT 4.7.1 the policy service is unavailable; try again "
                         "later")],
)  # fmt: skip
async def test_redis_away_answers_the_configured_policy_within_the_deadline(
    namespace: str, on_error: str, want: str
) -> None:
    server = start_redis()
    try:
        async with (
            agent(server.url, namespace, "relay-1", f"on_error = {on_error} deadline_ms = 80") as a,
            Smtpd(a.service.port) as s,
        ):
            assert await s.transaction("10.6.0.1") == DUNNO4
            server.proc.send_signal(signal.SIGSTOP)  # Redis hangs: no answer ever comes
            try:
                started = time.monotonic()
                assert await s.ask("RCPT", "10.6.0.1", s.new_instance()) == want
                assert time.monotonic() - started < 0.08 + 0.2  # the deadline, plus scheduling
            finally:
                server.proc.send_signal(signal.SIGCONT)
            server.proc.kill()  # Redis gone: connections refused
            server.proc.wait()
            started = time.monotonic()
            assert await s.ask("RCPT", "10.6.0.2", s.new_instance()) == want
            assert time.monotonic() - started < 0.08 + 0.2  # the deadline, plus scheduling
            assert a.service.stats.degraded == 2
            await a.node.stop(timeout=0.5)
    finally:
        server.stop()


async def test_agent_process_serves_policy_beside_http(tmp_path: Path) -> None:
    async with policy_agent(tmp_path, '"32,2/60"') as (farm, port):
        async with Smtpd(port) as s:
            assert await s.transaction("10.7.0.1") == DUNNO4
            assert await s.transaction("10.7.0.1") == DUNNO4
            assert (await s.transaction("10.7.0.1"))[0].startswith("DEFER_IF_PERMIT 4.7.1")
        async with Smtpd(port) as bad:
            assert (await bad.send_raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n"))[1]
        assert await farm.health("n1")
        async with Smtpd(port) as s:  # still serving, and still counting
            assert (await s.transaction("10.7.0.1"))[0].startswith("DEFER_IF_PERMIT 4.7.1")
            assert await s.transaction("10.7.0.2") == DUNNO4
        assert farm.agents["n1"].log_lines("sent binary data (control characters)")


async def test_connect_reception_and_rejection_go_to_the_inbound_audit(
    redis_server: RedisServer, namespace: str
) -> None:
    audited = (
        'cluster {\n  Replicate "inbound_cidr" {}\n'
        '  Replicate "metrics" { parameters = "connect;reception;rejection" }\n}\n'
        'inbound_audit { monitors = ("300,2") }\n'
        'Policy { client_rates = ("32,1/60") }\n'
    )
    config = parse_config(audited)
    async with Node(config, "relay-1", redis_server.url, namespace=namespace) as node:
        service = PolicyService(node, policy_config(config))
        await service.start("127.0.0.1", 0)
        try:
            async with Smtpd(service.port) as s:
                # smtpd asks at CONNECT and in the first transaction with one instance.
                instance = s.new_instance()
                for state in ("CONNECT", "RCPT", "DATA", "END-OF-MESSAGE"):
                    assert await s.ask(state, "10.5.0.1", instance) == "DUNNO"
                assert (await s.transaction("10.5.0.1", recipients=3))[0].startswith("DEFER")
        finally:
            await service.stop()
        await node.flush()
        shown = await node.audit.show_ip("10.5.0.0/24")
    monitor = shown["monitors"][0]
    # One connect, one reception (END-OF-MESSAGE), one rejection per deferred transaction.
    assert [sum(monitor[k]) for k in ("connections", "receptions", "rejections")] == [1, 1, 1]
