"""Quotas of the policy service: the Quota scopes, key derivation, and decisions over the
policy protocol against a real redis-server with two agents (counts exact across both)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from rich.console import Console

from mcluster import Node, parse_config
from mcluster.config import ConfigError, load_config
from mcluster.console.commands import ConsoleContext, UsageError, run_command
from mcluster.console.dashboard import render_plain
from mcluster.console.snapshot import read_snapshot
from mcluster.errors import NotFound
from mcluster.faces.http.app import make_app
from mcluster.faces.policy import PolicyService
from mcluster.objects import throttle
from mcluster.objects.policy import FAMILY, policy_config
from mcluster.objects.rates import Rate
from mcluster.objects.throttle import Decision, Request, ThrottleDef
from mcluster.quotas import usage
from mcluster.quotas.config import parse_limit
from mcluster.quotas.engine import QuotaEngine, quota_answer
from mcluster.quotas.keys import parse_key, split_window, window_name
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys, ObjectKeys
from mcluster.store.scripts import Scripts
from tests.helpers import until
from tests.postfix import Smtpd
from tests.postfix import request as smtpd_request
from tests.redis_cluster import RedisCluster
from tests.redis_servers import RedisServer

# The interface contract, verbatim.
CONTRACT = """
Policy {
  client_rates = ("32,30/60")                 # unchanged
  Quota "per_user"  { key = "sasl_username"  limit = "3/60" }
  Quota "rcpt"      { key = "sender"  limit = "5/60"  count = "recipients" }
  Quota "size"      { key = "sasl_username"  limit = "10M/86400"  count = "bytes" }
  Quota "trial"     { key = "sender_domain"  limit = "1/60"  action = "WARN" }
}
"""
MB = 1024 * 1024


# -- config --------------------------------------------------------------------------------


def test_contract_config_parses() -> None:
    config = policy_config(parse_config(CONTRACT))
    per_user, rcpt, size, trial = config.quotas
    assert (per_user.name, str(per_user.key), per_user.limit, per_user.count) == (
        "per_user", "sasl_username", Rate(3, 60), "messages",
    )  # fmt: skip
    assert (rcpt.count, size.count, size.limit) == ("recipients", "bytes", Rate(10 * MB, 86400))
    assert (trial.action, per_user.action) == ("WARN", "DEFER_IF_PERMIT")
    assert str(trial.key) == "sender_domain" and not trial.empty_counts


def test_limits_keys_exempt_and_overrides() -> None:
    assert parse_limit("10M/86400", "bytes") == Rate(10 * MB, 86400)
    assert parse_limit("512k/60", "bytes") == Rate(512 * 1024, 60)
    assert parse_limit("2G/3600", "bytes") == Rate(2 * 1024 * MB, 3600)
    with pytest.raises(ValueError, match='K, M and G are for count = "bytes" only'):
        parse_limit("10M/60", "messages")
    attrs = {
        "sender": "Alice+Tag@Example.NET", "recipient": "bob@example.org",
        "client_address": "10.1.2.3", "sasl_username": "", "helo_name": "mx.example.net",
    }  # fmt: skip
    assert parse_key("sender_domain").value(attrs) == "example.net"
    assert parse_key("recipient_domain").value(attrs) == "example.org"
    assert parse_key("sender").value(attrs) == "alice+tag@example.net"
    assert parse_key("sasl_username").value(attrs) == ""
    assert parse_key("client_address/24").value(attrs) == "10.1.2.0/24"
    assert parse_key("client_address").value(attrs) == "10.1.2.3"
    assert parse_key("client_address_ipv6/64").value(attrs) is None  # an IPv4 client
    v6 = {"client_address": "2001:db8:1:2::7"}
    assert parse_key("client_address_ipv6/48").value(v6) == "2001:db8:1::/48"
    assert parse_key("client_address/24").value(v6) is None
    assert parse_key("client_address/24").value({"client_address": "::ffff:10.9.8.7"}) == (
        "10.9.8.0/24"
    )
    # Window names are valid throttle names and say which key value they count.
    name = window_name("rcpt", "alice+tag@example.net")
    assert name == "q.rcpt:alice+2Btag@example.net"
    assert split_window(name) == ("rcpt", "alice+tag@example.net")
    assert split_window(window_name("x", "")) == ("x", "")
    assert split_window(window_name("x", "é: ü")) == ("x", "é: ü")
    long = window_name("x", "a" * 300)
    assert len(long) <= 200 and split_window(long) == ("x", f"(sha256 {long[6:]})")
    config = policy_config(
        parse_config("""
Policy {
  Quota "s" { key = "sender" limit = "2/60"
              exempt = ("postmaster@example.com" "trusted.example" "@other.example")
              overrides = ("Bulk@Example.com=100/3600") }
  Quota "c" { key = "client_address/24" limit = "5/60" exempt = ("10.0.0.0/8" "192.0.2.7") }
}
""")
    )
    s, c = config.quotas
    assert "postmaster@example.com" in s.exempt and "x@trusted.example" in s.exempt
    assert "x@other.example" in s.exempt and "x@example.com" not in s.exempt
    assert s.rate_for("bulk@example.com") == Rate(100, 3600) and s.rate_for("a@b") == Rate(2, 60)
    assert config.definition(window_name("s", "bulk@example.com")).rate == "100/3600"  # type: ignore[union-attr]
    assert config.definition(window_name("s", "a@b")).rate == "2/60"  # type: ignore[union-attr]
    assert config.definition("q.nosuch:a") is None
    assert "10.1.2.3" in c.exempt and "192.0.2.7" in c.exempt and "192.0.2.8" not in c.exempt


def test_limits_follow_every_value_they_read() -> None:
    """QuotaEngine.limits remembers its answers by what it reads of a request: any of
    those values changed, the windows and costs change with it."""
    config = policy_config(
        parse_config("""
Policy {
  Quota "u" { key = "sasl_username" limit = "3/60" exempt = ("boss") }
  Quota "b" { key = "sasl_username" limit = "10M/86400" count = "bytes" }
  Quota "r" { key = "recipient_domain" limit = "5/60" count = "recipients" }
  Quota "c" { key = "client_address/24" limit = "5/60" exempt = ("192.0.2.0/24") }
}
""")
    )
    engine = QuotaEngine(config.quotas)
    base = {"sasl_username": "Alice", "recipient": "x@one.example", "client_address": "10.1.2.3"}

    def asked(state: str = "RCPT", first: bool = True, **changed: str) -> list[tuple[str, int]]:
        attrs = base | changed
        return [(limit.window, limit.cost) for limit in engine.limits(attrs, state, first=first)]

    alice = asked()
    assert alice == [
        ("q.u:alice", 1), ("q.c:10.1.2.0/24", 1), ("q.b:alice", -1), ("q.r:one.example", 1),
    ]  # fmt: skip
    assert asked() == alice  # remembered
    assert ("q.b:alice", -2048) in asked(size="2048")
    assert ("q.r:two.example", 1) in asked(recipient="y@two.example")
    assert ("q.c:10.1.2.0/24", 1) not in asked(client_address="192.0.2.9")  # exempt block
    assert [w for w, _ in asked(sasl_username="boss")] == [
        "q.c:10.1.2.0/24", "q.b:boss", "q.r:one.example",
    ]  # fmt: skip
    assert asked(first=False) == [("q.r:one.example", 1)]
    assert asked("END-OF-MESSAGE", first=False, size="4096") == [("q.b:alice", 4096)]
    engine.adopt(config.quotas[:1])  # a reload forgets what was remembered
    assert asked() == [("q.u:alice", 1)]


def test_bad_quotas_list_every_problem_with_its_place() -> None:
    text = (
        "Policy {\n"
        '  Quota "a b" { key = "sasl_username" limit = "3/60" }\n'
        '  Quota "q1" { key = "no such key" limit = "0/60" count = "bytes" }\n'
        '  Quota "q2" { key = "sender" limit = "10M/60" action = "BOUNCE" colour = red }\n'
        '  Quota "q3" { limit = "3/60" empty = maybe overrides = ("x" "a@b=1/0") }\n'
        '  Quota "q4" { key = "client_address/33" limit = "1/60" }\n'
        '  Quota "q5" { key = "client_address/24" limit = "1/60" exempt = ("example.com") }\n'
        '  Quota "Q1" { key = "sender" limit = "1/60" }\n'
        "}\n"
    )
    with pytest.raises(ConfigError) as caught:
        policy_config(parse_config(text, "p.conf"))
    assert str(caught.value).splitlines() == [
        "p.conf:2:3: Quota name 'a b': expected 1-64 letters, digits, '_', '.' or '-', e.g. "
        'Quota "per_user" { ... }',
        "p.conf:3:16: bad key 'no such key': expected a policy attribute (sasl_username, "
        "sender, recipient, client_address, client_name, helo_name, ...), sender_domain, "
        "recipient_domain, client_address/N or client_address_ipv6/N",
        "p.conf:3:36: bad limit '0/60': a limit of 0 (unlimited) limits nothing",
        "p.conf:4:31: bad limit '10M/60': K, M and G are for count = \"bytes\" only",
        "p.conf:4:48: action must be one of DEFER_IF_PERMIT, REJECT, DEFER, HOLD, DISCARD, "
        "WARN, got 'BOUNCE'",
        "p.conf:4:66: unknown option 'colour' in Quota \"q2\": expected key, limit, count, "
        "action, empty, exempt, overrides",
        'p.conf:5:3: Quota "q3" needs a key, e.g. key = "sasl_username"',
        'p.conf:5:31: empty must be "count" or "skip", got \'maybe\'',
        "p.conf:6:16: bad key 'client_address/33': the prefix of client_address must be 0..32",
        "p.conf:7:67: exempt entry 'example.com': client_address/24 takes addresses or CIDR blocks",
        'p.conf:8:3: duplicate Quota "Q1": first defined at p.conf:3:3',
    ]


def test_config_check_describes_quotas() -> None:
    described = policy_config(parse_config(CONTRACT)).describe()
    assert 'Quota "size": sasl_username 10485760 bytes per 86400 s' in described
    assert 'Quota "trial": sender_domain 1 message per 60 s action WARN' in described


# -- over the protocol, two agents -----------------------------------------------------


def attrs_of(state: str, client: str, instance: str, **extra: str) -> bytes:
    """Every attribute smtpd sends (tests/postfix.py), some replaced."""
    lines = smtpd_request(state, client, instance).decode().splitlines()
    attrs = dict(line.split("=", 1) for line in lines if line)
    attrs.update(extra)
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


class Client(Smtpd):
    """An smtpd connection that sets any attribute of a request."""

    async def __aenter__(self) -> Client:
        await super().__aenter__()
        return self

    async def send(self, state: str, instance: str, client: str = "10.20.0.1", **kw: str) -> str:
        assert self._reader is not None and self._writer is not None
        self._writer.write(attrs_of(state, client, instance, **kw))
        await self._writer.drain()
        line = await self._reader.readline()
        assert await self._reader.readline() == b"\n"
        return line.decode().rstrip("\n").removeprefix("action=")

    async def mail(self, **kw: str | int) -> list[str]:
        """One transaction: MAIL, RCPT per recipient, DATA, END-OF-MESSAGE (the policy in
        smtpd_sender, recipient, data and end_of_data restrictions); every answer, and
        it stops at the first refused transaction-wide."""
        rcpts, size = int(kw.pop("rcpts", 1)), int(kw.pop("size", 1000))
        mail_size = int(kw.pop("mail_size", 0))
        attrs = {k: str(v) for k, v in kw.items()}
        instance = self.new_instance()
        answers = [await self.send("MAIL", instance, size=str(mail_size), **attrs)]
        for i in range(rcpts):
            rcpt = {"recipient": f"r{i}@example.org", "size": str(mail_size), **attrs}
            answers.append(await self.send("RCPT", instance, **rcpt))
        if not answers[0].startswith(("DUNNO", "WARN")):
            return answers
        answers.append(await self.send("DATA", instance, size=str(mail_size), **attrs))
        answers.append(await self.send("END-OF-MESSAGE", instance, size=str(size), **attrs))
        return answers


@dataclass
class Agents:
    a: PolicyService
    b: PolicyService


def patient(conf: str) -> str:
    """``conf`` with a deadline no loaded test machine misses: an answer degraded to
    on_error (DUNNO) would fail a test for the machine's load, not for the code."""
    return conf.replace("Policy {", "Policy {\n  deadline_ms = 5000", 1)


@contextlib.asynccontextmanager
async def two_agents(url: str, namespace: str, conf: str) -> AsyncIterator[Agents]:
    config = parse_config(patient(conf))
    async with (
        Node(config, "relay-1", url, namespace=namespace) as n1,
        Node(config, "relay-2", url, namespace=namespace) as n2,
    ):
        a, b = PolicyService(n1, policy_config(config)), PolicyService(n2, policy_config(config))
        await a.start("127.0.0.1", 0)
        await b.start("127.0.0.1", 0)
        try:
            yield Agents(a, b)
        finally:
            await a.stop()
            await b.stop()


@pytest.fixture
async def agents(redis_server: RedisServer, namespace: str) -> AsyncIterator[Agents]:
    async with two_agents(redis_server.url, namespace, CONTRACT) as pair:
        yield pair


def deferred(answer: str, quota: str) -> bool:
    return answer.startswith(f'DEFER_IF_PERMIT 4.7.1 quota "{quota}" exceeded for ')


async def test_messages_per_user_exact_across_agents(agents: Agents) -> None:
    async with Client(agents.a.port) as c1, Client(agents.b.port) as c2:
        got = []
        for i in range(6):  # alternate agents; each transaction from its own domain
            c = (c1, c2)[i % 2]
            kw = {"sasl_username": "Alice", "sender": f"alice@d{i}.example"}
            got.append(await c.mail(rcpts=3, **kw))
        assert got[:3] == [["DUNNO"] * 6] * 3  # counted once per transaction, not per RCPT
        for refused in got[3:]:
            assert len(refused) == 4 and len(set(refused)) == 1  # every request of it
            assert deferred(refused[0], "per_user")
        text = got[3][0]
        assert "for sasl_username alice (limit 3 messages per 60 s); try again in " in text
        assert 1 <= int(text.rsplit(" ", 2)[1]) <= 60  # never more than the window
        # Another login, and no login at all (empty keys are not counted): unaffected.
        for i in range(4):
            assert await c2.mail(sasl_username="", sender=f"x@n{i}.example") == ["DUNNO"] * 4
        assert await c1.mail(sasl_username="bob", sender="bob@bob.example") == ["DUNNO"] * 4
    counted = agents.a.quotas.stats.refused + agents.b.quotas.stats.refused
    assert counted[("per_user", "DEFER_IF_PERMIT")] == 3


async def test_recipients_refused_one_by_one_and_earlier_stand(agents: Agents) -> None:
    sender = {"sender": "bulk@rcpt.example", "sasl_username": ""}
    async with Client(agents.a.port) as c1, Client(agents.b.port) as c2:
        i1 = c1.new_instance()
        assert await c1.send("MAIL", i1, **sender) == "DUNNO"
        answers = [
            await c1.send("RCPT", i1, recipient=f"r{i}@x.example", **sender) for i in (1, 2, 3)
        ]
        assert answers == ["DUNNO"] * 3
        i2 = c2.new_instance()  # the other agent: 2 more fit, the 3rd is refused
        answers = [
            await c2.send("RCPT", i2, recipient=f"s{i}@x.example", **sender) for i in (1, 2, 3)
        ]
        # (the second transaction of rcpt.example: the WARN quota says so, and lets it be)
        assert answers[0].startswith('WARN quota "trial" exceeded for sender_domain rcpt.')
        assert answers[1] == "DUNNO" and deferred(answers[2], "rcpt")
        assert "for sender bulk@rcpt.example (limit 5 recipients per 60 s)" in answers[2]
        # The transaction stands: its accepted recipients get their mail.
        assert await c2.send("DATA", i2, **sender) == "DUNNO"
        assert await c2.send("END-OF-MESSAGE", i2, size="100", **sender) == "DUNNO"
        assert deferred(await c1.send("RCPT", i1, recipient="r4@x.example", **sender), "rcpt")
        assert await c1.send("END-OF-MESSAGE", i1, size="100", **sender) == "DUNNO"


async def test_bytes_refused_at_end_of_message_then_at_first_request(
    redis_server: RedisServer, namespace: str
) -> None:
    user = {"sasl_username": "sizer"}
    only_size = (
        'Policy { Quota "size" { key = "sasl_username" limit = "10M/86400" count = bytes } }'
    )
    async with (
        two_agents(redis_server.url, namespace, only_size) as agents,
        Client(agents.a.port) as c1,
        Client(agents.b.port) as c2,
    ):
        assert await c1.mail(size=6 * MB, sender="s@b1.example", **user) == ["DUNNO"] * 4
        over = await c2.mail(size=5 * MB, sender="s@b2.example", **user)
        assert over[:3] == ["DUNNO"] * 3 and deferred(over[3], "size")
        assert "(limit 10485760 bytes per 86400 s); try again in " in over[3]
        # MAIL FROM SIZE= over what is left: refused at once; without it, admitted.
        sized = await c1.mail(mail_size=5 * MB, size=5 * MB, sender="s@b3.example", **user)
        assert deferred(sized[0], "size") and len(sized) == 2
        assert await c2.mail(size=4 * MB, sender="s@b4.example", **user) == ["DUNNO"] * 4
        # Exactly spent: the next transaction is refused at its first request.
        spent = await c1.mail(size=10, sender="s@b5.example", **user)
        assert deferred(spent[0], "size") and len(set(spent)) == 1
        # A message bigger than the whole limit can never pass: no retry time promised.
        absurd = await c1.mail(size=10**30, sender="s@b7.example", sasl_username="fresh")
        assert deferred(absurd[3], "size") and "over the limit" in absurd[3]  # no error
        assert agents.a.stats.errors == 0
        big = await c2.mail(size=11 * MB, sender="s@b6.example", sasl_username="fresh")
        assert big[3].endswith("(a 11534336-byte message is over the limit of 10485760 bytes "
                               "per 86400 s)")  # fmt: skip


async def test_warn_is_shadow_mode(agents: Agents) -> None:
    async with Client(agents.a.port) as c1, Client(agents.b.port) as c2:
        kw = {"sender": "x@trial.example", "sasl_username": ""}
        assert await c1.mail(**kw) == ["DUNNO"] * 4
        warned = await c2.mail(**kw)
        assert warned[0] == (
            'WARN quota "trial" exceeded for sender_domain trial.example (limit 1 message '
            f"per 60 s); try again in {warned[0].rsplit(' ', 2)[1]} s"
        )
        assert warned[1:] == ["DUNNO"] * 3  # the mail goes through
        assert agents.b.quotas.stats.warned["trial"] == 1
        assert agents.b.stats.actions["WARN"] == 1
    ctx = ConsoleContext(agents.b.node.client, agents.b.node.keys)
    await until(lambda: _would_refuse(ctx, 1), 10, "the would-have-refused count in Redis")
    async with TestClient(TestServer(make_app(agents.b.node, agents.b))) as api:
        scraped = await (await api.get("/metrics")).text()
    assert 'mcluster_policy_quota_would_refuse_total{quota="trial"} 1.0' in scraped
    assert 'mcluster_policy_requests_total{action="WARN"} 1.0' in scraped
    assert (
        'mcluster_policy_quota_refusals_total{action="DEFER_IF_PERMIT",quota="per_user"} 0.0'
        in (scraped)
    )


async def test_first_request_before_mail_waits_for_the_sender(agents: Agents) -> None:
    async with Client(agents.a.port) as c:
        for i in range(4):
            instance = c.new_instance()
            assert await c.send("CONNECT", instance, sasl_username="", sender="") == "DUNNO"
            kw = {"sasl_username": "early", "sender": f"e@e{i}.example"}
            first = await c.send("RCPT", instance, recipient="r1@x.example", **kw)
            second = await c.send("RCPT", instance, recipient="r2@x.example", **kw)
            if i < 3:  # counted at the first RCPT, once
                assert (first, second) == ("DUNNO", "DUNNO")
            else:
                assert deferred(first, "per_user") and second == first


# -- seeing quotas: console, HTTP --------------------------------------------------------


async def published(agents: Agents) -> None:
    """Wait until the agents' quotas are in Redis (published as they start)."""
    okeys = agents.a.node.keys.object(FAMILY)
    await until(
        lambda: _has_quotas(agents.a.node.client, okeys), 10, "the agents published the quotas"
    )


async def _has_quotas(client: Redis, okeys: ObjectKeys) -> bool:
    return bool(await usage.load(client, okeys))


async def test_console_policy_show_and_reset(agents: Agents, redis_server: RedisServer) -> None:
    node = agents.a.node
    async with Client(agents.a.port) as c1, Client(agents.b.port) as c2:
        for i in range(3):
            await (c1, c2)[i % 2].mail(sasl_username="alice", sender=f"a@s{i}.example")
        await c1.mail(sasl_username="bob", sender="b@bob.example")
        refused = await c2.mail(sasl_username="alice", sender="a@s9.example")
        assert deferred(refused[0], "per_user")
    await published(agents)
    ctx = ConsoleContext(node.client, node.keys)
    one = await run_command(ctx, "policy show per_user Alice")
    assert {k: one.data[k] for k in ("quota", "key", "used", "limit")} == {  # type: ignore[call-overload]
        "quota": "per_user", "key": "alice", "used": 3, "limit": 3,
    }  # fmt: skip
    assert 0 < one.data["retry_after_ms"] <= 60_000  # type: ignore[call-overload]
    mine = await run_command(ctx, "policy show per_user alice from relay-1")
    theirs = await run_command(ctx, "policy show per_user alice from relay-2")
    assert (mine.data["used"], theirs.data["used"]) == (2, 1)  # type: ignore[call-overload]
    listing = await run_command(ctx, "policy show")
    quotas = {q["name"]: q for q in listing.data["quotas"]}  # type: ignore[call-overload]
    assert list(quotas) == ["per_user", "rcpt", "size", "trial"]
    assert [(r["key"], r["used"]) for r in quotas["per_user"]["top"]] == [("alice", 3), ("bob", 1)]
    out = Console(file=io.StringIO(), width=100, color_system=None)
    out.print(listing.renderable)
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert 'Quota "per_user": sasl_username, 3/60 messages, DEFER_IF_PERMIT; refused' in text
    assert "│ alice │    3 │     3 │" in text and "│ bob   │    1 │     3 │   now │" in text
    await until(lambda: _refused(ctx), 10, "the refusal counted in Redis")
    # The contract: the command line prints an object with used, limit and retry_after_ms.
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "console", "--redis", redis_server.url,
         "--namespace", node.keys.namespace, "--json", "-c", "policy show per_user alice"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["used"], shown["limit"]) == (3, 3) and 0 < shown["retry_after_ms"] <= 60_000
    # Reset: alice may send again at once, on either agent.
    cleared = await run_command(ctx, "policy reset per_user alice")
    assert cleared.data["cleared"] == 3  # type: ignore[call-overload]  # window + 2 shares
    after = await run_command(ctx, "policy show per_user alice")
    assert (after.data["used"], after.data["retry_after_ms"]) == (0, 0)  # type: ignore[call-overload]
    async with Client(agents.b.port) as c2:
        assert await c2.mail(sasl_username="alice", sender="a@s10.example") == ["DUNNO"] * 4
    # Reading a key never used (a probe: nothing counted) leaves no key without an end.
    nobody = await run_command(ctx, "policy show per_user nobody")
    assert (nobody.data["used"], nobody.data["retry_after_ms"]) == (0, 0)  # type: ignore[call-overload]
    window = throttle.window_key(node.keys.object(FAMILY), window_name("per_user", "nobody"))
    assert await node.client.pttl(window) in (-2, *range(1, 66_001))
    with pytest.raises(NotFound, match="unknown quota 'nosuch'; quotas: per_user, rcpt"):
        await run_command(ctx, "policy show nosuch alice")
    with pytest.raises(NotFound, match="unknown node 'relay-9'; cluster members: relay-1, relay-2"):
        await run_command(ctx, "policy show from relay-9")
    with pytest.raises(UsageError, match="usage: policy reset QUOTA KEY"):
        await run_command(ctx, "policy reset per_user")


async def _refused(ctx: ConsoleContext) -> bool:
    listing = await run_command(ctx, "policy show per_user")
    return bool(listing.data["quotas"][0]["refused"] == 1)  # type: ignore[call-overload]


async def test_http_policy_routes_answer_as_the_console(agents: Agents) -> None:
    async with Client(agents.b.port) as c:
        for i in range(2):
            await c.mail(sasl_username="carol", sender=f"c@h{i}.example", client="10.30.0.1")
    await published(agents)
    async with TestClient(TestServer(make_app(agents.a.node, agents.a))) as api:
        one = await api.get("/v1/policy/per_user/Carol")
        body = await one.json()
        assert one.status == 200 and (body["used"], body["limit"], body["retry_after_ms"]) == (
            2, 3, 0,
        )  # fmt: skip
        share = await (await api.get("/v1/policy/per_user/carol?from=relay-2")).json()
        assert share["used"] == 2 and share["node"] == "relay-2"
        listing = await (await api.get("/v1/policy/per_user")).json()
        assert [(r["key"], r["used"]) for r in listing["quotas"][0]["top"]] == [("carol", 2)]
        assert len((await (await api.get("/v1/policy")).json())["quotas"]) == 4
        missing = await api.get("/v1/policy/nosuch/x")
        assert missing.status == 404 and "unknown quota 'nosuch'" in (await missing.json())["error"]
        assert (await api.delete("/v1/policy/per_user/carol")).status == 200
        after = await (await api.get("/v1/policy/per_user/carol")).json()
        assert after["used"] == 0


async def test_dashboard_shows_the_keys_nearest_their_limit(agents: Agents) -> None:
    async with Client(agents.a.port) as c:
        for i in range(3):
            await c.mail(sasl_username="dash", sender=f"d@dash{i}.example", rcpts=1)
        await c.mail(sasl_username="calm", sender="d@calm.example")
    node = agents.a.node
    # The agents note keys with half their limit or less left (every 2 s): no scan.
    await until(lambda: _near(node), 10, "the keys near their limit noted")
    snap = await read_snapshot(node.client, node.keys)
    near = [(q.quota, q.key, q.used, q.limit) for q in snap.quotas]
    assert near[0] == ("per_user", "dash", 3, 3)
    assert ("trial", "calm.example", 1, 1) in near  # 1 of 1: full
    assert not [row for row in near if row[1] == "calm" or row[0] == "rcpt"]  # under half
    text = Console(file=io.StringIO(), width=120, color_system=None)
    text.print(render_plain(snap))
    screen = text.file.getvalue()  # type: ignore[attr-defined]
    assert "Quotas nearest limit" in screen and "per_user dash" in screen and "3/3" in screen


async def _near(node: Node) -> bool:
    snap = await read_snapshot(node.client, node.keys)
    return bool(snap.quotas) and snap.quotas[0].key == "dash"


async def test_recipients_counted_at_data_when_no_rcpt_was_asked(agents: Agents) -> None:
    """The policy only in smtpd_data_restrictions: a message's recipient_count at DATA."""
    kw = {"sender": "data-only@rcpt-data.example", "sasl_username": ""}
    async with Client(agents.a.port) as c1, Client(agents.b.port) as c2:
        answers = []
        for c, n in ((c1, 3), (c2, 3), (c1, 2), (c2, 1)):
            instance = c.new_instance()
            answers.append(await c.send("DATA", instance, recipient_count=str(n), **kw))
            if answers[-1].startswith(("DUNNO", "WARN")):
                eom = await c.send("END-OF-MESSAGE", instance, recipient_count=str(n), **kw)
                assert eom == "DUNNO"  # counted once, at DATA
        assert answers[0] == "DUNNO" and deferred(answers[1], "rcpt")
        assert answers[2].startswith('WARN quota "trial"') and deferred(answers[3], "rcpt")
        too_many = await c1.send("DATA", c1.new_instance(), recipient_count="9",
                                 sender="other@rcpt-data2.example", sasl_username="")  # fmt: skip
        assert too_many.endswith("(9 recipients at once are over the limit of 5 recipients "
                                 "per 60 s)")  # fmt: skip


def test_a_changed_policy_scope_is_listed_under_needs_restart() -> None:
    from mcluster.agent.reload import _fixed_changes

    moved = "# quotas\n" + CONTRACT
    assert _fixed_changes(parse_config(CONTRACT, "a.conf"), parse_config(moved, "a.conf")) == []
    warned = CONTRACT.replace('action = "WARN"', 'action = "REJECT"')
    assert _fixed_changes(parse_config(CONTRACT, "a.conf"), parse_config(warned, "a.conf")) == [
        "Policy (the policy service's rules and quotas)"
    ]
    guarded = CONTRACT.replace("Policy {", 'Policy {\n  clients = ("10.1.0.0/16")', 1)
    assert _fixed_changes(parse_config(CONTRACT, "a.conf"), parse_config(guarded, "a.conf")) == [
        "Policy clients and bounds (who may connect)"
    ]


async def test_a_reload_takes_effect_from_the_next_request(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    """Shadow mode, then enforcing: WARN becomes REJECT without a restart; counts stay."""
    path = tmp_path / "m.conf"
    path.write_text(patient(CONTRACT))
    config = load_config(str(path))
    async with Node(config, "relay-1", redis_server.url, namespace=namespace) as node:
        service = PolicyService(node, policy_config(config))
        await service.start("127.0.0.1", 0)
        try:
            async with Client(service.port) as c:
                kw = {"sender": "x@reload.example", "sasl_username": ""}
                assert await c.mail(**kw) == ["DUNNO"] * 4
                assert (await c.mail(**kw))[0].startswith('WARN quota "trial"')
                path.write_text(patient(CONTRACT).replace('action = "WARN"', 'action = "REJECT"'))
                result = await node.reload()
                assert (result["changed"], result["needs_restart"]) == (["Policy"], [])
                refused = await c.mail(**kw)
                assert refused[0].startswith('REJECT 5.7.1 quota "trial" exceeded for ')
            ctx = ConsoleContext(node.client, node.keys)
            await until(lambda: _action_shown(ctx, "REJECT"), 10, "the reloaded quotas published")
        finally:
            await service.stop()
        assert not node.reload_hooks


async def _action_shown(ctx: ConsoleContext, action: str) -> bool:
    listing = await run_command(ctx, "policy show trial")
    return bool(listing.data["quotas"][0]["action"] == action)  # type: ignore[call-overload]


async def test_a_bad_quota_fails_the_reload(
    tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    path = tmp_path / "m.conf"
    path.write_text(CONTRACT)
    async with Node(load_config(str(path)), "relay-1", redis_server.url, namespace=namespace) as n:
        path.write_text(CONTRACT.replace('limit = "3/60"', 'limit = "3/0"'))
        with pytest.raises(
            ConfigError, match=r"m.conf:4:\d+: bad rate '3/0': the period S must be more than 0"
        ):
            await n.reload()
        path.write_text(CONTRACT.replace('limit = "3/60"', 'limit = "4/60"'))
        assert (await n.reload())["needs_restart"] == [
            "Policy (the policy service's rules and quotas)"
        ]


async def _would_refuse(ctx: ConsoleContext, n: int) -> bool:
    listing = await run_command(ctx, "policy show trial")
    return bool(listing.data["quotas"][0]["would_refuse"] == n)  # type: ignore[call-overload]


async def test_empty_keys_count_only_when_asked(redis_server: RedisServer, namespace: str) -> None:
    conf = """
Policy {
  Quota "login" { key = "sasl_username"  limit = "2/60" }
  Quota "anon"  { key = "sasl_username"  limit = "2/60"  empty = "count" action = "REJECT" }
}
"""
    async with two_agents(redis_server.url, namespace, conf) as agents, Client(agents.a.port) as c:
        got = [(await c.mail(sasl_username="", sender="")) for _ in range(3)]
        assert got[:2] == [["DUNNO"] * 4] * 2
        assert got[2][0] == (
            'REJECT 5.7.1 quota "anon" exceeded for sasl_username <> (limit 2 messages per '
            f"60 s); try again in {got[2][0].rsplit(' ', 2)[1]} s"
        )
        assert agents.a.quotas.stats.refused == {("anon", "REJECT"): 1}


async def test_on_a_redis_cluster(redis_cluster: RedisCluster, namespace: str) -> None:
    """The windows share one hash tag: decisions, show (SCAN on every master), reset."""
    async with two_agents(redis_cluster.url, namespace, CONTRACT) as agents:
        async with Client(agents.a.port) as c1, Client(agents.b.port) as c2:
            got = [await (c1, c2)[i % 2].mail(sasl_username="kim", sender=f"k@c{i}.example")
                   for i in range(4)]  # fmt: skip
        assert got[:3] == [["DUNNO"] * 4] * 3 and deferred(got[3][0], "per_user")
        await published(agents)
        ctx = ConsoleContext(agents.a.node.client, agents.a.node.keys)
        one = await run_command(ctx, "policy show per_user kim from relay-2")
        assert one.data["used"] == 1  # type: ignore[call-overload]
        listing = await run_command(ctx, "policy show per_user")
        top = listing.data["quotas"][0]["top"]  # type: ignore[call-overload]
        assert [(r["key"], r["used"]) for r in top] == [("kim", 3)]
        assert (await run_command(ctx, "policy reset per_user kim")).data["cleared"] == 3  # type: ignore[call-overload]


def test_each_action_answers_in_its_form() -> None:
    config = policy_config(
        parse_config("""
Policy {
  Quota "r" { key = "sender" limit = "2/60" action = "REJECT" }
  Quota "d" { key = "sender" limit = "2/60" action = "DEFER" }
  Quota "h" { key = "sender" limit = "2/60" action = "HOLD" }
  Quota "x" { key = "sender" limit = "2/60" action = "DISCARD" }
  Quota "w" { key = "sender" limit = "2/7200" action = "WARN" }
}
""")
    )
    engine = QuotaEngine(config.quotas)
    limits = {lim.quota.name: lim for lim in engine.limits({"sender": "a@b.c"}, "MAIL", first=True)}  # type: ignore[union-attr]
    tail = "exceeded for sender a@b.c (limit 2 messages per 60 s); try again in 7 s"
    assert quota_answer(limits["r"], 6500) == f'REJECT 5.7.1 quota "r" {tail}'
    assert quota_answer(limits["d"], 6500) == f'DEFER 4.7.1 quota "d" {tail}'
    assert quota_answer(limits["h"], 6500) == f'HOLD quota "h" {tail}'
    assert quota_answer(limits["x"], 6500) == f'DISCARD quota "x" {tail}'
    utf8 = engine.limits({"sender": "jörg@bücher.example"}, "MAIL", first=True)[0]
    assert "for sender j?rg@b?cher.example (limit" in quota_answer(utf8, 1000)
    # The retry time never exceeds the window, whatever the reckoning said.
    assert quota_answer(limits["r"], 900_000).endswith("per 60 s); try again in 60 s")


async def test_decide_refusal_order_and_degraded() -> None:
    """A transaction window outranks a recipient one, which outranks a WARN one; Redis
    away is degraded (the service answers on_error)."""
    config = policy_config(parse_config(CONTRACT))
    engine = QuotaEngine(config.quotas)
    attrs = {"sasl_username": "u", "sender": "s@d.example", "recipient": "r@x.example"}
    limits = engine.limits(attrs, "RCPT", first=True)
    stages = {lim.quota.name: lim.stage for lim in limits}  # type: ignore[union-attr]
    assert stages == {"per_user": "transaction", "trial": "transaction", "size": "transaction",
                      "rcpt": "recipient"}  # fmt: skip
    asked: list[list[str]] = []

    def full(*names: str) -> Callable[[list[tuple[str, int]]], Awaitable[Decision]]:
        async def acquire(request: list[tuple[str, int]]) -> Decision:
            asked.append([n.split(":")[0] for n, _ in request])
            left = tuple((n, 0 if n.split(":")[0] in names else 100) for n, _ in request)
            allowed = not any(r == 0 for _, r in left)
            return Decision(allowed, 0 if allowed else 5000, left)

        return acquire

    out = await engine.decide(limits, full("q.rcpt", "q.trial"))
    assert out.transaction == "DUNNO"  # the recipient is refused, the transaction stands
    assert out.answer.startswith('DEFER_IF_PERMIT 4.7.1 quota "rcpt"')
    assert asked == [
        ["q.per_user", "q.trial", "q.size", "q.rcpt"],  # all at once
        ["q.per_user", "q.trial", "q.size"],  # without the refused recipient window
        ["q.per_user", "q.size"],  # without the WARN quota: admitted
    ]
    asked.clear()
    out = await engine.decide(limits, full("q.per_user", "q.rcpt"))
    assert out.transaction == out.answer and 'quota "per_user"' in out.answer
    assert len(asked) == 1  # nothing to ask again: the transaction is refused

    async def away(request: list[tuple[str, int]]) -> Decision:
        return Decision(True, 0, (), degraded=True)

    assert (await engine.decide(limits, away)).degraded


async def test_read_only_use_agrees_with_the_scripts(
    redis_server: RedisServer, namespace: str
) -> None:
    """policy show reckons a window's use and retry from plain reads; throttle_acquire
    (a probe: nothing counted) must say the same, on windows of every age."""
    node_keys = ClusterKeys(namespace)
    okeys = node_keys.object(FAMILY)
    client = make_async_client(redis_server.url)
    scripts = Scripts(client)
    rate = Rate(5, 0.5)  # 50 ms buckets: a few sleeps cross bucket edges and the window
    name = window_name("t", "v")
    defs = {name: ThrottleDef(name=name, rate=str(rate))}
    try:
        for step in range(12):
            request = Request(((name, 1),))
            keys, args = throttle.plan(okeys, [request], defs, "n1")
            await scripts.run("throttle_acquire", keys, args)  # counts when it fits
            probe = Request(((name, -1),))
            keys, args = throttle.plan(okeys, [probe], defs, "n1")
            (lua,) = throttle.decisions([probe], await scripts.run("throttle_acquire", keys, args))
            raw = await client.hgetall(throttle.window_key(okeys, name))
            used, retry = usage.window_use(raw, rate, lua.at_ms)
            assert used == rate.count - lua.remaining[0][1], step
            assert retry == lua.retry_after_ms, step
            await asyncio.sleep(0.03 * (step % 4))
    finally:
        await client.aclose()


async def test_a_read_only_console_user_shows_quotas(
    agents: Agents, redis_server: RedisServer
) -> None:
    """docs/redis.md's console ACL user (reads only) runs policy show."""
    async with Client(agents.a.port) as c:
        for i in range(2):
            await c.mail(sasl_username="ro", sender=f"r@ro{i}.example")
    await published(agents)
    ns = agents.a.node.keys.namespace
    line = next(
        row.strip().strip("`")
        for row in (Path(__file__).parents[1] / "docs" / "redis.md").read_text().splitlines()
        if row.strip().strip("`").startswith("user mcluster-console on ")
    )
    rules = [r.replace("~mc:", f"~{ns}:").replace("&mc:", f"&{ns}:") for r in line.split()[2:]]
    name = f"console-{ns}"
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", name, "reset", *(
        ">pw" if r == ">PASSWORD" else r for r in rules
    ))  # fmt: skip
    host, port = redis_server.url.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    reader = make_async_client(f"redis://{name}:pw@{host}:{port}/0")
    try:
        ctx = ConsoleContext(reader, agents.a.node.keys)
        one = await run_command(ctx, "policy show per_user ro from relay-1")
        assert (one.data["used"], one.data["limit"]) == (2, 3)  # type: ignore[call-overload]
        listing = await run_command(ctx, "policy show")
        assert len(listing.data["quotas"]) == 4  # type: ignore[call-overload]
    finally:
        await reader.aclose()
        admin.execute_command("ACL", "DELUSER", name)
        admin.close()
