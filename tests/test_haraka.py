"""haraka-plugin-mcluster on real Haraka 3.x processes, each beside its own real agent
(one redis-server), relaying to loopback sinks that record concurrent sessions.

Inbound: the per-block connection cap and the message / recipient throttles hold across
two Harakas, every refusal is in the agents' /metrics, and a Haraka killed with -9 has
its connections' counts taken back by its lease within lease TTL + 1 s. Failure:
fail-open and fail-closed with no agent, and with a paused one (counted in its /metrics
once it is back). Outbound: the per-domain cap is never exceeded at the sink across two
Harakas, the OBTM rate holds, the caps of two MX hosts (Host scopes) hold at their sinks
with spill-over between them, and a node lost with kill -9 (Haraka and its agent) frees
its slots within lease TTL + 1 s, and so does a Haraka killed alone (its agent alive: the
plugin's slot lease). The same outbound scenario with haraka-plugin-limit's outbound
concurrency limit is measured and its figures printed (docs/haraka.md records them).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from pathlib import Path

import pytest
import redis.asyncio

from tests.agents import Farm, until
from tests.haraka import PLUGIN_DIR, Haraka, Sink, SmtpClient, densest, send_mail, skip_reason
from tests.redis_servers import free_port

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

BLOCK = "127.0.0.0/24"
#: timeout_ms: on a loaded machine a 500 ms answer is possible, and fail = open would then
#: admit a connection over the cap
INBOUND_INI = """
[main]
url=http://127.0.0.1:{port}
fail={fail}
timeout_ms=5000
[inbound]
max_connections=2
audit=true
[inbound_messages]
in_msgs:@block=3/60
[inbound_recipients]
in_rcpts:@block=5/60
[outbound]
enabled=false
"""


def test_plugin_unit_tests() -> None:
    """The plugin's own tests (node --test): client blocks, the journal, reply parsing,
    the slot lease."""
    result = subprocess.run(
        ["node", "--test", "test/"], cwd=PLUGIN_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    farm = Farm(
        tmp_path,
        extra_cluster='  Replicate "shared_named_throttles" {}\n'
        '  Replicate "metrics" { parameters = "connect;reception;rejection" }\n',
    )
    try:
        yield farm
    finally:
        await farm.close()


async def start_all(*harakas: Haraka) -> None:
    await asyncio.gather(*(h.start() for h in harakas))


def stop_all(*harakas: Haraka) -> None:
    for h in harakas:
        h.kill()


async def test_inbound_cap_and_rates_across_two_harakas(farm: Farm, tmp_path: Path) -> None:
    await farm.start("n1", "n2")
    h1, h2 = (
        Haraka(tmp_path / f"h{i}", plugins=["mcluster"],
               ini={"mcluster.ini": INBOUND_INI.format(port=farm.agents[n].port, fail="open")})
        for i, n in ((1, "n1"), (2, "n2"))
    )  # fmt: skip
    clients: list[SmtpClient] = []
    try:
        await start_all(h1, h2)

        async def connect(h: Haraka) -> SmtpClient:
            client = await SmtpClient.connect(h.port)
            clients.append(client)
            return client

        async def open_in_block() -> int:
            await farm.flush_all()
            return await farm.count("inbound_cidr", BLOCK)

        # Haraka's own probes while starting are gone before we count
        await until(_equals(open_in_block, 0), 5, what="no connection counted")
        c1 = await connect(h1)
        c2 = await connect(h2)
        assert (c1.greeting, c2.greeting) == (220, 220)
        assert await open_in_block() == 2
        c3 = await connect(h1)  # a third from the block, on either Haraka: 421
        assert c3.greeting == 421, c3.last
        assert "too many connections from 127.0.0.0/24 (cluster limit 2)" in c3.last
        c4 = await connect(h2)
        assert c4.greeting == 421
        await c1.close()
        await until(_equals(open_in_block, 1), 5, what="the closed connection uncounted")
        c5 = await connect(h1)
        assert c5.greeting == 220
        # rates: 5 recipients and 3 messages per minute for the block, across both Harakas
        assert await c5.command("EHLO client.test") == 250
        assert await c2.command("EHLO client.test") == 250
        code, text = await c5.message([f"r{i}@nowhere.test" for i in range(5)])
        assert code == 250, text
        assert await c2.command("MAIL FROM:<s@source.test>") == 250  # message 2 of 3
        assert await c2.command("RCPT TO:<r6@nowhere.test>") == 450  # recipient 6 of 5
        assert "recipient rate limit reached" in c2.last
        assert await c2.command("RSET") == 250
        assert await c2.command("MAIL FROM:<s@source.test>") == 250  # message 3 of 3
        assert await c2.command("RSET") == 250
        assert await c5.command("MAIL FROM:<s@source.test>") == 450  # message 4: refused
        assert "message rate limit reached" in c5.last
        # [inbound] audit: every refusal above (2 at connect, a recipient, a message) and
        # the message received, cluster-wide

        async def audited(kind: str) -> float:
            await farm.flush_all()
            url = f"{farm.agents['n2'].base}/v1/metrics/ip"
            params = {"type": kind, "ip": "127.0.0.1", "monitor": "0", "mask": "24"}
            async with farm.session.get(url, params=params) as resp:
                assert resp.status == 200, await resp.text()
                return float((await resp.json())["value"])

        await until(lambda: _at_least(audited("rejection"), 4), 5, what="rejections audited")
        await until(lambda: _at_least(audited("reception"), 1), 5, what="reception audited")
        # every refusal the plugins answered is in their agents' /metrics (reported totals)
        for reason, n in [("connection_cap", 2), ("recipient_rate", 1), ("message_rate", 1)]:
            sample = f'mcluster_client_refusals_total{{client="haraka",reason="{reason}"}}'
            await until(lambda s=sample, n=n: _at_least(farm_metric(farm, s), n), 5,  # type: ignore[misc]
                        what=f"{sample} reported")  # fmt: skip
        # h1 killed with -9 while c5 is open on it: h1 stops renewing the lease its counts
        # are under, and its agent takes c5's count back within lease TTL + 1 s (renewed
        # until then: c2 and c5, open for longer than a lease TTL, are both still counted)
        assert await open_in_block() == 2
        killed = time.monotonic()
        h1.kill()
        await until(_equals(open_in_block, 1), farm.lease_ttl + 1.0,
                    what="c5's count taken back", pids=farm.pids())  # fmt: skip
        print(
            f"mcluster: kill -9 of a Haraka with an inbound connection open: its count "
            f"taken back after {time.monotonic() - killed:.2f} s (lease TTL "
            f"{farm.lease_ttl} s, no restart)"
        )
        # started again, h1 leaves that count to the agent (its journal says it was
        # leased): no -1 of its own, which would take c5 out a second time
        await h1.start()
        await until(lambda: h1.grep("1 inbound count(s) under its lease left to the agent"),
                    10, what="h1's journal read at restart")  # fmt: skip
        assert h1.grep("gave back 0 slot(s) and 0 inbound count(s)")
        await until(_equals(open_in_block, 1), 5, what="h1's own probes uncounted")
        for client in clients:
            await client.close()
        await until(_equals(open_in_block, 0), 5, what="every connection uncounted")
    finally:
        for client in clients:
            await client.close()
        stop_all(h1, h2)


async def _at_least(value: Awaitable[float], least: float) -> bool:
    return await value >= least


async def farm_metric(farm: Farm, sample: str) -> float:
    """The sum of one /metrics sample (name and labels, as printed) over the running
    agents of the farm."""
    return sum([await farm.metric(name, sample) for name in farm.running()])


def _equals(read: Callable[[], Awaitable[int]], want: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await read() == want)

    return check


async def test_fail_open_and_fail_closed_without_agent(tmp_path: Path) -> None:
    """No agent answers on the configured port: fail = open lets mail in and out, fail =
    closed answers 421 at connect and keeps outbound mail queued. An agent paused (too
    late to answer): the same answers, each counted in that agent's /metrics once it is
    back (the plugins report their totals)."""
    sink = await Sink.start()
    farm = Farm(tmp_path, extra_cluster='  Replicate "shared_named_throttles" {}\n')
    dead = free_port()  # nothing listens there
    routes = {"out.test": sink.port}
    open_ini = INBOUND_INI.format(port=dead, fail="open").replace("enabled=false", "enabled=true")
    opened = Haraka(tmp_path / "open", plugins=["mcluster"], routes=routes,
                    ini={"mcluster.ini": open_ini})  # fmt: skip
    closed_out = Haraka(
        tmp_path / "closed_out", plugins=["mcluster"], routes=routes,
        ini={"mcluster.ini": f"[main]\nurl=http://127.0.0.1:{dead}\nfail=closed\n"
             "[inbound]\nenabled=false\n"},
    )  # fmt: skip
    await farm.start("n1")
    late = {fail: Haraka(tmp_path / f"late_{fail}", plugins=["mcluster"], routes=routes,
                         ini={"mcluster.ini": INBOUND_INI.format(port=farm.agents["n1"].port,
                              fail=fail).replace("timeout_ms=5000", "timeout_ms=300")})
            for fail in ("open", "closed")}  # fmt: skip
    harakas = (opened, closed_out, *late.values())
    try:
        await start_all(*harakas)
        assert await send_mail(opened.port, ["a@out.test"]) == [250]
        await until(lambda: len(sink.messages) == 1, 10, what="fail-open mail delivered")
        assert await send_mail(closed_out.port, ["b@out.test"]) == [250]  # queued
        await until(lambda: closed_out.grep("connection slot: mcluster agent unavailable"), 10,
                    what="fail-closed agent failure noticed")  # fmt: skip
        assert closed_out.grep("fail = closed")
        assert len(sink.messages) == 1  # the fail-closed message stays queued
        farm.pause("n1")
        try:
            client = await SmtpClient.connect(late["closed"].port)
            await client.close()
            assert client.greeting == 421
            assert "cluster limits unavailable" in client.last
            client = await SmtpClient.connect(late["open"].port)
            await client.close()
            assert client.greeting == 220
        finally:
            farm.resume("n1")
        for sample in [
            'mcluster_client_unavailable_total{client="haraka",fail="closed",stage="connect"}',
            'mcluster_client_refusals_total{client="haraka",reason="agent_unavailable"}',
            'mcluster_client_unavailable_total{client="haraka",fail="open",stage="connect"}',
        ]:
            await until(lambda s=sample: _at_least(farm_metric(farm, s), 1), 10,  # type: ignore[misc]
                        what=f"{sample} reported")  # fmt: skip
    finally:
        stop_all(*harakas)
        await sink.stop()
        await farm.close()


# -- outbound ----------------------------------------------------------------------------------

CAP = 3
RATE_N, RATE_S = 10, 2.0
#: how much later than Redis's decision an OBTM admission may be logged by Haraka
DECISION_JITTER = 0.25
#: hosted.test's two MX hosts, in priority order, and the cap of each (Host scopes)
HOST_CAPS = {"mx1.hosted.test": 2, "mx2.hosted.test": 1}
OUTBOUND_CAPS = f"""
Domain "capped.test" {{ cluster_max_outbound_connections = {CAP} }}
Host "mx.rated.test" {{ cluster_outbound_throttle_messages = "{RATE_N}/{RATE_S:g}" }}
Host "mx1.hosted.test" {{ cluster_max_outbound_connections = {HOST_CAPS["mx1.hosted.test"]} }}
Host "mx2.hosted.test" {{ cluster_max_outbound_connections = {HOST_CAPS["mx2.hosted.test"]} }}
Shaping "yahoo_ts" {{
  domain = "yahoo.test"  match = "/\\[TS0[1-4]\\]/"  action = "suspend"  duration = 30
}}
"""
TS03 = "421 4.7.0 [TS03] Messages from 127.0.0.1 temporarily deferred"
SLOTS_KEY = "max:default::capped.test"
#: capped.test's sink answers QUIT this late: Haraka runs its delivered hook before it
#: sends QUIT, so a limit given back in that hook frees the slot while the session is open
QUIT_DELAY = 0.2
#: fail closed: an agent late under load (or a degraded decision) defers the message
#: instead of letting it past the limits, which is what the checks below hold it to
MCLUSTER_OUT_INI = """
[main]
url=http://127.0.0.1:{port}
fail=closed
retry_seconds=0.2
timeout_ms=2000
[inbound]
enabled=false
[outbound]
cap_retry_seconds=0.1
"""
LIMIT_INI = f"""
[redis]
host=127.0.0.1
port={{port}}
database=4
[outbound]
enabled=true
capped.test={CAP}
delay=0.1
"""


def obtm_times(haraka: Haraka, verdict: str) -> list[float]:
    """When ``haraka`` logged OBTM decisions for rated.test (``allowed`` or ``refused``)."""
    times = []
    for line in haraka.grep(f"OBTM default::rated.test {verdict}"):
        stamp = line.split(" ", 1)[0].replace("Z", "+00:00")
        times.append(datetime.fromisoformat(stamp).timestamp())
    return times


def outbound_harakas(
    farm: Farm, tmp_path: Path, plugin: str, routes: Mapping[str, int | list[tuple[str, int]]]
) -> tuple[Haraka, Haraka]:
    """h1 beside n1 and h2 beside n2, with haraka-plugin-mcluster or haraka-plugin-limit
    (its counters in the farm's redis-server, database 4)."""
    out = []
    for i, node in ((1, "n1"), (2, "n2")):
        if plugin == "mcluster":
            ini = {"mcluster.ini": MCLUSTER_OUT_INI.format(port=farm.agents[node].port)}
        else:
            ini = {"limit.ini": LIMIT_INI.format(port=farm.redis.port)}
        out.append(Haraka(tmp_path / f"{plugin}-h{i}", plugins=[plugin], routes=routes, ini=ini))
    return out[0], out[1]


@pytest.fixture
async def outbound_farm(tmp_path: Path) -> AsyncIterator[Farm]:
    farm = Farm(
        tmp_path,
        extra_cluster='  Replicate "OBTM" {}\n  Replicate "outbound_cidr" {}\n'
        '  Replicate "metrics" { parameters = "delivery;transfail;permfail" }\n',
        extra=OUTBOUND_CAPS,
    )
    try:
        await farm.start("n1", "n2")
        yield farm
    finally:
        await farm.close()


async def deliver_all(
    plugin: str, farm: Farm, tmp_path: Path, per_haraka: int, decisions: dict[str, list[float]]
) -> dict[str, Sink]:
    """Each of two Harakas gets ``per_haraka`` messages for capped.test (the sink holds each
    0.3 s and answers QUIT after QUIT_DELAY) and, with mcluster, as many for rated.test;
    returns the sinks once all arrived and every session and slot is closed. ``decisions``
    gets the times of each Haraka's OBTM admissions for rated.test, from its log."""
    sinks = {
        "capped": await Sink.start(hold=0.3, quit_delay=QUIT_DELAY),
        "rated": await Sink.start(),
    }
    # rated.test's rate is its MX host's (a Host scope): it applies only if the plugin
    # reports the MX host with OBTM
    routes: dict[str, int | list[tuple[str, int]]] = {
        "capped.test": sinks["capped"].port,
        "rated.test": [("mx.rated.test", sinks["rated"].port)],
    }
    h1, h2 = outbound_harakas(farm, tmp_path, plugin, routes)
    rcpts = ["a@capped.test", "b@rated.test"] if plugin == "mcluster" else ["a@capped.test"]
    try:
        await start_all(h1, h2)
        codes = await asyncio.gather(*(send_mail(h.port, rcpts, per_haraka) for h in (h1, h2)))
        assert all(c == 250 for batch in codes for c in batch), codes
        for name, sink in sinks.items():
            if name == "rated" and plugin != "mcluster":
                continue
            await until(lambda s=sink: len(s.messages) >= 2 * per_haraka, 90,  # type: ignore[misc]
                        what=f"{plugin}: every {name} message delivered")  # fmt: skip
        # the last sessions end (QUIT) after the last message: Haraka must live until then
        await until(lambda: sinks["capped"].current == 0, 10, what="every session closed")
        if plugin == "mcluster":
            await until(_equals(lambda: farm.count("outbound_slots", SLOTS_KEY), 0), 5,
                        what="every slot given back")  # fmt: skip
            for h in (h1, h2):
                decisions[h.home.name] = obtm_times(h, "allowed")
        return sinks
    finally:
        stop_all(h1, h2)
        for sink in sinks.values():
            await sink.stop()


async def test_outbound_cap_and_obtm_across_two_harakas(
    outbound_farm: Farm, tmp_path: Path
) -> None:
    decisions: dict[str, list[float]] = {}
    sinks = await deliver_all("mcluster", outbound_farm, tmp_path, 20, decisions)
    capped, rated = sinks["capped"], sinks["rated"]
    admitted = sorted(t for times in decisions.values() for t in times)
    # OBTM's guarantee is judged by Redis time at the decision; the plugin logs it a
    # reply later, so a window a little shorter than the rate's is checked.
    densest_admitted = densest(admitted, RATE_S - DECISION_JITTER)
    # at the sink, Haraka's delivery adds its own lateness (connect, EHLO, DATA)
    densest_sink = densest(rated.messages, RATE_S)
    spread = max(rated.messages) - min(rated.messages)
    print(
        f"mcluster: capped.test cap {CAP}: {capped.sessions} sessions, peak {capped.peak}, "
        f"{capped.over(CAP)} opened over the cap; rated.test {RATE_N}/{RATE_S:g} s: "
        f"{len(admitted)} admissions, densest {RATE_S - DECISION_JITTER:g} s window "
        f"{densest_admitted}; at the sink {len(rated.messages)} messages over {spread:.1f} s, "
        f"densest {RATE_S:g} s window {densest_sink}"
    )
    assert capped.peak <= CAP and capped.over(CAP) == 0
    assert capped.peak == CAP  # the cap was reached, so it was tested
    assert len(admitted) == len(rated.messages) == 40
    assert densest_admitted <= RATE_N
    # every delivery was reported (POST /v1/outbound/outcome -> the delivery audit metric)
    await until(lambda: _at_least(outcomes(outbound_farm, "capped.test", "delivery"), 40), 5,
                what="40 deliveries reported")  # fmt: skip
    # 40 messages at 10 per 2 s: the last is admitted at least 3 windows after the first
    # (at the sink, Haraka's delivery times can shorten or stretch that)
    assert admitted[-1] - admitted[0] >= (len(admitted) / RATE_N - 1) * RATE_S - DECISION_JITTER


async def test_outbound_host_caps_and_spill_over(outbound_farm: Farm, tmp_path: Path) -> None:
    """The slot is opened once Haraka has chosen the MX (host, address and the domain's MX
    hosts are reported): each MX host's cap holds at its sink across two Harakas, a
    refusal by mx1's cap spills over to mx2 (named by the agent), and the connections are
    counted in outbound_cidr by the address connected to."""
    farm = outbound_farm
    sinks = {name: await Sink.start(hold=0.3, quit_delay=QUIT_DELAY) for name in HOST_CAPS}
    routes: dict[str, int | list[tuple[str, int]]] = {
        "hosted.test": [(name, sink.port) for name, sink in sinks.items()]
    }
    h1, h2 = outbound_harakas(farm, tmp_path, "mcluster", routes)
    per_haraka = 8
    try:
        await start_all(h1, h2)
        codes = await asyncio.gather(
            *(send_mail(h.port, ["a@hosted.test"], per_haraka) for h in (h1, h2))
        )
        assert all(c == 250 for batch in codes for c in batch), codes
        seen_ip = 0

        async def delivered() -> bool:
            nonlocal seen_ip  # the address connected to, counted while a connection is open
            await farm.flush_all()
            seen_ip = max(seen_ip, await farm.count("outbound_cidr", "127.0.0.1"))
            return sum(len(sink.messages) for sink in sinks.values()) >= 2 * per_haraka

        await until(delivered, 60, what="every hosted.test message delivered", interval=0.05)
        await until(lambda: all(s.current == 0 for s in sinks.values()), 10,
                    what="every session closed")  # fmt: skip
        for name in HOST_CAPS:

            async def slots(host: str = name) -> int:
                return await farm.count("outbound_slots", f"max:host:{host}")

            await until(_equals(slots, 0), 5, what=f"every slot of {name} given back")
        spilled = sum(len(h.grep("spilling over to mx2.hosted.test")) for h in (h1, h2))
        figures = ", ".join(
            f"{name} cap {cap}: {sinks[name].sessions} sessions, peak {sinks[name].peak}, "
            f"{sinks[name].over(cap)} opened over the cap"
            for name, cap in HOST_CAPS.items()
        )
        print(f"mcluster: hosted.test by MX host: {figures}; {spilled} spill-overs to mx2; "
              f"outbound_cidr 127.0.0.1 seen at {seen_ip}")  # fmt: skip
        for name, cap in HOST_CAPS.items():
            assert sinks[name].peak <= cap and sinks[name].over(cap) == 0, name
        assert sinks["mx1.hosted.test"].peak == HOST_CAPS["mx1.hosted.test"]  # reached
        assert spilled >= 1 and sinks["mx2.hosted.test"].sessions >= 1
        # OBTM is charged to the MX host each message went to, spill-overs included
        for name, sink in sinks.items():
            charged = sum(
                len(h.grep(f"OBTM default::hosted.test allowed ({name})")) for h in (h1, h2)
            )
            assert charged == len(sink.messages), (name, charged, len(sink.messages))
        assert 1 <= seen_ip <= sum(HOST_CAPS.values())
        assert h1.grep("no slot for hosted.test via") or h2.grep("no slot for hosted.test via")
    finally:
        stop_all(h1, h2)
        for sink in sinks.values():
            await sink.stop()


async def test_outbound_haraka_plugin_limit_same_scenario(
    outbound_farm: Farm, tmp_path: Path
) -> None:
    """haraka-plugin-limit's [outbound] concurrency limit (capped.test=3, its counter in
    the same Redis for both Harakas), same traffic: figures only, for docs/haraka.md."""
    sinks = await deliver_all("limit", outbound_farm, tmp_path, 20, {})
    capped = sinks["capped"]
    total = await limit_counter(outbound_farm)
    print(
        f"haraka-plugin-limit: capped.test limit {CAP}: {capped.sessions} sessions, peak "
        f"{capped.peak}, {capped.over(CAP)} opened over the limit; counter after: {total[0]}"
    )
    assert len(capped.messages) == 40


async def limit_counter(farm: Farm) -> tuple[int, int]:
    """haraka-plugin-limit's in-flight counter for capped.test (database 4) and its TTL."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=farm.redis.port, db=4)
    try:
        total = await client.hget("outbound-rate:capped.test", "TOTAL")
        return int(total or 0), int(await client.ttl("outbound-rate:capped.test"))
    finally:
        await client.aclose()


KILL_HOLD = 20.0  # the sink holds every message this long: the slots stay taken


async def kill_scenario(plugin: str, farm: Farm, tmp_path: Path) -> tuple[Sink, Haraka, Haraka]:
    """Both Harakas get 4 messages for capped.test; returns once the sink holds CAP
    sessions (the rest wait for a slot)."""
    sink = await Sink.start(hold=KILL_HOLD)
    h1, h2 = outbound_harakas(farm, tmp_path, plugin, {"capped.test": sink.port})
    await start_all(h1, h2)
    for h in (h1, h2):
        assert await send_mail(h.port, ["a@capped.test"], 4) == [250] * 4
    await until(lambda: sink.current == CAP, 20, what=f"{plugin}: {CAP} sessions at the sink")
    return sink, h1, h2


async def most_slots(farm: Farm, h1: Haraka, h2: Haraka) -> tuple[dict[str, int], str, str, Haraka]:
    """The slots each node holds (CAP in all), the node holding most, the other, and the
    Haraka beside the first."""
    held = {n: await farm.count("outbound_slots", SLOTS_KEY, view=n) for n in ("n1", "n2")}
    assert sum(held.values()) == CAP
    victim, survivor = ("n1", "n2") if held["n1"] >= held["n2"] else ("n2", "n1")
    return held, victim, survivor, h1 if victim == "n1" else h2


async def test_kill_node_frees_its_slots(outbound_farm: Farm, tmp_path: Path) -> None:
    """A node lost (its Haraka and its agent, kill -9) frees its slots within lease TTL +
    1 s; the other Haraka then uses them; the sink never sees more than the cap."""
    farm = outbound_farm
    sink, h1, h2 = await kill_scenario("mcluster", farm, tmp_path)
    try:
        held, victim, survivor, dead = await most_slots(farm, h1, h2)
        dead.kill()
        farm.kill(victim)

        async def freed() -> bool:
            mine = await farm.count("outbound_slots", SLOTS_KEY, view=survivor, via=survivor)
            return await farm.count("outbound_slots", SLOTS_KEY, via=survivor) == mine

        took = await until(freed, farm.lease_ttl + 1.0, what=f"{victim}'s slots freed",
                           pids=farm.pids())  # fmt: skip
        await until(lambda: sink.current == CAP, 10, what="the survivor takes the freed slots")
        print(
            f"mcluster: kill -9 of {victim} (Haraka + agent) holding {held[victim]} of {CAP} "
            f"slots: freed after {took:.2f} s (lease TTL {farm.lease_ttl} s); the sink saw "
            f"{sink.over(CAP)} sessions over the cap, peak {sink.peak}"
        )
        assert sink.peak <= CAP and sink.over(CAP) == 0
    finally:
        stop_all(h1, h2)
        await sink.stop()


async def test_kill_haraka_alone_frees_its_slots(outbound_farm: Farm, tmp_path: Path) -> None:
    """A Haraka killed with -9 while its agent lives stops renewing its lease (its slots'
    owner): the agent frees them within lease TTL + 1 s, with no restart; the other Haraka
    then uses them and the sink never sees more than the cap. Started again, the plugin's
    journal (the fallback) closes them once more, which changes nothing."""
    farm = outbound_farm
    sink, h1, h2 = await kill_scenario("mcluster", farm, tmp_path)
    try:
        held, victim, _, dead = await most_slots(farm, h1, h2)
        dead.kill()

        async def freed() -> bool:
            return await farm.count("outbound_slots", SLOTS_KEY, view=victim) == 0

        took = await until(freed, farm.lease_ttl + 1.0, what=f"the slots of {victim}'s Haraka "
                           "freed", pids=farm.pids())  # fmt: skip
        await until(lambda: sink.current == CAP, 10, what="the other Haraka takes the freed slots")
        async with farm.session.get(f"{farm.agents[victim].base}/metrics") as resp:
            metrics = await resp.text()
        assert f"mcluster_connections_owner_expired_total {held[victim]}.0" in metrics
        print(
            f"mcluster: kill -9 of the Haraka beside {victim} alone (its agent alive), holding "
            f"{held[victim]} of {CAP} slots: freed after {took:.2f} s by its lease (lease TTL "
            f"{farm.lease_ttl} s, no restart); the sink saw {sink.over(CAP)} sessions over the "
            f"cap, peak {sink.peak}"
        )
        await dead.start()

        def given_back() -> int:
            lines = dead.grep("slot(s) and 0 inbound count(s) left by a stopped Haraka")
            return int(lines[0].split("gave back ")[1].split()[0]) if lines else 0

        await until(given_back, 10, what="the journal's closes at restart")
        # the closes of slots freed already took nothing from the survivor's
        assert await farm.count("outbound_slots", SLOTS_KEY, view=victim) == 0
        assert await farm.count("outbound_slots", SLOTS_KEY) == CAP
        assert sink.peak <= CAP and sink.over(CAP) == 0
    finally:
        stop_all(h1, h2)
        await sink.stop()


async def test_kill_haraka_plugin_limit_counter(outbound_farm: Farm, tmp_path: Path) -> None:
    """The same kill with haraka-plugin-limit: figures only, for docs/haraka.md."""
    farm = outbound_farm
    sink, h1, h2 = await kill_scenario("limit", farm, tmp_path)
    try:
        h1.kill()
        killed = asyncio.get_running_loop().time()
        # the bound mcluster is held to; haraka-plugin-limit has no lease, so this is a
        # measurement of what is left after that long, not a condition to await
        await asyncio.sleep(farm.lease_ttl + 1.0)
        total, ttl = await limit_counter(farm)
        elapsed = asyncio.get_running_loop().time() - killed
        # every session of the killed Haraka is gone (the kernel closed its sockets): what
        # the counter holds above the sessions still open at the sink leaked
        print(
            f"haraka-plugin-limit: kill -9 of one Haraka: counter {total} with "
            f"{sink.current} sessions open at the sink {elapsed:.1f} s later: "
            f"{total - sink.current} leaked (key TTL {ttl} s, re-armed by every attempt); "
            f"the sink saw {sink.over(CAP)} sessions over the limit, peak {sink.peak}"
        )
    finally:
        stop_all(h1, h2)
        await sink.stop()


async def outcomes(farm: Farm, domain: str, kind: str) -> float:
    """The outcomes of ``kind`` (delivery, transfail, permfail) reported for ``domain``,
    cluster-wide, over every window of the first monitor."""
    await farm.flush_all()
    url = f"{farm.agents['n2'].base}/v1/metrics/outbound"
    async with farm.session.get(url, params={"domain": domain}) as resp:
        assert resp.status == 200, await resp.text()
        return float(sum((await resp.json())["monitors"][0][kind]))


async def test_outcome_reports_drive_shaping(outbound_farm: Farm, tmp_path: Path) -> None:
    """Every outcome goes to POST /v1/outbound/outcome: a receiver's [TS03] deferral seen by
    the Haraka beside n1 suspends the domain (rule yahoo_ts) for the other node's OBTM,
    and the other Haraka's message waits the suspension's time instead of being tried."""
    farm = outbound_farm
    sink = await Sink.start(reply=TS03)
    bouncer = await Sink.start(reply="550 5.1.1 no such user")
    routes = {"yahoo.test": sink.port, "bounce.test": bouncer.port}
    h1, h2 = outbound_harakas(farm, tmp_path, "mcluster", routes)
    try:
        await start_all(h1, h2)
        # a bounce is reported too (permfail)
        assert await send_mail(h2.port, ["c@bounce.test"]) == [250]
        await until(lambda: _at_least(outcomes(farm, "bounce.test", "permfail"), 1), 10,
                    what="the bounce reported")  # fmt: skip
        assert await send_mail(h1.port, ["a@yahoo.test"]) == [250]
        await until(lambda: h1.grep("Temp failing"), 10, what="h1 deferred by the sink")
        deferred = asyncio.get_running_loop().time()
        url = f"{farm.agents['n2'].base}/v1/outbound/message"

        async def suspended() -> str:
            async with farm.session.post(
                url, json={"binding": "default", "domain": "yahoo.test"}
            ) as r:
                body = await r.json()
            return "" if body["allowed"] else str(body.get("reason", ""))

        reason = await until_value(suspended, 5, what="yahoo.test suspended on n2")
        took = asyncio.get_running_loop().time() - deferred
        assert "yahoo_ts" in reason, reason
        assert await send_mail(h2.port, ["b@yahoo.test"]) == [250]
        await until(lambda: h2.grep("OBTM default::yahoo.test refused, retry in"), 10,
                    what="h2's message held by the suspension")  # fmt: skip
        retry_ms = int(h2.grep("OBTM default::yahoo.test refused, retry in")[0]
                       .split("retry in ")[1].split()[0])  # fmt: skip
        assert 0 < retry_ms <= 30_000
        assert sink.sessions == 1  # nothing more was tried
        assert await outcomes(farm, "yahoo.test", "transfail") == 1
        print(f"mcluster: a [TS03] deferral reported by h1 suspends yahoo.test on n2 "
              f"{took:.2f} s after Haraka deferred it; h2 waits {retry_ms} ms")  # fmt: skip
    finally:
        stop_all(h1, h2)
        await sink.stop()
        await bouncer.stop()


async def until_value(cond: Callable[[], Awaitable[str]], timeout: float, what: str) -> str:
    """``until`` for a condition whose truthy value the caller wants."""
    found: list[str] = []

    async def check() -> bool:
        value = await cond()
        if value:
            found.append(value)
        return bool(value)

    await until(check, timeout, what=what)
    return found[0]


async def test_agent_api_token(tmp_path: Path) -> None:
    """An agent started with --api-token-file: a Haraka whose token_file names the same file
    is answered; one without the token gets 401, logged, and its fail policy."""
    token = tmp_path / "api_token"
    token.write_text("s3cret-token-for-haraka\n")
    token.chmod(0o600)
    farm = Farm(tmp_path, extra_cluster='  Replicate "OBTM" {}\n', extra=OUTBOUND_CAPS)
    sink = await Sink.start()
    routes = {"out.test": sink.port}
    ini = "[main]\nurl=http://127.0.0.1:{port}\nfail=closed\n{extra}[inbound]\nenabled=false\n"
    try:
        await farm.start("n1", args=["--api-token-file", str(token)])
        port = farm.agents["n1"].port
        with_token = ini.format(port=port, extra=f"token_file={token}\n")
        good = Haraka(tmp_path / "good", plugins=["mcluster"], routes=routes,
                      ini={"mcluster.ini": with_token})  # fmt: skip
        bad = Haraka(tmp_path / "bad", plugins=["mcluster"], routes=routes,
                     ini={"mcluster.ini": ini.format(port=port, extra="")})  # fmt: skip
        try:
            await start_all(good, bad)
            assert await send_mail(good.port, ["a@out.test"]) == [250]
            await until(lambda: len(sink.messages) == 1, 10, what="the message with a token")
            assert good.grep("OBTM default::out.test allowed")
            assert await send_mail(bad.port, ["b@out.test"]) == [250]  # queued
            await until(lambda: bad.grep("mcluster agent refused POST /v1/connections/open: 401"),
                        10, what="401 logged")  # fmt: skip
            assert len(sink.messages) == 1  # fail closed: the message waits
        finally:
            stop_all(good, bad)
    finally:
        await sink.stop()
        await farm.close()
