"""The policy service behind a real Postfix: two smtpd listeners, each asking its own agent.

One private Postfix (tests/postfix_server.py) and one farm of two agents (n1, n2) on one
Redis serve the whole module; every test uses client addresses of its own, so the
cluster-wide windows of one test never see another's mail. Listener 0 asks n1's policy
service, listener 1 asks n2's. Without postfix and swaks (or without root) the module
skips and says how to install them; ``.ci/run`` installs them, so in CI it runs.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.postfix_server import POLICY_DOWN, Mx, missing, mx_farm, smtp_session

pytestmark = [
    pytest.mark.skipif(bool(missing()), reason=str(missing())),
    pytest.mark.asyncio(loop_scope="module"),
]

DEADLINE_MS = 100
POLICY = f"""
Policy {{
  client_rates = ("32,5/3600")
  on_error = "DEFER_IF_PERMIT"
  deadline_ms = {DEADLINE_MS}
}}
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mx(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mx]:
    async with mx_farm(tmp_path_factory.mktemp("postfix"), POLICY) as mx:
        yield mx


async def test_two_listeners_share_one_client_limit_exactly(mx: Mx) -> None:
    """client_rates "32,5/3600" across both listeners: 5 admitted, the rest deferred."""
    results = [await mx.postfix.send(i % 2, client="10.30.0.1") for i in range(7)]
    accepted = [r.accepted for r in results]
    assert accepted == [True] * 5 + [False] * 2, [r.transcript for r in results]
    for refused in results[5:]:
        (reply,) = refused.replies("RCPT")
        assert reply.startswith("450 4.7.1 "), refused.transcript
        assert "too many mail transactions from 10.30.0.1/32" in reply
        retry = re.search(r"try again in (\d+) s", reply)
        assert retry and 1 <= int(retry.group(1)) <= 3600, reply  # never past the window
    # Postfix logged the refusals as its own (one per listener: both agents refused)
    await mx.postfix.wait_log(r"postfix/listener0/smtpd\[\d+\]: NOQUEUE: reject: RCPT from "
                              r"\S+\[10\.30\.0\.1\]: 450 4\.7\.1 ")  # fmt: skip
    await mx.postfix.wait_log(r"postfix/listener1/smtpd\[\d+\]: NOQUEUE: reject: RCPT from "
                              r"\S+\[10\.30\.0\.1\]: 450 4\.7\.1 ")  # fmt: skip


def _open_transaction(port: int, client: str) -> smtplib.SMTP:
    """An SMTP session up to an accepted RCPT."""
    smtp = smtp_session(port, client)
    code, text = smtp.rcpt("bob@example.org")
    assert code == 250, (code, text)
    return smtp


def _timed_rcpt(port: int, client: str) -> tuple[str, float]:
    """The reply to one RCPT TO and the seconds it took."""
    smtp = smtp_session(port, client)
    try:
        started = time.monotonic()
        code, text = smtp.rcpt("bob@example.org")
        return f"{code} {text.decode()}", time.monotonic() - started
    finally:
        smtp.close()


async def test_agent_killed_mid_transaction(mx: Mx) -> None:
    """n1 dies between RCPT and DATA: Postfix answers its default action (a 4xx, the
    mail is not taken), listener 1 goes on, and the dead transaction stays counted (on
    the side of counting, never admitting more than the limit)."""
    client = "10.30.1.1"
    smtp = await asyncio.to_thread(_open_transaction, mx.postfix.ports[0], client)
    try:
        mx.farm.kill("n1")
        code, text = await asyncio.to_thread(smtp.docmd, "DATA")
        assert f"{code} {text.decode()}".startswith(POLICY_DOWN), (code, text)
    finally:
        await asyncio.to_thread(smtp.close)
    await mx.postfix.wait_log(rf"reject: DATA from \S+\[{client}\]: {POLICY_DOWN} ")
    # n2 still decides, and counts the killed transaction: 4 more, not 5
    results = [await mx.postfix.send(1, client=client) for _ in range(5)]
    assert [r.accepted for r in results] == [True] * 4 + [False], [r.transcript for r in results]
    # n1 comes back on the same port and decides again (another client: this one is spent)
    await mx.restart(0)
    assert (await mx.postfix.send(0, client="10.30.1.2")).accepted
    assert not (await mx.postfix.send(0, client=client)).accepted


async def test_redis_down_answers_on_error_within_the_deadline(mx: Mx) -> None:
    """Redis gone: each agent answers on_error (DEFER_IF_PERMIT here) within its deadline,
    far inside Postfix's policy timeout; Postfix defers with 450 4.7.1."""
    mx.farm.redis.stop()
    for listener in (0, 1):
        reply, took = await asyncio.to_thread(
            _timed_rcpt, mx.postfix.ports[listener], f"10.30.2.{listener + 1}"
        )
        assert reply.startswith("450 4.7.1 ") and "policy service is unavailable" in reply, reply
        # the deadline plus smtpd's and a loaded machine's scheduling, far below the
        # 10 s smtpd_policy_service_timeout a hung service would cost
        assert took < DEADLINE_MS / 1000 + 1.0, took
