"""Spent windows (mcluster/agent/throttles.py, ``known_refusal``): a window that has just
refused is refused in process for at most ``SPENT_FOR`` s, for the same cost or more,
without a script call and without counting anything; a smaller cost, a forced count,
a refusal two windows made, new definitions and the end of ``SPENT_FOR`` all ask Redis.
On a real Redis, through the Python API and through the policy service's connections."""

from __future__ import annotations

import asyncio
import time

import pytest

from mcluster.agent import throttles as throttles_module
from mcluster.agent.node import Node
from mcluster.agent.throttles import SPENT_FOR
from mcluster.config import parse_config
from mcluster.objects import throttle
from mcluster.objects.policy import policy_config
from mcluster.objects.quota_keys import window_name
from mcluster.objects.throttle import Request, ThrottleDef
from tests.helpers import policy_service, until
from tests.postfix import request
from tests.redis_servers import RedisServer

NAMED = 'cluster { Replicate "shared_named_throttles" {} }'
CONF = """
cluster {
  Replicate "inbound_cidr" {}
}
Policy {
  Quota "per_user" { key = "sasl_username"  limit = "%d/60" }
}
"""


async def test_a_refusal_is_repeated_in_process_for_as_much_or_more(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clock stands still: on a loaded machine the steps below may take longer than
    # half of SPENT_FOR, and a renewal probe would then add a script call of its own.
    monkeypatch.setattr(throttles_module, "clock", lambda: 1000.0)
    config = parse_config(NAMED)
    async with Node(config, "relay-1", redis_server.url, namespace=namespace) as node:
        t = node.throttles
        await t.create(ThrottleDef(name="bytes", rate="10/60"))
        await t.create(ThrottleDef(name="other", rate="1/60"))
        until = asyncio.get_running_loop().time() + 1
        first, refused = await t.acquire_many(
            [Request((("bytes", 6),)), Request((("bytes", 5),))], until
        )
        assert first.allowed and not refused.allowed and 0 < refused.retry_after_ms <= 60_000
        batches = t.stats.batches
        for cost in (5, 9):  # as much or more: refused here, with a retry time in the window
            known = t.known_refusal(Request((("bytes", cost),)))
            assert known is not None and not known.allowed, cost
            assert 0 < known.retry_after_ms <= refused.retry_after_ms
            assert known.remaining == (("bytes", 4),)
        assert t.known_refusal(Request((("bytes", 4),))) is None  # fits: Redis decides
        assert t.known_refusal(Request((("bytes", 5),), force=True)) is None
        assert (await t.acquire([("bytes", 7)])).allowed is False  # the API path too
        assert t.stats.spent_refusals == 3 and t.stats.batches == batches
        assert (await t.acquire([("bytes", 4)])).allowed  # asked: 10 of 10 now
        # Nothing refused in process was counted: the window holds what was admitted.
        assert [d.remaining for d in await t.acquire_many([Request((("bytes", 1),))], until)] == [
            (("bytes", 0),)
        ]
        # Two windows refusing: the reply does not say whose retry time it is.
        await t.acquire_many([Request((("other", 1),))], until)
        both = Request((("bytes", 1), ("other", 1)))
        [two] = await t.acquire_many([both], until)
        assert not two.allowed and t.known_refusal(Request((("other", 1),))) is None


async def test_the_policy_service_refuses_a_spent_client_without_asking_redis(
    redis_server: RedisServer, namespace: str
) -> None:
    async with policy_service(CONF % 2, redis_server.url, namespace) as svc:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)

        async def ask(i: int) -> str:
            writer.write(request("RCPT", "10.8.0.1", f"s.{i}", recipient="b@x.org", login="kim"))
            async with asyncio.timeout(10):
                return (await reader.readuntil(b"\n\n")).decode()

        got = [await ask(i) for i in range(3)]
        refused_at = time.monotonic()
        assert got[:2] == ["action=DUNNO\n\n"] * 2, got
        assert got[2].startswith("action=DEFER_IF_PERMIT 4.7.1 quota"), got
        stats = svc.windows.stats
        batches, spent = stats.batches, stats.spent_refusals
        again = await ask(3)
        assert again.startswith("action=DEFER_IF_PERMIT 4.7.1 quota") and "try again in" in again
        if time.monotonic() - refused_at < SPENT_FOR:  # else too slow a machine to tell
            assert (stats.spent_refusals, stats.batches) == (spent + 1, batches)
        # Half of SPENT_FOR on, one request asks Redis again (a reset or a failover is
        # seen within SPENT_FOR).
        i = 4
        while stats.batches == batches:
            assert (await ask(i)).startswith("action=DEFER_IF_PERMIT"), i
            i += 1
        assert time.monotonic() - refused_at >= SPENT_FOR / 2 * 0.9  # monotonic vs loop clock
        # A reload (new definitions) forgets the spent windows: the higher limit admits.
        svc.adopt(parse_config(CONF % 5))
        assert svc.config == policy_config(parse_config(CONF % 5))
        assert await ask(i + 1) == "action=DUNNO\n\n"
        writer.close()
        window = throttle.window_key(svc.windows.okeys, window_name("per_user", "kim"))
        assert int(await svc.node.client.hget(window, "s") or 0) == 3  # admitted only


async def test_a_spent_window_is_renewed_in_the_background_and_forgotten_when_it_has_room(
    redis_server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Used in the second half of SPENT_FOR, an entry is renewed by a probe that counts
    nothing, while every request is still answered in process; when the probe finds
    room (the window was reset) the entry is forgotten at once."""
    now = [1000.0]
    monkeypatch.setattr(throttles_module, "clock", lambda: now[0])
    config = parse_config(NAMED)
    async with Node(config, "relay-1", redis_server.url, namespace=namespace) as node:
        t = node.throttles
        await t.create(ThrottleDef(name="w", rate="1/60"))
        until_ = asyncio.get_running_loop().time() + 1
        one = Request((("w", 1),))
        assert [d.allowed for d in await t.acquire_many([one, one], until_)] == [True, False]
        batches = t.stats.batches
        now[0] += SPENT_FOR * 0.4
        assert t.known_refusal(one) is not None and t.stats.spent_probes == 0
        now[0] += SPENT_FOR * 0.2  # the second half: renewed in the background
        assert t.known_refusal(one) is not None and t.known_refusal(one) is not None
        assert t.stats.spent_probes == 1  # once
        await until(lambda: answered(t, batches), 5, what="the probe answered")
        now[0] += SPENT_FOR * 0.45  # past the first entry's end, in the renewed one
        assert t.known_refusal(one) is not None
        window = throttle.window_key(t.okeys, "w")
        assert int(await node.client.hget(window, "s") or 0) == 1  # the probe counted nothing
        await node.client.delete(window)  # a reset
        batches = t.stats.batches
        now[0] += SPENT_FOR * 0.2
        assert t.known_refusal(one) is not None  # answered, and a probe goes out
        await until(lambda: answered(t, batches), 5, what="the second probe answered")
        assert t.known_refusal(one) is None  # room: forgotten before its end
        assert (await t.acquire_many([one], until_))[0].allowed


async def answered(t: throttles_module.Throttles, batches: int) -> bool:
    return t.stats.batches > batches
