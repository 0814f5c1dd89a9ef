"""Quotas behind a real Postfix: each count kind, each action, exemptions, overrides, the
null sender and an agent killed mid-transaction, over two smtpd listeners and two agents.

One private Postfix and one farm (n1 behind listener 0, n2 behind listener 1) serve the
module, with one config holding every quota below. Each test keeps to key values of its
own (logins, senders, sender domains, client addresses), so no test sees another's
counts and no state needs resetting: the action quotas each exempt every sender domain
but their own. Tests that send several messages alternate the listeners, so every count
is shared by both agents and must be exact across them. Skips without postfix, swaks or
root, saying how to install them (``.ci/run`` does).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.postfix_server import POLICY_DOWN, Mx, Sent, missing, mx_farm, smtp_session

pytestmark = [
    pytest.mark.skipif(bool(missing()), reason=str(missing())),
    pytest.mark.asyncio(loop_scope="module"),
]

ACTIONS = ("REJECT", "DEFER", "HOLD", "DISCARD", "WARN")
DOMAINS = ["example.net", *(f"{a.lower()}.test" for a in ACTIONS)]


def _action_quota(action: str) -> str:
    own = f"{action.lower()}.test"
    exempt = " ".join(f'"{d}"' for d in DOMAINS if d != own)
    return (
        f'  Quota "act_{action.lower()}" {{ key = "sender_domain"  limit = "1/3600"  '
        f'action = "{action}"  exempt = ({exempt}) }}'
    )


POLICY = (
    """
Policy {
  on_error = "DEFER_IF_PERMIT"
  Quota "per_user" { key = "sasl_username"  limit = "3/3600"
                     exempt = ("postmaster-login")
                     overrides = ("bulk-login=5/3600" "size-login=100/3600") }
  Quota "rcpt" { key = "sender"  limit = "5/3600"  count = "recipients" }
  Quota "size" { key = "sasl_username"  limit = "20K/3600"  count = "bytes" }
"""
    + "\n".join(_action_quota(a) for a in ACTIONS)
    + "\n}\n"
)

_clients = itertools.count(1)


def client() -> str:
    """A client address no other message of the module uses."""
    n = next(_clients)
    return f"10.40.{n // 250}.{n % 250 + 1}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mx(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mx]:
    async with mx_farm(tmp_path_factory.mktemp("postfix-quotas"), POLICY) as mx:
        yield mx


def sender() -> str:
    """A sender no other message of the module uses (the "rcpt" quota counts senders)."""
    return f"s{next(_clients)}@example.net"


async def send_all(mx: Mx, n: int, **kw: object) -> list[Sent]:
    """``n`` messages one after the other, alternating the listeners (both agents); each
    from a client address (and, unless given, a sender) of its own."""
    return [
        await mx.postfix.send(i % 2, client=client(), **{"sender": sender(), **kw})  # type: ignore[arg-type]
        for i in range(n)
    ]


def transcripts(sent: list[Sent]) -> str:
    return "\n----\n".join(s.transcript for s in sent)


async def test_messages_by_sasl_username_exact_across_listeners(mx: Mx) -> None:
    sent = await send_all(mx, 5, login="msgs-login")
    assert [s.accepted for s in sent] == [True] * 3 + [False] * 2, transcripts(sent)
    for refused in sent[3:]:
        (reply,) = refused.replies("RCPT")
        assert reply.startswith("450 4.7.1 "), reply
        assert 'quota "per_user" exceeded for sasl_username msgs-login' in reply, reply
        retry = re.search(r"try again in (\d+) s", reply)
        assert retry and 1 <= int(retry.group(1)) <= 3600, reply


async def test_recipients_by_sender_refused_one_by_one(mx: Mx) -> None:
    sender = "rcpt-test@example.net"
    to = [f"r{i}@example.org" for i in range(3)]
    first, second, third = await send_all(mx, 3, sender=sender, to=to)
    assert first.accepted and first.replies("RCPT") == ["250 2.1.5 Ok"] * 3, first.transcript
    # the 6th recipient would exceed 5: refused, the two before it stand and the mail goes
    replies = second.replies("RCPT")
    assert replies[:2] == ["250 2.1.5 Ok"] * 2, second.transcript
    assert replies[2].startswith("450 4.7.1 ") and 'quota "rcpt"' in replies[2], replies
    assert second.accepted, second.transcript
    assert all(r.startswith("450 4.7.1 ") for r in third.replies("RCPT")), third.transcript
    assert not third.accepted


async def test_bytes_by_sasl_username_refused_at_end_of_data(mx: Mx) -> None:
    """20K per user: two 8K messages go, the third would cross and is refused after its
    data (and not counted), a small one still fits."""
    sent = await send_all(mx, 3, login="size-login", size=8000)
    assert [s.accepted for s in sent] == [True, True, False], transcripts(sent)
    (reply,) = sent[2].replies(".")
    assert reply.startswith("450 4.7.1 ") and 'quota "size"' in reply, reply
    small = await mx.postfix.send(1, client=client(), sender=sender(), login="size-login", size=100)
    assert small.accepted, small.transcript


@pytest.mark.parametrize("action", ACTIONS)
async def test_each_action(mx: Mx, action: str) -> None:
    """A sender domain's second message trips its quota (limit 1): the quota's action."""
    sender = f"someone@{action.lower()}.test"
    first, second = await send_all(mx, 2, sender=sender)
    assert first.accepted, first.transcript
    (reply,) = second.replies("RCPT")
    where = rf"RCPT from \S+\[{re.escape(second_client(second))}\]"
    if action == "REJECT":
        assert reply.startswith("554 5.7.1 ") and 'quota "act_reject"' in reply, reply
        assert not second.accepted
    elif action == "DEFER":
        assert reply.startswith("450 4.7.1 ") and 'quota "act_defer"' in reply, reply
        assert not second.accepted
    elif action == "HOLD":  # taken, and parked in the hold queue for a human
        assert second.accepted and reply.startswith("250"), second.transcript
        await mx.postfix.wait_log(rf"hold: {where}: .*quota \"act_hold\"")
        assert second.queue_id in mx.postfix.queued("hold")
    elif action == "DISCARD":  # taken, then thrown away: never delivered
        assert second.accepted and reply.startswith("250"), second.transcript
        await mx.postfix.wait_log(rf"discard: {where}: .*quota \"act_discard\"")
        assert f"{second.queue_id}: to=<" not in mx.postfix.log()
    else:  # WARN: shadow mode, Postfix logs it and the mail goes through
        assert second.accepted and reply.startswith("250"), second.transcript
        await mx.postfix.wait_log(rf"warn: {where}: .*quota \"act_warn\" exceeded")
        await mx.postfix.wait_log(rf"{second.queue_id}: to=<bob@example.org>.*status=sent")


def second_client(sent: Sent) -> str:
    """The client address XCLIENT gave in a transcript."""
    found = re.search(r"XCLIENT .*ADDR=(\S+)", sent.transcript)
    assert found, sent.transcript
    return found.group(1)


async def test_exempt_login_is_never_limited(mx: Mx) -> None:
    sent = await send_all(mx, 5, login="postmaster-login")
    assert all(s.accepted for s in sent), transcripts(sent)


async def test_override_gives_its_own_limit(mx: Mx) -> None:
    sent = await send_all(mx, 7, login="bulk-login")
    assert [s.accepted for s in sent] == [True] * 5 + [False] * 2, transcripts(sent)
    (reply,) = sent[5].replies("RCPT")
    assert "(limit 5 messages per 3600 s)" in reply, reply


async def test_null_sender_is_not_counted_by_sender_quotas(mx: Mx) -> None:
    """Bounces (MAIL FROM:<>) have no sender to count: 8 recipients pass a limit of 5."""
    to = [f"n{i}@example.org" for i in range(4)]
    sent = await send_all(mx, 2, sender="", to=to)
    assert all(s.accepted for s in sent), transcripts(sent)
    assert all(s.replies("RCPT") == ["250 2.1.5 Ok"] * 4 for s in sent), transcripts(sent)


async def test_agent_killed_mid_transaction_keeps_the_count(mx: Mx) -> None:
    """n1 dies after counting a message at RCPT: Postfix answers its default action at
    DATA, the message stays counted (never over-admitting): n2 admits 2 more, not 3."""
    login = "killed-login"
    smtp = await asyncio.to_thread(
        smtp_session, mx.postfix.ports[0], client(), sender(), login=login
    )
    try:
        code, text = await asyncio.to_thread(smtp.rcpt, "bob@example.org")
        assert code == 250, (code, text)
        mx.farm.kill("n1")
        code, text = await asyncio.to_thread(smtp.docmd, "DATA")
        assert f"{code} {text.decode()}".startswith(POLICY_DOWN), (code, text)
    finally:
        await asyncio.to_thread(smtp.close)
    sent = [
        await mx.postfix.send(1, client=client(), sender=sender(), login=login) for _ in range(3)
    ]
    assert [s.accepted for s in sent] == [True, True, False], transcripts(sent)
    await mx.restart(0)
    again = await mx.postfix.send(0, client=client(), sender=sender(), login=login)
    assert not again.accepted and 'quota "per_user"' in again.replies("RCPT")[0]


def console(mx: Mx, command: str) -> dict[str, object]:
    """``mcluster console --json -c COMMAND`` against the farm's Redis: its JSON."""
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "console", "--redis", mx.farm.redis.url,
         "--namespace", mx.farm.namespace, "--json", "-c", command],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


async def test_console_shows_a_spent_login_and_reset_lets_it_send(mx: Mx) -> None:
    """The operator's view of what Postfix saw: used 3 of 3, a retry time within the
    window; ``policy reset`` and the next message goes through either listener."""
    login = "reset-login"
    sent = await send_all(mx, 4, login=login)
    assert [s.accepted for s in sent] == [True] * 3 + [False], transcripts(sent)
    shown = await asyncio.to_thread(console, mx, f"policy show per_user {login}")
    assert (shown["used"], shown["limit"]) == (3, 3), shown
    assert 0 < int(shown["retry_after_ms"]) <= 3_600_000, shown  # type: ignore[call-overload]
    await asyncio.to_thread(console, mx, f"policy reset per_user {login}")
    again = await send_all(mx, 2, login=login)
    assert all(s.accepted for s in again), transcripts(again)
