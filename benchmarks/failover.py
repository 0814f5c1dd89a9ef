"""Membership and failure: kill -9 to an exact view, reaping a big view, re-sync after FLUSHALL.

(1) three real ``mcluster agent`` processes, 1,000 addresses each; SIGKILL one (the leader
    every other run), poll a survivor until the global count of 0.0.0.0/0 equals the
    survivors' totals; p50 and max over 10 runs. Target <= lease_ttl + 1 s.
(2) in-process: node B holds 1M random addresses of 10.0.0.0/8 and goes silent; the leader
    A reaps it. Total time, the longest Redis command (SLOWLOG) and reaping call (client
    side); target <= 5 ms. Baseline: one EVAL that subtracts a copy of the whole view.
(3) in-process: a node holding 1M addresses, FLUSHALL, time until it has re-synced and the
    global count is exact again; snapshot publish rate; the longest command meanwhile.

    /work/venv/bin/python benchmarks/failover.py [--quick] [--strict] [--fast]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio
from _redis import RedisServer, start_redis
from _report import Report, machine, make_parser, percentile

from mcluster.agent.node import Node
from mcluster.config import ClusterConfig, parse_config
from mcluster.objects import cidrtree
from mcluster.store.keys import ClusterKeys, ObjectKeys, text
from mcluster.store.scripts import Scripts, script_source, scripts_dir
from tests.helpers import crash

OBJ = "inbound_cidr"
PER_AGENT = 1_000
SLOW_US = 5_000
INF = float("inf")
CONFIG = 'cluster {{\n  namespace = "{ns}"\n  heartbeat_interval = {hb}\n  lease_ttl = {ttl}\n'
CONFIG += f'  Replicate "{OBJ}" {{{{}}}}\n}}}}\n'
# The non-chunked baseline: walk a whole IPv4 view, subtract it from the global view, delete it.
NAIVE = """local function walk(hex, depth)
  local key = ARGV[1] .. hex
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    if #flat[i] == 1 then
      redis.call('HINCRBY', ARGV[2] .. hex, flat[i], -tonumber(flat[i + 1]))
      if depth < 3 then walk(hex .. string.format('%02x', string.byte(flat[i])), depth + 1) end
    end
  end
  redis.call('DEL', key)
end
walk('', 0)"""
PROCS: list[subprocess.Popen[bytes]] = []


@dataclass
class Call:
    """One timed script call: mode and addresses for the *_apply scripts."""

    name: str
    mode: str
    keys: int
    start: float
    end: float


CALLS: list[Call] = []
_run = Scripts.run


async def timed_run(self: Scripts, name: str, keys: list[Any], args: list[Any]) -> Any:
    """Scripts.run, timing every call (patched in for the in-process parts)."""
    start = time.perf_counter()
    try:
        return await _run(self, name, keys, args)
    finally:
        mode = str(args[2]) if name.endswith("_apply") else ""
        n = (len(args) - 5) // 4 if mode else 0
        CALLS.append(Call(name, mode, n, start, time.perf_counter()))


async def until(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.01) -> float:
    """Seconds until ``check`` holds; inf when it does not within ``timeout``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            return INF
        await asyncio.sleep(every)
    return time.monotonic() - start


def slowest(entries: list[dict[str, Any]], skip: str = "") -> tuple[int, str, int]:
    """(longest µs, which command, how many over 5 ms) of SLOWLOG entries."""
    names = {hashlib.sha1(script_source(p.stem).encode()).hexdigest(): p.stem
             for p in scripts_dir().glob("*.lua") if not p.stem.startswith("_")}  # fmt: skip
    worst, label, over = 0, "none over 1 ms", 0
    for entry in entries:
        words = bytes(entry["command"]).split(b" ")
        command, sha = words[0].decode().upper(), words[1].decode() if len(words) > 1 else ""
        if command != skip:
            over += entry["duration"] > SLOW_US
            if entry["duration"] > worst:
                worst, label = entry["duration"], f"{command} {names.get(sha, '')}".strip()
    return worst, label, over


async def spread(client: redis.asyncio.Redis) -> str:
    """EVALSHA time in Redis since CONFIG RESETSTAT: p50 and p99 bounds (Redis >= 7)."""
    with contextlib.suppress(redis.ResponseError, KeyError, StopIteration):
        command = ("LATENCY", "HISTOGRAM", "evalsha")
        stats = (await client.execute_command(*command))[b"evalsha"]  # type: ignore[no-untyped-call]
        calls, cumulative = stats[b"calls"], sorted(stats[b"histogram_usec"].items())
        p50, p99 = (next(b for b, c in cumulative if c >= q * calls) for q in (0.5, 0.99))
        return f"p50 <= {p50 / 1000:.1f} ms, p99 <= {p99 / 1000:.1f} ms of {calls:,} calls"
    return "n/a (LATENCY HISTOGRAM needs Redis 7)"


# -- (1) kill -9 of a real agent process -------------------------------------------------


@dataclass
class Agent:
    name: str
    index: int  # its addresses are 10.INDEX.x.y
    proc: subprocess.Popen[bytes]
    base: str
    private: str = ""


def spawn(name: str, index: int, conf: Path, url: str) -> Agent:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with open(conf.parent / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcluster", "agent", "--config", str(conf), "--node", name,
             "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"],
            env={**os.environ, "MCLUSTER_REDIS_URL": url}, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    PROCS.append(proc)
    return Agent(name, index, proc, f"http://127.0.0.1:{port}")


async def ready(http: aiohttp.ClientSession, agent: Agent) -> Agent:
    """Wait until the agent has joined, then load and flush its 1,000 addresses."""
    async with asyncio.timeout(30):
        while agent.proc.poll() is None and not agent.private:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(agent.base + "/healthz") as resp:
                    if resp.status == 200:
                        agent.private = str((await resp.json())["private_name"])
            await asyncio.sleep(0.05)
    if agent.proc.poll() is not None:
        raise RuntimeError(f"agent {agent.name} exited with {agent.proc.returncode}")
    events = [{"object": OBJ, "key": f"10.{agent.index}.{i >> 8}.{i & 255}", "delta": 1}
              for i in range(PER_AGENT)]  # fmt: skip
    async with http.post(agent.base + "/v1/events", json={"events": events}) as resp:
        assert resp.status == 202, await resp.text()
    async with http.post(agent.base + "/v1/flush") as resp:
        assert resp.status == 200, await resp.text()
    return agent


async def has_count(http: aiohttp.ClientSession, agent: Agent, want: int) -> bool:
    url = f"{agent.base}/v1/objects/{OBJ}/count"
    async with http.get(url, params={"key": "0.0.0.0/0"}) as resp:
        return int((await resp.json())["count"]) == want


def leader_of(admin: redis.Redis, key: str) -> str:
    """The leader's private name (the key holds "<private name> <token>"), or ''."""
    return text(admin.get(key) or b"").rsplit(" ", 1)[0]


async def kills(server: RedisServer, conf: Path, runs: int, hb: float, report: Report) -> float:
    """Part (1); returns the longest time from SIGKILL to an exact global view."""
    admin, rng = server.client(), random.Random(3)
    leader_key = ClusterKeys(str(parse_config(conf.read_text()).options["namespace"])).leader
    agents = {f"relay-{i}": spawn(f"relay-{i}", i, conf, server.url) for i in (1, 2, 3)}
    results: list[tuple[bool, float]] = []
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(ready(http, a) for a in agents.values()))
        for run in range(runs):
            first = next(iter(agents.values()))
            if await until(partial(has_count, http, first, 3 * PER_AGENT), 30) == INF:
                raise RuntimeError("the global view does not settle")
            by_private = {a.private: a for a in agents.values()}
            async with asyncio.timeout(30):  # until one of the live agents leads
                while not (leader := by_private.get(leader_of(admin, leader_key))):
                    await asyncio.sleep(0.1)
            of_leader = run % 2 == 0
            victim = leader if of_leader else next(a for a in agents.values() if a is not leader)
            watcher = next(a for a in agents.values() if a is not victim)
            await asyncio.sleep(rng.random() * hb)  # any phase of the heartbeat
            victim.proc.kill()
            took = await until(partial(has_count, http, watcher, 2 * PER_AGENT), 60)
            results.append((of_leader, took))
            victim.proc.wait()
            spawned = spawn(victim.name, 4 + run, conf, server.url)
            agents[victim.name] = await ready(http, spawned)
    for agent in agents.values():
        agent.proc.terminate()
        agent.proc.wait(30)
    times = [t for _, t in results]
    note = f"{runs} runs, every other one kills the leader; 3 agent processes"
    report.figure("(1) kill -9 -> exact global view, p50", f"{percentile(times, 50):.2f} s", note)
    each = " ".join(f"{'L' if k else ''}{t:.2f}" for k, t in results)
    report.figure("    max", f"{max(times):.2f} s", f"each run (L: the leader was killed): {each}")
    return max(times)


# -- (2) reaping and (3) re-sync, in-process ---------------------------------------------


def addresses(n: int, seed: int) -> list[str]:
    picked = random.Random(seed).sample(range(1 << 24), n)
    return [f"10.{v >> 16}.{v >> 8 & 255}.{v & 255}" for v in picked]


async def load(node: Node, keys: list[str]) -> float:
    """Record +1 on each key, yielding now and then so the heartbeats keep the leases."""
    start = time.perf_counter()
    for i, key in enumerate(keys):
        node.record(OBJ, key, 1)
        if i % 10_000 == 0:
            await asyncio.sleep(0)
    await node.flush()
    return time.perf_counter() - start


async def exact(node: Node, want: int, rejoins: int = -1) -> bool:
    """The global count of 0.0.0.0/0 is ``want`` (and the node has rejoined since)."""
    return node.rejoins > rejoins and await node.count(OBJ, "0.0.0.0/0") == want


async def reaping(url: str, cfg: ClusterConfig, n: int, report: Report) -> int:
    """Part (2); returns the longest command (µs) in the SLOWLOG while reaping."""
    aclient, keys = redis.asyncio.Redis.from_url(url), addresses(n, 7)
    a, b = Node(cfg, "observer", url), Node(cfg, "dying", url)
    await a.start()
    try:
        while not a.is_leader:
            await asyncio.sleep(0.05)
        await b.start()
        await load(a, [f"172.16.{i >> 8}.{i & 255}" for i in range(PER_AGENT)])
        took_load = await load(b, keys)
        if await until(partial(exact, a, n + PER_AGENT), 600, 0.05) == INF:  # any re-sync done
            raise RuntimeError("the global view is not exact before the kill")
        ns, view = a.keys.namespace, b.private_name
        base = f"{ns}:{{{OBJ}}}"
        for pattern in (f"{base}:n:{view}:d:*", f"{base}:g:d:*"):  # a copy for the baseline
            async with aclient.pipeline(transaction=False) as pipe:
                async for key in aclient.scan_iter(match=pattern, count=5000):
                    pipe.copy(key, b"x" + key)
                    if len(pipe) >= 5000:
                        await pipe.execute()
                await pipe.execute()
        rejoins = f"rejoins before the kill: A {a.rejoins}, B {b.rejoins}"
        await aclient.config_set("slowlog-log-slower-than", 1000)
        await aclient.config_set("slowlog-max-len", 100_000)  # keep them all, not just 128
        await aclient.slowlog_reset()
        await aclient.config_resetstat()
        CALLS.clear()
        died = time.perf_counter()
        await crash(b)
        took = await until(partial(exact, a, PER_AGENT), 3600, 0.05)
        entries, evalsha = await aclient.slowlog_get(100_000), await spread(aclient)
    finally:
        await crash(b)
        await a.stop(drain=False)
    chunks = [c for c in CALLS if c.mode == "r"]
    drain, in_calls = chunks[-1].end - chunks[0].start, sum(c.end - c.start for c in chunks)
    worst, label, over = slowest(entries)
    # The baseline, on the copy, with no node running: the whole view in one EVAL.
    await aclient.slowlog_reset()
    start = time.perf_counter()
    await aclient.eval(NAIVE, 0, f"x{base}:n:{view}:d:4:", f"x{base}:g:d:4:")
    naive = time.perf_counter() - start
    naive_us = max((e["duration"] for e in await aclient.slowlog_get(10)), default=0)
    left = await cidrtree.count(aclient, ObjectKeys("x" + ns, OBJ), "g", "0.0.0.0/0")
    await aclient.aclose()
    note = f"random in 10.0.0.0/8, +1 each; loaded in {took_load:.1f} s; {rejoins}"
    report.figure("(2) reaping: addresses in the dead view", f"{n:,}", note)
    note = f"lease expiry {chunks[0].start - died:.1f} s, then the drain"
    report.figure("    death -> global view exact", f"{took:.1f} s", note)
    note = f"{len(chunks):,} chunks of <= {max(c.keys for c in chunks)}, {n / drain:,.0f} addr/s"
    report.figure("    drain", f"{drain:.1f} s", note)
    note = f"{in_calls / drain:.0%} of the drain; the rest reads buckets (kind.leaves)"
    report.figure("    in reaping script calls", f"{in_calls:.1f} s", note)
    note = f"{label}; {over:,} over 5 ms, {len(entries):,} over 1 ms"
    report.figure("    longest command (SLOWLOG)", f"{worst / 1000:.2f} ms", note)
    report.figure("    EVALSHA in Redis while reaping", "", evalsha)
    note = f"{chunks[0].name} mode r, mean {in_calls / len(chunks) * 1000:.1f} ms"
    ms = max(c.end - c.start for c in chunks) * 1000
    report.figure("    longest reaping call, client side", f"{ms:.2f} ms", note)
    note = f"client {naive:.2f} s; global left {left:,} (expect {PER_AGENT:,})"
    report.figure("    baseline: one EVAL, whole view", f"{naive_us / 1000:,.0f} ms", note)
    return worst


async def resync(url: str, cfg: ClusterConfig, n: int, report: Report) -> None:
    """Part (3): FLUSHALL under a node holding n addresses; time to an exact view again."""
    aclient, keys = redis.asyncio.Redis.from_url(url), addresses(n, 11)
    node = Node(cfg, "resyncing", url)
    await node.start()
    try:
        await load(node, keys)
        await aclient.slowlog_reset()
        await aclient.config_resetstat()
        CALLS.clear()
        before, start = node.rejoins, time.perf_counter()
        await aclient.flushall()
        took = await until(partial(exact, node, n, before), 3600, 0.05)
        entries, evalsha = await aclient.slowlog_get(100_000), await spread(aclient)
    finally:
        await node.stop(drain=False)
        await aclient.aclose()
    snaps = [c for c in CALLS if c.mode == "s"]
    publish, published = snaps[-1].end - snaps[0].start, sum(c.keys for c in snaps)
    worst, label, over = slowest(entries, skip="FLUSHALL")
    flushall, _, _ = slowest([e for e in entries if e["command"].startswith(b"FLUSHALL")])
    note = f"{n:,} addresses; rejoins {node.rejoins - before}"
    report.figure("(3) FLUSHALL -> re-synced, view exact", f"{took:.1f} s", note)
    report.figure("    FLUSHALL -> first snapshot batch", f"{snaps[0].start - start:.2f} s")
    note = f"{published:,} keys in {len(snaps):,} batches, {publish:.1f} s"
    report.figure("    snapshot publish", f"{published / publish:,.0f}/s", note)
    note = f"{label}; {over:,} over 5 ms; FLUSHALL itself {flushall / 1000:.0f} ms"
    report.figure("    longest command during re-sync", f"{worst / 1000:.2f} ms", note)
    report.figure("    EVALSHA in Redis during re-sync", "", evalsha)


def main() -> None:
    parser = make_parser("Membership and failure: kill -9, reaping, re-sync after FLUSHALL.")
    parser.add_argument("--fast", action="store_true", help="heartbeat 0.2 s, lease 0.6 s")
    args = parser.parse_args()
    hb, ttl = (0.2, 0.6) if args.fast else (1.0, 3.0)
    runs, n = (3, 100_000) if args.quick else (10, 1_000_000)
    logging.getLogger("mcluster").setLevel(logging.ERROR)
    tag = uuid.uuid4().hex[:8]
    texts = [CONFIG.format(ns=f"fo{tag}-{part}", hb=hb, ttl=ttl) for part in (1, 2, 3)]
    tmp = Path(tempfile.mkdtemp(prefix="mcluster-failover-"))
    (tmp / "mcluster.conf").write_text(texts[0])
    server = start_redis()
    title = f"failover - redis {server.version()} - {machine()} - beat {hb} s, lease {ttl} s"
    report = Report(title)
    Scripts.run = timed_run  # type: ignore[method-assign]
    try:
        worst = asyncio.run(kills(server, tmp / "mcluster.conf", runs, hb, report))
        longest = asyncio.run(reaping(server.url, parse_config(texts[1]), n, report))
        asyncio.run(resync(server.url, parse_config(texts[2]), n, report))
    finally:
        Scripts.run = _run  # type: ignore[method-assign]
        for proc in PROCS:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    detail = f"max {worst:.2f} s <= lease_ttl + 1 s = {ttl + 1:.1f} s"
    report.target("kill -9 -> exact global view", worst <= ttl + 1, detail)
    detail = f"{longest / 1000:.2f} ms <= {SLOW_US / 1000:.0f} ms"
    report.target("longest single command while reaping", longest <= SLOW_US, detail)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    report.figure("machine load average at the end", load, "1, 5, 15 min; other jobs skew timings")
    report.print()
    report.exit(args.strict)


if __name__ == "__main__":
    main()
