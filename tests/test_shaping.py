"""Adaptive shaping: a reply on one node shapes the destination on every node, on time,
whatever happens to the node that saw it; triggers count cluster-wide; AIMD converges on
a sink's hidden rate; warm-up days follow Redis TIME; bad rules are config errors."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster import ConfigError, Node, parse_config
from mcluster.faces.http.app import make_app
from mcluster.faces.prometheus import Metrics
from mcluster.objects.outbound import Route
from mcluster.shaping.config import shaping_config
from mcluster.shaping.model import Outcome
from tests.helpers import crash, redis_pids, until, until_running
from tests.redis_cluster import AnyRedis

CONF = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.6
  shaping_deadline_ms = 2000
  Replicate "OBTM" {}
  Replicate "outbound_binding_domains" {}
  Replicate "metrics" { parameters = "delivery;transfail;permfail" }
}
Domain "slow.test" { cluster_outbound_throttle_messages = "100/60" }
Provider "msft" { mx_suffix = (".olc.protection.outlook.test") }
Shaping "yahoo_ts" { domain = "yahoo.test"  match = "/\\[TS0[1-4]\\]/"  action = "suspend"
                     duration = 3 }
Shaping "busy3" { provider = "msft"  match = "/4\\.7\\.500 Server busy/"  action = "suspend"
                  duration = 30  trigger = "3/60" }
Shaping "slow_down" { domain = "slow.test"  match = "/^421/"  action = "rate"  factor = 0.1
                      duration = 30 }
Shaping "long_ts" { domain = "long.test"  match = "/\\[TS0[1-4]\\]/"  action = "suspend"
                     duration = 120 }
Adaptive "ad" { domain = "adaptive.test"  min = "1/1"  max = "50/1"  increase = "1/1" }
Shaping "fewer" { host = "mx.few.test"  match = "/too many connections/i"
                  action = "connections"  limit = 2  duration = 30 }
"""

TS03 = "4.7.0 [TS03] Messages from 192.0.2.1 temporarily deferred"


@pytest.fixture
async def nodes(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[list[Node]]:
    cfg = parse_config(CONF)
    made = [Node(cfg, f"relay-{i}", shared_redis.url, namespace=namespace) for i in (1, 2, 3)]
    for node in made:
        await node.start()
    yield made
    for node in made:
        if node.member is not None:
            await node.stop()


async def test_one_reply_suspends_every_node_on_time_and_a_dead_reporter_changes_nothing(
    nodes: list[Node], shared_redis: AnyRedis
) -> None:
    a, b, c = nodes
    route = Route("b1", "yahoo.test")
    assert (await b.outbound_message(route)).allowed
    async with (
        TestClient(TestServer(make_app(a))) as api_a,
        TestClient(TestServer(make_app(b))) as api_b,
    ):
        resp = await api_a.post(
            "/v1/outbound/outcome",
            json={
                "binding": "b1",
                "domain": "yahoo.test",
                "host": "mx.yahoo.test",
                "code": 421,
                "text": TS03,
            },
        )
        body = await resp.json()
        assert resp.status == 200, body
        assert body["event"] == "transfail" and body["counted"] is True
        assert [(r["rule"], r["status"]) for r in body["rules"]] == [("yahoo_ts", "fired")]
        expires = body["rules"][0]["expires_ms"]

        async def refused_on(api: TestClient[object, object] | None, node: Node) -> bool:
            left = expires - await redis_ms(node)  # before the decision: it can only shrink
            if api is not None:
                resp = await api.post(
                    "/v1/outbound/message", json={"binding": "b1", "domain": "yahoo.test"}
                )
                got = await resp.json()
                allowed, reason, retry = got["allowed"], got.get("reason"), got["retry_after_ms"]
            else:
                d = await node.outbound_message(route)
                allowed, reason, retry = d.allowed, d.reason, d.retry_after_ms
            if allowed:
                return False
            assert reason is not None and "yahoo_ts" in reason
            assert 0 < retry <= left, (retry, left)
            return True

        # both at once: each within 1 s of the report (the first decision already refuses)
        await asyncio.gather(
            until(lambda: refused_on(api_b, b), 1.0, "suspended on B over HTTP"),
            until(lambda: refused_on(None, c), 1.0, "suspended on C"),
        )
        # other domains are untouched
        assert (await c.outbound_message(Route("b1", "gmail.test"))).allowed
    # the reporter dies: the suspension neither lifts nor lasts longer
    await crash(a)
    assert not (await b.outbound_message(route)).allowed
    state = await c.shaping.show() if c.shaping else None
    assert state is not None
    [held] = state.actions
    assert (held.rule, held.destination, held.expires_ms) == (
        "yahoo_ts",
        "domain:yahoo.test",
        expires,
    )

    async def lifted() -> bool:  # by Redis's word (a degraded answer could be anything)
        decision = await c.outbound_message(route)
        return decision.allowed and not decision.degraded

    await until_running(lifted, 4.0, "the suspension expires", redis_pids(shared_redis))
    now = await redis_ms(b)
    assert now >= expires, "lifted before its expiry"
    assert (await b.outbound_message(route)).allowed
    history = await b.shaping.history("yahoo_ts") if b.shaping else []
    assert [(h.rule, h.destination, h.node, h.expires_ms) for h in history] == [
        ("yahoo_ts", "domain:yahoo.test", "relay-1", expires)
    ]
    assert "[TS03]" in history[0].reply


async def redis_ms(node: Node) -> int:
    seconds, micros = await node.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_trigger_counts_matches_cluster_wide(nodes: list[Node]) -> None:
    route = Route("b1", "hotmail.test", host="mx1.olc.protection.outlook.test")
    busy = "4.7.500 Server busy. Please try again later"
    for node in nodes[:2]:
        result = await node.outbound_outcome(
            Outcome("b1", "hotmail.test", 451, busy, "mx2.olc.protection.outlook.test")
        )
        assert result.provider == "msft"
        assert [(r.rule, r.status) for r in result.rules] == [("busy3", "counted")]
    # a reply that does not match counts nothing
    other = await nodes[0].outbound_outcome(
        Outcome("b1", "hotmail.test", 451, "greylisted", "mx1.olc.protection.outlook.test")
    )
    assert other.rules == ()
    assert (await nodes[2].outbound_message(route)).allowed
    third = await nodes[2].outbound_outcome(
        Outcome("b1", "hotmail.test", 451, busy, "mx1.olc.protection.outlook.test")
    )
    assert [(r.rule, r.status, r.matches) for r in third.rules] == [("busy3", "fired", 3)]
    # every node, even for a domain-only route: the provider was learned from the MX host
    for node in nodes:
        decision = await node.outbound_message(Route("b9", "hotmail.test"))
        assert not decision.allowed and decision.reason and "busy3" in decision.reason
    # a fourth match while it holds does not extend it
    again = await nodes[0].outbound_outcome(
        Outcome("b1", "hotmail.test", 451, busy, "mx1.olc.protection.outlook.test")
    )
    assert again.rules[0].status == "active"
    assert again.rules[0].expires_ms == third.rules[0].expires_ms


async def test_a_slow_redis_does_not_lift_a_suspension_seen(
    nodes: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:

    a, b, _ = nodes
    await a.outbound_outcome(Outcome("b1", "long.test", 421, TS03))
    seen = await b.outbound_message(Route("b1", "long.test"))
    assert not seen.allowed and not seen.degraded
    scripts, shaper = b.decision_scripts, b.shaping
    assert shaper is not None
    monkeypatch.setattr(shaper, "deadline_ms", 50)

    async def slow(name: str, keys: list[object], args: list[object]) -> object:
        await asyncio.sleep(10 * shaper.deadline_ms / 1000)  # Redis too slow to wait for
        raise AssertionError("not given up at the deadline")

    monkeypatch.setattr(scripts, "run", slow)
    held = await b.outbound_message(Route("b1", "long.test"))
    assert not held.allowed and held.degraded and held.reason and "long_ts" in held.reason
    assert 0 < held.retry_after_ms <= seen.retry_after_ms
    other = await b.outbound_message(Route("b1", "yahoo.test"))  # nothing seen: let through
    assert other.allowed and other.degraded


async def test_concurrent_checks_of_a_route_share_one_call(nodes: list[Node]) -> None:
    shaper = nodes[0].shaping
    assert shaper is not None
    before = shaper.stats.checks
    route = Route("b1", "yahoo.test")
    decisions = await asyncio.gather(*(nodes[0].outbound_message(route) for _ in range(20)))
    assert all(d.allowed for d in decisions)
    assert shaper.stats.checks - before < 20  # they came in one turn: most joined one call


async def test_rate_and_connection_actions(nodes: list[Node]) -> None:
    a, b, _ = nodes
    route = Route("b1", "slow.test")
    await a.outbound_outcome(Outcome("b1", "slow.test", 421, "4.2.1 slow down"))
    # factor 0.1 of "100/60": 10 messages a minute, cluster-wide
    allowed = [(await nodes[i % 3].outbound_message(route)).allowed for i in range(15)]
    assert sum(allowed) == 10
    refused = await b.outbound_message(route)
    assert refused.reason is not None and "shaped:domain:slow.test" in refused.reason
    few = Route("b1", "few.test", host="mx.few.test")
    opened = [await a.open_connection(few) for _ in range(3)]
    assert all(o.allowed for o in opened)  # no action yet: uncapped, but counted
    await b.outbound_outcome(Outcome("b1", "few.test", 421, "Too many connections", "mx.few.test"))
    refused_open = await b.open_connection(few)
    assert not refused_open.allowed and "shaping rule fewer" in str(refused_open.reason)
    for o in opened[:2]:
        assert await a.close_connection(str(o.slot))
    assert (await b.open_connection(few)).allowed  # 2 open: the cap
    assert not (await b.open_connection(few)).allowed
    await a.close_connection(str(opened[2].slot))
    assert (await b.open_connection(few)).allowed
    assert not (await a.open_connection(few)).allowed
    # shaping clear lifts it
    assert b.shaping is not None and await b.shaping.clear("fewer", "host:mx.few.test")
    assert (await a.open_connection(few)).allowed
    assert [h.action for h in await b.shaping.history("fewer")] == ["clear", "connections"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'Shaping "x" { domain = "a.test"  match = "/[unclosed/"  action = "suspend" }',
            r"s.conf:1:34: Shaping 'x': match: bad regex",
        ),
        (
            'Shaping "x" { provider = "nope"  match = "/a/"  action = "suspend" }',
            r"s.conf:1:15: Shaping 'x': unknown provider 'nope'",
        ),
        (
            'Shaping "x" { match = "/a/"  action = "suspend" }',
            r"s.conf:1:1: Shaping 'x': give exactly one destination",
        ),
        (
            'Shaping "x" { domain = "a"  match = "/a/"  action = "explode" }',
            r"s.conf:1:44: Shaping 'x': action must be one of",
        ),
        (
            'Shaping "x" { domain = "a"  match = "/a/"  action = "rate" }',
            r"s.conf:1:1: Shaping 'x': factor is required",
        ),
        (
            'Warmup "w" { binding = "b1"  schedule = ("1:200/86400" "x:500") }',
            r"s.conf:1:41: Warmup 'w': schedule: bad step 'x:500'",
        ),
        (
            'Warmup "w" { binding = "b1"  schedule = ("2:200/86400") }',
            r"s.conf:1:41: Warmup 'w': schedule: the first step must be day 1",
        ),
        (
            'Adaptive "a" { domain = "a"  min = "100/60"  max = "10/60"  increase = "1/60" }',
            r"s.conf:1:30: Adaptive 'a': min \(100/60\) is above max",
        ),
    ],
)
def test_bad_rules_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        shaping_config(parse_config(text, "s.conf"))


def test_config_check_lists_every_shaping_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.conf"
    bad.write_text(
        'Shaping "x" {\n  domain = "a.test"\n  match = "/(/"\n  action = "suspend"\n}\n'
        'Shaping "y" {\n  provider = "ghost"\n  match = "/a/"\n  action = "suspend"\n}\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "mcluster", "config", "check", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{bad}:3:3: Shaping 'x': match: bad regex '('")
    assert lines[1].startswith(f"{bad}:7:3: Shaping 'y': unknown provider 'ghost'")


AIMD_CONF = """
cluster {
  heartbeat_interval = 0.2
  lease_ttl = 0.6
  shaping_deadline_ms = 2000
  Replicate "OBTM" {}
}
Adaptive "sink" { domain = "sink.test"  min = "5/1"  max = "400/1"  decrease = 0.8
                  increase = "4/1"  every = 0.5  transfail_above = 0.1 }
"""


async def test_aimd_converges_on_a_sinks_hidden_rate(
    redis_server: AnyRedis, namespace: str
) -> None:
    hidden = 40  # the sink accepts this many messages a second and defers the rest
    cfg = parse_config(AIMD_CONF)
    made = [Node(cfg, f"relay-{i}", redis_server.url, namespace=namespace) for i in (1, 2)]
    for node in made:
        await node.start()
    accepted: deque[float] = deque()

    def sink() -> tuple[int, str]:
        now = time.monotonic()
        while accepted and accepted[0] <= now - 1.0:
            accepted.popleft()
        if len(accepted) >= hidden:
            return 421, "4.7.0 [TS01] too fast"
        accepted.append(now)
        return 250, "2.0.0 ok"

    route = Route("b1", "sink.test")
    stop = time.monotonic() + 14.0

    async def sender(node: Node) -> None:
        while time.monotonic() < stop:
            decision = await node.outbound_message(route)
            if not decision.allowed:
                await asyncio.sleep(min(0.05, max(0.005, decision.retry_after_ms / 1000)))
                continue
            code, text = sink()
            await node.outbound_outcome(Outcome("b1", "sink.test", code, text))

    try:
        await asyncio.gather(*(sender(made[i % 2]) for i in range(4)))
        shaper = made[0].shaping
        assert shaper is not None
        history = [h for h in await shaper.history("sink", 200) if h.action == "aimd"]
        rates = [float(h.value) for h in reversed(history) if h.at_ms]
        assert rates and rates[0] < 400, "the leader never stepped the rate"
        last = [float(h.value) for h in history[:8]]  # the newest changes
        mean = sum(last) / len(last)
        print(f"AIMD: hidden {hidden}/s, mean of the last {len(last)} rates {mean:.1f}/s")
        assert abs(mean - hidden) <= 0.2 * hidden, (mean, rates)

        # the senders stopped: once a step saw no attempts the rate holds still
        async def idle() -> bool:
            return (await shaper.show()).adaptive[0].transfail_ratio is None

        await until(idle, 3.0, "an AIMD step with no attempts")
        [aimd] = (await shaper.show()).adaptive
        newest = [h for h in await shaper.history("sink", 1) if h.action == "aimd"]
        assert aimd.rate == float(newest[0].value)
        scrape = (await Metrics(made[1]).render()).decode()
        gauge = 'mcluster_shaping_adaptive_rate{adaptive="sink",destination="domain:sink.test"}'
        assert f"{gauge} {aimd.rate}" in scrape
    finally:
        for node in made:
            await node.stop()


WARM_CONF = """
cluster {
  heartbeat_interval = 0.2  lease_ttl = 0.6  shaping_deadline_ms = 2000  Replicate "OBTM" {}
}
Warmup "new_ip" { binding = "b1"  schedule = ("1:3/86400" "2:5/86400" "4:8/86400") }
"""


async def test_warmup_day_follows_redis_time(
    redis_server: AnyRedis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = parse_config(WARM_CONF)
    made = [Node(cfg, f"relay-{i}", redis_server.url, namespace=namespace) for i in (1, 2)]
    for node in made:
        await node.start()
    try:
        route = Route("b1", "any.test")
        allowed = [(await made[i % 2].outbound_message(route)).allowed for i in range(5)]
        assert allowed == [True, True, True, False, False]  # day 1: 3 a day, cluster-wide
        assert (await made[0].outbound_message(Route("b2", "any.test"))).allowed
        # first use was recorded by Redis TIME; move it 1.5 days back: day 2 on every node,
        # even with this process's clock 20 hours ahead (no node clock is read)
        shaper = made[0].shaping
        assert shaper is not None
        key = shaper.keys.warmup("new_ip")
        start = int(await made[0].client.get(key))
        await made[0].client.set(key, start - 36 * 3600 * 1000)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 20 * 3600)
        for node in made:
            assert node.shaping is not None
            [warm] = (await node.shaping.show()).warmups
            assert (warm.day, warm.rate) == (2, "5/86400")
        assert (await made[1].outbound_message(route)).allowed  # day 2: 5 in the last 24 h
        assert (await made[0].outbound_message(route)).allowed
        assert not (await made[1].outbound_message(route)).allowed
        # past the last step (day 4 holds for one day): warm, no limit
        await made[0].client.set(key, start - 5 * 86400 * 1000)
        [warm] = (await made[1].shaping.show()).warmups if made[1].shaping else []
        assert (warm.day, warm.rate) == (6, None)
        assert (await made[1].outbound_message(route)).allowed
    finally:
        for node in made:
            await node.stop()


async def test_console_and_http_show_history_clear(
    nodes: list[Node], shared_redis: AnyRedis, namespace: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import json
    import os
    import subprocess
    import sys

    from mcluster.console import console_main

    a, b, _ = nodes
    fired = await a.outbound_outcome(Outcome("b1", "long.test", 421, TS03, "mx.long.test"))
    expires = fired.rules[0].expires_ms
    assert not (await b.outbound_message(Route("b1", "long.test"))).allowed
    for node, line in [
        (a, 'mcluster_shaping_actions_total{action="suspend",rule="long_ts"} 1.0'),
        (b, 'mcluster_shaping_refusals_total{reason="suspend",rule="long_ts"} 1.0'),
    ]:
        async with TestClient(TestServer(make_app(node))) as api:
            assert line in (await (await api.get("/metrics")).text()).splitlines()
    env = os.environ | {"MCLUSTER_REDIS_URL": shared_redis.url, "MCLUSTER_NAMESPACE": namespace}
    done = subprocess.run(
        [sys.executable, "-m", "mcluster", "console", "--json", "-c", "shaping show"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    [action] = shown["actions"]
    # a console without the config lists the adaptive rules the nodes published
    assert [(r["name"], r["destination"], r["rate"]) for r in shown["adaptive"]] == [
        ("ad", "domain:adaptive.test", 50.0)
    ]
    assert (action["rule"], action["destination"], action["action"]) == (
        "long_ts", "domain:long.test", "suspend",
    )  # fmt: skip
    assert 0 < action["remaining_s"] <= 120

    async def console(command: str, json_mode: bool = True) -> tuple[int, str]:
        code = await asyncio.to_thread(
            console_main, shared_redis.url, None, None, command, json_mode, namespace
        )
        out, _ = capsys.readouterr()
        return code, out

    from rich.console import Console

    from mcluster.console.dashboard import render_plain
    from mcluster.console.snapshot import read_snapshot

    screen = Console(width=120, record=True, file=io.StringIO())
    screen.print(render_plain(await read_snapshot(b.client, b.keys)))
    board = screen.export_text()
    assert "Shaping" in board and "long_ts" in board and "domain:long.test" in board
    code, out = await console("shaping show", json_mode=False)
    assert code == 0 and "long_ts" in out and "domain:long.test" in out
    code, out = await console("shaping history long_ts limit 5")
    [entry] = json.loads(out)["history"]
    assert (entry["rule"], entry["node"], entry["expires_ms"]) == ("long_ts", "relay-1", expires)
    async with TestClient(TestServer(make_app(b))) as api:
        body = await (await api.get("/v1/shaping")).json()
        assert [x["rule"] for x in body["actions"]] == ["long_ts"]
        code, out = await console("shaping clear long_ts domain:long.test")
        assert code == 0 and json.loads(out)["cleared"] is True
        assert (await b.outbound_message(Route("b1", "long.test"))).allowed
        assert (await (await api.get("/v1/shaping")).json())["actions"] == []
        code, _ = await console("shaping clear long_ts domain:long.test")
        assert code == 2  # nothing in force: not found
        code, _ = await console("shaping clear long_ts yahoo.test")
        assert code == 1  # not a destination
        resp = await api.get("/v1/shaping/history", params={"rule": "long_ts"})
        assert [h["action"] for h in (await resp.json())["history"]] == ["clear", "suspend"]
        bad = await api.post("/v1/outbound/outcome", json={"binding": "b1", "domain": "x",
                                                            "code": 700})  # fmt: skip
        assert bad.status == 400 and "200-599" in (await bad.json())["error"]


async def test_config_reload_takes_new_rules(
    tmp_path: Path, redis_server: AnyRedis, namespace: str
) -> None:
    path = tmp_path / "mcluster.conf"
    path.write_text(WARM_CONF)
    async with Node(path, "relay-1", redis_server.url, namespace=namespace) as node:
        assert node.shaping is not None
        report = Outcome("b1", "reload.test", 421, "4.7.0 [TS01] deferred")
        assert (await node.outbound_outcome(report)).rules == ()
        path.write_text(WARM_CONF + 'Shaping "r" { domain = "reload.test"  match = "/TS01/"\n'
                        '  action = "suspend"  duration = 60 }\n')  # fmt: skip
        result = await node.reload()
        assert result["needs_restart"] == []
        fired = await node.outbound_outcome(report)
        assert [(r.rule, r.status) for r in fired.rules] == [("r", "fired")]
        assert not (await node.outbound_message(Route("b9", "reload.test"))).allowed
        path.write_text(WARM_CONF + 'Shaping "r" { domain = "reload.test"  match = "/(/" }\n')
        with pytest.raises(ConfigError, match=r"mcluster.conf:6:39: Shaping 'r': match: bad"):
            await node.reload()
        assert [r.name for r in node.shaping.config.rules] == ["r"]  # nothing applied
