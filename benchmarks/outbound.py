"""Outbound connection reports: open/close pairs per second, mcluster against a naive loop.

One redis-server; every case in the same run, in interleaved rounds (a rate is the median
of the rounds, p50/p99 are over every pair of the case):

- **mcluster, Python API**: ``await node.open_connection(route)`` then
  ``await node.close_connection(slot)`` on one in-process ``Node``. Each open checks two
  caps (the domain's ``cluster_max_outbound_connections`` and the MX host's, limits far
  above what the run holds) in one script that takes the slot, and counts the connection
  in four views: ``outbound_cidr`` (by ip), ``outbound_cidr_G`` (the binding's group),
  ``outbound_domains`` and ``outbound_binding_domains``; the close takes it out of all.
- **mcluster, HTTP**: the same through ``POST /v1/connections/open`` and ``/close`` of a
  real ``mcluster agent`` process (aiohttp client in this process, keep-alive).
- **aiohttp floor** (with HTTP): ``benchmarks/_http_floor.py``, an aiohttp process that
  answers the same two requests at once (no decision, no Redis, no middleware): the most
  any HTTP API on aiohttp can do here, the same client in this process driving it.
- **naive**: the same bookkeeping as separate redis-py (asyncio) calls, KumoMTA's lease
  design: open = INCR of each of the 4 view keys (the domain's INCR checked against the
  cap, undone when over) + ZADD of the slot's lease; close = DECR of each + ZREM.

Each at 1 and 50 concurrent callers (asyncio tasks in a closed loop), 10k pairs per case
(``--quick``: 600). The views are then checked: every count back to 0 in Redis (global
view == sum of node views, no anomalies) and the slots all given back. The view counts of
mcluster are events of the node, shipped in batches (``max_delay``), so an open and its
close in the same batch cancel out in memory: that is the design (DESIGN.md, "Deltas, not
states"), and the check after the flush shows nothing is lost.

Targets (issue 16): mcluster >= 3x the naive loop at 50 callers (Python API), p99 <= 2 ms;
HTTP is reported against the same baseline, and against the aiohttp floor.

    /work/venv/bin/python benchmarks/outbound.py [--quick] [--strict] [--no-http] [--pairs N]

``--no-http`` leaves out the HTTP cases and their agent process: the Python API and its
baseline only, the node alone in this process beside the naive loop. ``--pairs`` sets the
pairs per case (default 10,000; 600 with ``--quick``).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import redis
import redis.asyncio
from _redis import RedisServer, run_benchmark
from _report import Report, closed_loop, make_parser, percentile, spawn_floor, who

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects.outbound import Route
from tests.agents import Farm

CALLERS = (1, 50)
RATIO_TARGET = 3.0
P99_TARGET_MS = 2.0
CAP = 1_000_000
VIEWS = """
  Replicate "outbound_cidr" {}
  Replicate "outbound_cidr_G" { class = "outbound_cidr"  binding_group = "G" }
  Replicate "outbound_domains" {}
  Replicate "outbound_binding_domains" {}
"""
EXTRA = f"""
Binding_Group "G" {{ Binding "b1" {{}} }}
Domain "bench.example" {{ cluster_max_outbound_connections = {CAP} }}
Host "mx1.bench.example" {{ cluster_max_outbound_connections = {CAP} }}
"""
REPORT = {"binding": "b1", "domain": "bench.example", "host": "mx1.bench.example",
          "ip": "192.0.2.10"}  # fmt: skip
ROUTE = Route(**REPORT)  # type: ignore[arg-type]

Pair = Callable[[], Awaitable[bool]]


@dataclass
class Case:
    label: str
    callers: int
    pair: Pair
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    redis_cpu: float = 0.0
    agent_cpu: float = 0.0  # the mcluster agent process (the HTTP cases)
    calls: int = 0  # Redis commands, those run by scripts included
    evals: int = 0  # EVALSHA calls
    done: int = 0
    refused: int = 0

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def summary(self) -> str:
        cpu, rcpu = self.cpu / self.done * 1e6, self.redis_cpu / self.done * 1e6
        agent = f" + agent {self.agent_cpu / self.done * 1e6:.0f}" if self.agent_cpu else ""
        trips = self.calls if "naive" in self.label else self.evals
        return (
            f"p50 {self.p(50):.3f} p99 {self.p(99):.3f} | {cpu:.0f} + {rcpu:.0f}{agent} us"
            f" | {trips / self.done:.2f}"
        )


def redis_counters(admin: redis.Redis) -> tuple[float, int, int]:
    """Redis CPU seconds, commands (those scripts run included) and EVALSHA calls."""
    cpu = admin.info("cpu")
    stats = admin.info("commandstats")
    calls = sum(int(v.get("calls", 0)) for v in stats.values())
    evals = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls, evals


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    cases: Sequence[Case], n: int, rounds: int, admin: redis.Redis, agent_pid: int
) -> None:
    for case in cases:  # warm up
        await closed_loop(case.pair, 10 * case.callers, case.callers, [])
    per_round = max(n // rounds, 1)
    for _ in range(rounds):
        for case in cases:
            lat: list[float] = []
            rcpu, calls, evals = redis_counters(admin)
            acpu = process_cpu(agent_pid) if agent_pid else 0.0
            cpu = time.process_time()
            start = time.perf_counter()
            case.refused += await closed_loop(case.pair, per_round, case.callers, lat)
            elapsed = time.perf_counter() - start
            case.cpu += time.process_time() - cpu
            if "HTTP" in case.label:
                case.agent_cpu += process_cpu(agent_pid) - acpu
            rcpu2, calls2, evals2 = redis_counters(admin)
            case.redis_cpu += rcpu2 - rcpu
            case.calls += calls2 - calls - 4  # the INFO calls of the counters
            case.evals += evals2 - evals
            case.rates.append(len(lat) / elapsed)
            case.latencies += lat
            case.done += len(lat)


def python_pair(node: Node, opens: list[float], closes: list[float]) -> Pair:
    """An open and its close through the Python API; each call's latency (s) goes to
    ``opens`` or ``closes``."""
    clock = time.perf_counter

    async def pair() -> bool:
        start = clock()
        opened = await node.open_connection(ROUTE)
        opens.append(clock() - start)
        if not opened.allowed:
            return False
        start = clock()
        closed = await node.close_connection(str(opened.slot))
        closes.append(clock() - start)
        return closed

    return pair


def http_pair(session: aiohttp.ClientSession, base: str) -> Pair:
    open_url, close_url = f"{base}/v1/connections/open", f"{base}/v1/connections/close"

    async def pair() -> bool:
        async with session.post(open_url, json=REPORT) as resp:
            opened = await resp.json()
        if not opened["allowed"]:
            return False
        async with session.post(close_url, json={"slot": opened["slot"]}) as resp:
            return bool((await resp.json())["closed"])

    return pair


async def start_floor(
    session: aiohttp.ClientSession, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``_http_floor.py`` on a free port; the process and its base URL once it answers."""
    log = workdir / "http-floor.log"
    proc, port = spawn_floor("_http_floor.py", log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the aiohttp floor exited: {log.read_text()[-2000:]}")
        try:
            async with session.post(f"{base}/v1/connections/close", json={}) as resp:
                if resp.status == 200:
                    return proc, base
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    proc.kill()
    raise RuntimeError("the aiohttp floor did not start within 30 s")


def naive_pair(client: redis.asyncio.Redis) -> Pair:
    """4 INCR + ZADD to open, 4 DECR + ZREM to close: one round trip each."""
    views = ["naive:cidr:192.0.2.10", "naive:cidr_G:192.0.2.10", "naive:domains:bench.example",
             "naive:binding_domains:b1::bench.example"]  # fmt: skip
    leases = "naive:leases"

    async def pair() -> bool:
        slot = uuid.uuid4().hex
        for key in views:
            used = await client.incr(key)
            if key == views[2] and used > CAP:  # the domain cap: undo and refuse
                for done in views[: views.index(key) + 1]:
                    await client.decr(done)
                return False
        await client.zadd(leases, {slot: time.time() + 30})
        for key in views:
            await client.decr(key)
        await client.zrem(leases, slot)
        return True

    return pair


async def views_drained(node: Node, admin: redis.Redis) -> list[str]:
    """What is left after the run: every view and cap count must be back to 0."""
    await node.flush()
    problems = []
    for obj in ("outbound_cidr", "outbound_cidr_G", "outbound_domains",
                "outbound_binding_domains", "outbound_slots"):  # fmt: skip
        listing = await node.show(obj)
        if listing.rows or listing.anomalies:
            problems.append(f"{obj}: {len(listing.rows)} rows, {listing.anomalies} anomalies")
    left = {k: admin.get(k) for k in admin.keys("naive:*") if k != b"naive:leases"}
    left = {k: v for k, v in left.items() if v != b"0"}
    if left or admin.zcard("naive:leases"):
        problems.append(f"naive counts left: {left}, {admin.zcard('naive:leases')} leases")
    return problems


async def run(
    server: RedisServer, quick: bool, report: Report, http: bool = True, pairs: int = 0
) -> None:
    n = pairs or (600 if quick else 10_000)
    rounds = 2 if quick else 4
    kinds = ("naive", "python", "http", "floor") if http else ("naive", "python")
    admin = server.client()
    report.figure("pairs per case", f"{n:,}", f"{rounds} interleaved rounds; rate = median")
    report.figure("  columns", "pairs/s", "p50 p99 ms | CPU/pair: bench process + redis")
    report.figure("", "", "(+ agent) | round trips per pair: commands")
    report.figure("", "", "(naive), EVALSHA calls (mcluster)")
    report.figure("load average at start", "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-bench-outbound-"))
    farm_views = VIEWS.replace('  Replicate "outbound_domains" {}\n', "")  # the farm has it
    farm = Farm(workdir, redis_server=server, extra_cluster=farm_views, extra=EXTRA)
    config = parse_config(f"cluster {{\n{VIEWS}}}\n{EXTRA}")
    naive = redis.asyncio.Redis(host="127.0.0.1", port=server.port)
    session = None
    floor: subprocess.Popen[bytes] | None = None
    try:
        pid = 0
        if http:
            await farm.start("http-1")
            base = farm.agents["http-1"].base
            pid = farm.agents["http-1"].proc.pid
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
            floor, floor_base = await start_floor(session, workdir)
        async with Node(config, "bench-1", server.url, namespace="bench") as node:
            cases: dict[tuple[str, int], Case] = {}
            calls: dict[int, tuple[list[float], list[float]]] = {}
            for c in CALLERS:
                calls[c] = ([], [])
                cases["naive", c] = Case(f"naive redis-py loop, {who(c)}", c, naive_pair(naive))
                cases["python", c] = Case(
                    f"mcluster Python API, {who(c)}", c, python_pair(node, *calls[c])
                )
                if session is not None:
                    pair = http_pair(session, base)
                    cases["http", c] = Case(f"mcluster HTTP API, {who(c)}", c, pair)
                    pair = http_pair(session, floor_base)
                    cases["floor", c] = Case(f"aiohttp floor (no decision), {who(c)}", c, pair)
            await measure(list(cases.values()), n, rounds, admin, pid)
            problems = await views_drained(node, admin)
            stats = node.connection_stats()
    finally:
        if floor is not None:
            floor.terminate()
            floor.wait(10)
        if session is not None:
            await session.close()
        await naive.aclose()
        await farm.close()  # run_benchmark stops Redis (the farm does not own it)
    for key in kinds:
        for c in CALLERS:
            case = cases[key, c]
            report.figure(case.label, f"{case.rate:,.0f}/s", case.summary())
    ratios = {
        (key, c): cases[key, c].rate / cases["naive", c].rate for key in kinds[1:] for c in CALLERS
    }
    for (key, c), ratio in ratios.items():
        report.figure(f"{key} / naive, {who(c)}", f"{ratio:.2f}x")
    if http:
        for c in CALLERS:  # how much of what aiohttp itself allows the agent gets
            share = cases["http", c].rate / cases["floor", c].rate
            report.figure(f"http / floor, {who(c)}", f"{share:.2f}x")
    for c in CALLERS:  # the warm-up's calls included: a few more than the pairs measured
        opens, closes = (sorted(x) for x in calls[c])
        report.figure(
            f"Python API, {who(c)}, per call", "open / close",
            f"p50 {percentile(opens, 50) * 1000:.3f} / {percentile(closes, 50) * 1000:.3f}, "
            f"p99 {percentile(opens, 99) * 1000:.3f} / {percentile(closes, 99) * 1000:.3f} ms",
        )  # fmt: skip
    # Little's law: c callers that each wait for their pair make the mean pair latency
    # c / rate, whatever the code; a p99 under P99_TARGET_MS needs at least this rate.
    py50 = cases["python", 50]
    report.figure(
        "closed loop, 50 callers", f"{50 / py50.rate * 1000:.3f} ms",
        f"mean pair latency = 50 / {py50.rate:,.0f} pairs/s; a mean of {P99_TARGET_MS} ms "
        f"needs {50 / P99_TARGET_MS * 1000:,.0f} pairs/s",
    )  # fmt: skip
    if stats is not None:
        report.figure("Python API node: opened / closed", f"{stats.opened:,} / {stats.closed:,}",
                      f"refused {sum(stats.refused.values())}")  # fmt: skip
    report.figure("load average at end", "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    report.target(
        "Python API vs naive, 50 callers",
        ratios["python", 50] >= RATIO_TARGET,
        f"{ratios['python', 50]:.2f}x >= {RATIO_TARGET}x",
    )
    report.target(
        "Python API p99, 50 callers", py50.p(99) <= P99_TARGET_MS,
        f"{py50.p(99):.3f} ms <= {P99_TARGET_MS} ms",
    )  # fmt: skip
    if http:
        http50 = cases["http", 50]
        report.target(
            "HTTP API vs naive, 50 callers",
            ratios["http", 50] >= RATIO_TARGET,
            f"{ratios['http', 50]:.2f}x >= {RATIO_TARGET}x (p99 {http50.p(99):.3f} ms)",
        )
    refused = sum(c.refused for c in cases.values())
    report.target("every pair admitted and closed", refused == 0, f"{refused} refused")
    report.target("views and slots drained after the run", not problems,
                  "; ".join(problems) or "every count back to 0, no anomalies")  # fmt: skip


def main() -> None:
    parser = make_parser(__doc__ or "")
    parser.add_argument("--no-http", action="store_true", help="leave out the HTTP API cases")
    parser.add_argument("--pairs", type=int, default=0, help="pairs per case")
    args = parser.parse_args()
    if args.pairs < 0:
        parser.error(f"--pairs must be positive, got {args.pairs}")
    run_benchmark(
        "outbound connection reports",
        args.strict,
        lambda server, report: run(server, args.quick, report, not args.no_http, args.pairs),
        limit=240 if args.quick else 1200,
        loop=args.loop,
    )


if __name__ == "__main__":
    sys.exit(main())
