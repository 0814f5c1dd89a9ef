"""The policy service's fast path: whole-request parsing and one deadline per answer.

cut_request cuts a request out of a connection's buffer and parse_request splits it in
one pass; these tests hold them to the line-by-line reading they replaced (CRLF lines,
every kind of garbage named as before, split reads). ``Throttles.acquire(until=...)``
carries the answer's deadline down to the throttles' own timers, instead of an
asyncio.timeout around every answer. A connection's idle and partial-request timeouts
are tested on the service (tests/test_security_policy.py).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from mcluster import Node, parse_config
from mcluster.faces.policy import Garbage, parse_request
from tests.helpers import cpu_wait, requests_of
from tests.postfix import request
from tests.redis_servers import start_redis


def test_requests_split_across_reads_and_crlf_lines() -> None:
    one = request("RCPT", "10.0.0.1", "a.1", recipient="bob@example.org")
    two = request("DATA", "10.0.0.2", "a.2").replace(b"\n", b"\r\n")
    cut = len(one) + 17  # the second request begins in the first read and ends later
    first, second = requests_of((one + two)[:cut], (one + two)[cut:])
    assert (first["protocol_state"], first["recipient"]) == ("RCPT", "bob@example.org")
    assert (second["protocol_state"], second["client_address"]) == ("DATA", "10.0.0.2")
    assert "\r" not in "".join(second.values())


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"a=1\nhello\n\n", "a line that is not name=value: 'hello'"),
        (b"a=1\n=x\n\n", "a line that is not name=value: '=x'"),
        (b"\n", "an empty request"),
        (b"\n\n", "an empty request"),
        (b"\r\n\r\n", "an empty request"),
        (b"a=1\n" * 300 + b"\n", "more than 256 attributes"),
        (b"a=" + b"1" * 5000 + b"\n\n", "a line longer than 4096 bytes"),
        (b"a=1\x07\n\n", "binary data (control characters)"),
        (b"a=1\rb=2\n\n", "binary data (control characters)"),
        (b"\x16\x03\x01\n", "binary data (control characters)"),  # TLS, no empty line
        (b"a=1\n" + b"x" * 5000, "a line longer than 4096 bytes"),
    ],
)
def test_garbage_is_named(data: bytes, reason: str) -> None:
    with pytest.raises(Garbage, match=re.escape(reason)):
        requests_of(data)


def test_parse_keeps_every_value_as_sent() -> None:
    assert parse_request(b"a=1\nb=x=y\nc=\nd= spaced ") == {
        "a": "1", "b": "x=y", "c": "", "d": " spaced ",
    }  # fmt: skip


CONF = """
cluster {
  Replicate "shared_named_throttles" {}
  Shared_Throttle "slow" { rate = "100/60" on_error = "allow" deadline_ms = 2000 }
}
"""


async def test_until_ends_a_decision_before_the_throttles_own_deadline(namespace: str) -> None:
    """Redis hangs: a throttle with a 2 s deadline answers degraded by ``until``."""
    server = start_redis()
    try:
        async with Node(parse_config(CONF), "relay-0-1", server.url, namespace=namespace) as node:
            th = node.throttles
            assert (await th.acquire([("slow", 1)])).allowed
            server.proc.send_signal(signal.SIGSTOP)
            try:
                loop = asyncio.get_running_loop()
                start, waited = time.monotonic(), cpu_wait()
                decision = await th.acquire([("slow", 1)], until=loop.time() + 0.05)
                took = time.monotonic() - start - (cpu_wait() - waited)
                assert decision.degraded and decision.allowed
                assert took <= 0.05 + 0.02, f"took {took * 1000:.1f} ms"
                # a deadline already past sends nothing at all
                late = await th.acquire([("slow", 1)], until=loop.time() - 1)
                assert late.degraded
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert th.stats.degraded_allow == 2
    finally:
        server.stop()
