"""Cluster-wide throttles: decisions/s and latency of mcluster against the ``limits`` library.

One process, one redis-server, side by side (every decision is allowed: the rates are huge,
so what is measured is the cost of a decision, not of a denial):

- ``limits`` 5.8 with its async Redis storage on redis-py (``implementation="redispy"``),
  fixed window and moving window, ``hit()`` of one ``RateLimitItemPerSecond(10**9)``;
- mcluster exact mode, ``node.throttles.acquire([("t1", 1)])`` on a "1000000000/10"
  throttle (deadline_ms 5000, so a busy machine cannot turn a decision into a degraded one);
- mcluster local quota mode on the same rate, when the package has it ("not built yet" if not);
- each with 1 and with 50 concurrent callers (asyncio tasks in a closed loop), 20k decisions
  per case (--quick 3k), in interleaved rounds: a rate is the median of the rounds (robust to
  other work on the machine), p50/p99 are over every decision of the case;
- a 3-limit all-or-nothing ``acquire([("a",1),("b",1),("c",1)])`` against three sequential
  ``hit()`` of the faster ``limits`` strategy, at 50 callers.

Besides decisions/s and latency, it reports the CPU spent per decision in this process and
in redis-server (INFO cpu) and the EVALSHA calls per decision: those hold still when other
work shares the cores, and say where the time goes. Targets (from the issue): exact mode
>= 2.5x the faster ``limits`` strategy at 50 callers, with p99 <= 1.5 ms; exact mode no
slower than the faster ``limits`` strategy at 1 caller; the 3-limit acquire >= 2.5x three
sequential hits; and every decision allowed, none degraded.

``--whatif`` then measures prototypes of changes to ``Throttles._decide``/``_work``,
monkeypatched into this process only (the package is not touched), against the unpatched
code in the same interleaved rounds, and the Lua cost of one ``throttle_acquire`` call.

    /work/venv/bin/python benchmarks/throttle.py [--quick] [--strict] [--whatif]

Both sides use redis-py clients as they come (socket_timeout 5 s, redis-py 8's default for
``limits``, mcluster's own for the node). Needs ``limits`` (``pip install 'limits==5.8.*'``:
its redis-py storage needs no extra; ``limits[async-redis]`` pulls coredis instead, and
``limits[redis]`` pins redis < 8).
"""

from __future__ import annotations

import asyncio
import collections
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from _redis import RedisServer, run_benchmark
from _report import Report, closed_loop, make_parser, percentile, who
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from mcluster.agent import throttles as throttles_mod
from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects import throttle
from mcluster.objects.throttle import Decision, Request
from mcluster.store.scripts import Scripts, script_source

RATE = "1000000000/10"
CONFIG = f"""cluster {{
  Replicate "shared_named_throttles" {{}}
  Shared_Throttle "t1" {{ rate = "{RATE}" deadline_ms = 5000 }}
  Shared_Throttle "a" {{ rate = "{RATE}" deadline_ms = 5000 }}
  Shared_Throttle "b" {{ rate = "{RATE}" deadline_ms = 5000 }}
  Shared_Throttle "c" {{ rate = "{RATE}" deadline_ms = 5000 }}
  Shared_Throttle "lq" {{ rate = "{RATE}" mode = "local_quota" deadline_ms = 5000 }}
}}"""
CALLERS = (1, 50)
RATIO_TARGET = 2.5
P99_TARGET_MS = 1.5
LOCAL_TARGET = 20.0
THREE = [("a", 1), ("b", 1), ("c", 1)]

Call = Callable[[], Awaitable[Any]]


def allowed(result: Any) -> bool:
    """An allowed, not degraded decision (a ``limits`` hit is True when allowed)."""
    if isinstance(result, Decision):
        return result.allowed and not result.degraded
    return result is True


@dataclass
class Case:
    label: str
    callers: int
    call: Call
    before: Callable[[], None] | None = None  # run before each round (the what-if patches)
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # seconds of this process
    redis_cpu: float = 0.0  # seconds of redis-server
    evals: int = 0  # EVALSHA calls
    done: int = 0
    refused: int = 0  # not allowed, or degraded

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def summary(self) -> str:
        cpu, rcpu = self.cpu / self.done * 1e6, self.redis_cpu / self.done * 1e6
        return (
            f"p50 {self.p(50):.3f} p99 {self.p(99):.3f} | {cpu:.0f} + {rcpu:.1f} us"
            f" | {self.evals / self.done:.2f}"
        )


def redis_counters(admin: redis.Redis) -> tuple[float, int]:
    cpu = admin.info("cpu")
    evals = admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(evals)


async def one_round(case: Case, n: int, admin: redis.Redis) -> None:
    if case.before is not None:
        case.before()
    lat: list[float] = []
    rcpu, evals = redis_counters(admin)
    cpu = time.process_time()
    start = time.perf_counter()
    case.refused += await closed_loop(case.call, n, case.callers, lat, allowed)
    elapsed = time.perf_counter() - start
    case.cpu += time.process_time() - cpu
    rcpu2, evals2 = redis_counters(admin)
    case.redis_cpu += rcpu2 - rcpu
    case.evals += evals2 - evals
    case.rates.append(len(lat) / elapsed)
    case.latencies += lat
    case.done += len(lat)


async def measure(cases: Sequence[Case], n: int, rounds: int, admin: redis.Redis) -> None:
    """Warm every case up, then run them in interleaved rounds of n / rounds decisions."""
    for case in cases:
        if case.before is not None:
            case.before()
        await closed_loop(case.call, 10 * case.callers, case.callers, [])
    per_round = max(n // rounds, 1)
    for _ in range(rounds):
        for case in cases:
            await one_round(case, per_round, admin)


async def local_quota_built(node: Node) -> bool:
    """True when ``mode = "local_quota"`` decides in process (the stats say so)."""
    before = getattr(node.throttles.stats, "local_decisions", None)
    if before is None:
        return False
    for _ in range(200):
        await node.throttles.acquire([("lq", 1)])
    return int(node.throttles.stats.local_decisions) > before


def limits_storage(server: RedisServer) -> RedisStorage:
    return RedisStorage(f"async+redis://127.0.0.1:{server.port}/0", implementation="redispy")


async def run(server: RedisServer, quick: bool, whatif: bool, report: Report) -> None:
    n = 3_000 if quick else 20_000
    rounds = 3 if quick else 4
    admin = server.client()
    storage = limits_storage(server)
    item = RateLimitItemPerSecond(10**9)
    fixed = FixedWindowRateLimiter(storage)
    moving = MovingWindowRateLimiter(storage)
    report.figure("decisions per case", f"{n:,}", f"{rounds} interleaved rounds; rate = median")
    report.figure("  columns", "decisions/s", "p50 p99 ms | CPU/decision: client + redis")
    report.figure("", "", "| EVALSHA per decision")
    report.figure("load average at start", "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))

    async with Node(parse_config(CONFIG), "bench-1", server.url, namespace="bench") as node:
        acquire = node.throttles.acquire
        has_local = await local_quota_built(node)
        stats0 = dict(vars(node.throttles.stats))

        def lim_fixed(key: str) -> Call:
            return lambda: fixed.hit(item, key)

        def lim_moving(key: str) -> Call:
            return lambda: moving.hit(item, key)

        def exact(limits: list[tuple[str, int]]) -> Call:
            return lambda: acquire(limits)

        def three_hits(hit: Callable[[str], Call], tag: str) -> Call:
            calls = [hit(f"{tag}-{name}") for name, _ in THREE]

            async def go() -> bool:
                ok = True
                for call in calls:
                    ok = await call() and ok
                return ok

            return go

        main: dict[tuple[str, int], Case] = {}
        for c in CALLERS:
            main["fixed", c] = Case(f"limits fixed window, {who(c)}", c, lim_fixed(f"f{c}"))
            main["moving", c] = Case(f"limits moving window, {who(c)}", c, lim_moving(f"m{c}"))
            main["exact", c] = Case(f"mcluster exact, {who(c)}", c, exact([("t1", 1)]))
            if has_local:
                main["local", c] = Case(f"mcluster local quota, {who(c)}", c, exact([("lq", 1)]))
        await measure(list(main.values()), n, rounds, admin)

        # the 3-limit comparison runs against the faster limits strategy at 50 callers
        faster50 = "fixed" if main["fixed", 50].rate >= main["moving", 50].rate else "moving"
        hit = lim_fixed if faster50 == "fixed" else lim_moving
        three = {
            "exact3": Case("mcluster acquire a+b+c, 50 callers", 50, exact(THREE)),
            "seq3": Case(f"limits {faster50} x3 in a row, 50 callers", 50, three_hits(hit, "s")),
        }
        await measure(list(three.values()), n, rounds, admin)
        stats = {k: v - stats0.get(k, 0) for k, v in vars(node.throttles.stats).items()}

        for c in CALLERS:
            for key in ("fixed", "moving", "exact", "local"):
                case = main.get((key, c))
                if case is None:
                    report.figure(f"mcluster local quota, {who(c)}", "not built yet")
                    continue
                report.figure(case.label, f"{case.rate:,.0f}/s", case.summary())
        for case in three.values():
            report.figure(case.label, f"{case.rate:,.0f}/s", case.summary())

        best = {c: max(main["fixed", c].rate, main["moving", c].rate) for c in CALLERS}
        best_name = {
            c: "fixed" if main["fixed", c].rate >= main["moving", c].rate else "moving"
            for c in CALLERS
        }
        ratios = {c: main["exact", c].rate / best[c] for c in CALLERS}
        for c in CALLERS:
            slower = min(main["fixed", c].rate, main["moving", c].rate)
            report.figure(
                f"exact / limits {best_name[c]}, {who(c)}",
                f"{ratios[c]:.2f}x",
                f"the faster strategy (/ the other: {main['exact', c].rate / slower:.2f}x)",
            )
        local_vs_exact = {c: 0.0 for c in CALLERS}
        if has_local:
            for c in CALLERS:
                report.figure(
                    f"local quota / limits {best_name[c]}, {who(c)}",
                    f"{main['local', c].rate / best[c]:.1f}x",
                )
            for c in CALLERS:
                local_vs_exact[c] = main["local", c].rate / main["exact", c].rate
                report.figure(
                    f"local quota / exact, {who(c)}",
                    f"{local_vs_exact[c]:.1f}x",
                    "exact batches ~50 decisions per call at 50 callers" if c > 1 else "",
                )
        ratio3 = three["exact3"].rate / three["seq3"].rate
        report.figure("acquire a+b+c / limits x3 in a row", f"{ratio3:.2f}x", "50 callers")
        exact50 = main["exact", 50]
        report.figure(
            "exact, 50 callers: decisions per batch", f"{exact50.done / max(1, exact50.evals):.1f}"
        )
        report.figure(
            "throttle stats (this run)",
            f"{stats.get('decisions', 0):,}",
            ", ".join(f"{k} {v:,}" for k, v in stats.items() if k != "decisions"),
        )
        refused = sum(c.refused for c in (*main.values(), *three.values()))

        if whatif:
            await what_if(node, server, n, rounds, admin, report)
    lua_costs(server, report)

    report.figure("load average at end", "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))

    report.target(
        "exact vs limits, 50 callers",
        ratios[50] >= RATIO_TARGET,
        f"{ratios[50]:.2f}x the faster ({best_name[50]} window) >= {RATIO_TARGET}x",
    )
    report.target(
        "exact p99, 50 callers",
        exact50.p(99) <= P99_TARGET_MS,
        f"{exact50.p(99):.3f} ms <= {P99_TARGET_MS} ms",
    )
    report.target(
        "exact vs limits, 1 caller",
        ratios[1] >= 1.0,
        f"{ratios[1]:.2f}x the faster ({best_name[1]} window) >= 1.0x "
        f"(p50 {main['exact', 1].p(50):.3f} vs {main[best_name[1], 1].p(50):.3f} ms)",
    )
    report.target(
        "3-limit acquire vs 3 hits in a row",
        ratio3 >= RATIO_TARGET,
        f"{ratio3:.2f}x >= {RATIO_TARGET}x at 50 callers",
    )
    report.target(
        "local quota vs exact, 1 caller",
        local_vs_exact[1] >= LOCAL_TARGET,
        f"{local_vs_exact[1]:.1f}x >= {LOCAL_TARGET}x (50 callers: {local_vs_exact[50]:.1f}x)",
    )
    report.target(
        "every decision allowed",
        refused == 0 and stats.get("degraded_allow", 0) + stats.get("degraded_deny", 0) == 0,
        f"{refused} refused or degraded",
    )


# -- what if: prototypes monkeypatched into Throttles, in this process only -----------------


@dataclass(frozen=True)
class WhatIf:
    """One prototype of ``Throttles._decide``/``_work``.

    deadline: "wait_for" (as shipped: ``wait_for(shield(future))``), "timer" (await the
    future, a ``loop.call_later`` fails it at the deadline), "batch" (one ``call_at`` timer
    for every outstanding request, re-armed when it fires). inflight: script calls in flight
    at once. one_arg: ARGV sent as one "K,n,p,w,...,flags,m,k,cost,..." string (the Lua
    splits it). inline: when nothing is in flight the caller sends its request itself (no
    task hop), interrupted at the deadline by ``asyncio.timeout`` or by the batch timer
    cancelling it (on Python 3.11 redis-py's ``wait_for`` around a socket write may swallow
    that cancel: safe only without socket_timeout, or on 3.12+). plain_client: the throttle
    calls on a client with socket_timeout=None (redis-py 8 defaults to 5 s, which costs a
    task per write and a timer per read) and no health checks.
    """

    label: str
    deadline: str = "wait_for"
    inflight: int = 1
    one_arg: bool = False
    inline: bool = False
    plain_client: bool = False


WHATIFS = [
    WhatIf("as shipped, re-implemented"),
    WhatIf("2 batches in flight", inflight=2),
    WhatIf("no socket_timeout on its client", plain_client=True),
    WhatIf("call_later, not wait_for+shield", deadline="timer"),
    WhatIf("one deadline timer per batch", deadline="batch"),
    WhatIf("batch timer + 1-string ARGV", deadline="batch", one_arg=True),
    WhatIf("  + an idle caller sends itself", deadline="batch", one_arg=True, inline=True),
    WhatIf("  + no socket_timeout", deadline="batch", one_arg=True, inline=True, plain_client=True),
]


def one_arg_lua() -> str | None:
    """throttle_acquire reading all of its ARGV from one comma-separated string."""
    source = script_source("throttle_acquire")
    anchor = "local K = tonumber(ARGV[1])"
    if anchor not in source:
        return None
    head, tail = source.split(anchor, 1)
    split = "local A = {}\nfor v in string.gmatch(ARGV[1], '%d+') do A[#A + 1] = tonumber(v) end\n"
    return head + split + (anchor + tail).replace("#ARGV", "#A").replace("ARGV[", "A[")


def plan_one_arg(
    cache: dict[str, tuple[str, str]], okeys: Any, requests: Sequence[Request], defs: Any
) -> tuple[list[str], list[str]]:
    number: dict[str, int] = {}
    keys: list[str] = []
    head: list[str] = []
    tail: list[str] = []
    for request in requests:
        tail += ("1" if request.force else "0", str(len(request.limits)))
        for name, cost in request.limits:
            k = number.get(name)
            if k is None:
                k = number[name] = len(number) + 1
                entry = cache.get(name)
                if entry is None:
                    r = defs[name].parsed
                    key = throttle.window_key(okeys, name)
                    entry = cache[name] = (key, f"{r.count},{r.period_ms},{r.bucket_ms}")
                keys.append(entry[0])
                head.append(entry[1])
            tail += (str(k), str(cost))
    return keys, [f"{len(keys)},{','.join(head)},{','.join(tail)}"]


class Proto:
    """The state of one prototype on one Throttles instance."""

    def __init__(self, wi: WhatIf, th: Any, scripts: Scripts) -> None:
        self.wi = wi
        self.th = th
        self.scripts = scripts
        self.pending: list[tuple[Request, asyncio.Future[Decision], float]] = []
        self.workers = 0
        self.outstanding: collections.deque[tuple[Request, asyncio.Future[Decision], float]]
        self.outstanding = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.leader: tuple[asyncio.Task[Any] | None, asyncio.Future[Decision]] | None = None
        self.plans: dict[str, tuple[str, str]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        lua = one_arg_lua() if wi.one_arg else None
        self.script = scripts.client.register_script(lua) if lua else None
        if wi.one_arg and lua is None:
            raise RuntimeError("throttle_acquire.lua changed: cannot build the 1-arg variant")

    def degraded(self, request: Request) -> Decision:
        tdefs = [self.th.defs[n] for n, _ in request.limits]
        allow = all(t.on_error == "allow" for t in tdefs)
        if allow:
            self.th.stats.degraded_allow += 1
        else:
            self.th.stats.degraded_deny += 1
        return Decision(allow, 0, tuple((n, -1) for n, _ in request.limits), degraded=True)

    async def decide(self, request: Request) -> Decision:
        th, wi = self.th, self.wi
        timeout = max(th.defs[n].deadline_ms for n, _ in request.limits) / 1000
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        entry = (request, future, loop.time() + timeout)
        if wi.deadline == "batch":
            self.outstanding.append(entry)
            if self.timer is None:
                self.timer = loop.call_at(entry[2], self.expire)
        if wi.inline and not self.workers and not self.pending:
            self.workers += 1  # the caller is the one in flight, no task hop
            try:
                if wi.deadline == "batch":  # the shared timer cancels us at the deadline
                    self.leader = (asyncio.current_task(), future)
                    try:
                        await self.send([entry])
                    finally:
                        self.leader = None
                else:
                    async with asyncio.timeout(timeout):
                        await self.send([entry])
            except asyncio.CancelledError:
                timed_out = future.done() and not future.cancelled() and future.exception()
                if not isinstance(timed_out, TimeoutError):
                    raise  # cancelled from outside, not by our deadline
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            except TimeoutError:
                pass
            finally:
                self.workers -= 1
                self.prune()
                self.kick(loop)
            if not future.done():
                return self.degraded(request)
        else:
            self.pending.append(entry)
            self.kick(loop)
        try:
            if future.done():
                decision = future.result()
            elif wi.deadline == "wait_for":
                decision = await asyncio.wait_for(asyncio.shield(future), timeout)
            elif wi.deadline == "timer":
                handle = loop.call_later(timeout, fail, future)
                try:
                    decision = await future
                finally:
                    handle.cancel()
            else:
                decision = await future
        except (TimeoutError, *throttles_mod.RETRY_ERRORS):
            return self.degraded(request)
        th.stats.decisions += 1
        th.stats.allowed += decision.allowed
        return decision

    def expire(self) -> None:
        """The batch timer: fail what is past its deadline, re-arm for the oldest left."""
        loop = asyncio.get_running_loop()
        self.timer = None
        now = loop.time()
        for _, future, at in self.outstanding:
            if not future.done() and at <= now:
                future.set_exception(TimeoutError())
                future.exception()  # retrieved: its caller may be gone
                if self.leader is not None and self.leader[1] is future and self.leader[0]:
                    self.leader[0].cancel()  # it awaits Redis itself: interrupt it
        self.outstanding = collections.deque(e for e in self.outstanding if not e[1].done())
        if self.outstanding:
            self.timer = loop.call_at(min(e[2] for e in self.outstanding), self.expire)

    def prune(self) -> None:
        while self.outstanding and self.outstanding[0][1].done():
            self.outstanding.popleft()

    def kick(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.pending and self.workers < self.wi.inflight:
            self.workers += 1
            task = loop.create_task(self.work())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def work(self) -> None:
        try:
            while True:
                if not self.pending and self.wi.inline:
                    await asyncio.sleep(0)  # let the callers just answered queue up again
                if not self.pending:
                    return
                batch = self.pending[: throttles_mod.MAX_BATCH]
                self.pending = self.pending[throttles_mod.MAX_BATCH :]
                await self.send(batch)
                self.prune()
        finally:
            self.workers -= 1

    async def send(self, batch: list[tuple[Request, asyncio.Future[Decision], float]]) -> None:
        th = self.th
        requests = [r for r, _, _ in batch]
        try:
            if self.script is not None:
                keys, args = plan_one_arg(self.plans, th.okeys, requests, th.defs)
                reply = await self.script(keys, args)
            else:
                keys2, args2 = throttle.plan(th.okeys, requests, th.defs, th.node)
                reply = await self.scripts.run("throttle_acquire", keys2, args2)
        except Exception as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        th.stats.batches += 1
        for (_, future, _), decision in zip(
            batch, throttle.decisions(requests, reply), strict=True
        ):
            if not future.done():
                future.set_result(decision)


def fail(future: asyncio.Future[Decision]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def what_if(
    node: Node, server: RedisServer, n: int, rounds: int, admin: redis.Redis, report: Report
) -> None:
    th = node.throttles
    plain = redis.asyncio.Redis(host="127.0.0.1", port=server.port, socket_timeout=None)
    protos: dict[str, Proto] = {}
    for wi in WHATIFS:
        try:
            protos[wi.label] = Proto(wi, th, Scripts(plain) if wi.plain_client else node.scripts)
        except RuntimeError as exc:
            report.figure(f"what if: {wi.label}", "n/a", str(exc))

    def use(proto: Proto | None) -> Callable[[], None]:
        def swap() -> None:  # the prototype decides for this instance; acquire() is unchanged
            if proto is None:
                th.__dict__.pop("_decide", None)
            else:
                th._decide = proto.decide

        return swap

    def call() -> Awaitable[Decision]:
        return th.acquire([("t1", 1)])

    # the same client change offered to limits, for a fair reading of the 1-caller rows
    storage = RedisStorage(
        f"async+redis://127.0.0.1:{server.port}/0", implementation="redispy", socket_timeout=None
    )
    fixed = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(10**9)

    def hit() -> Awaitable[bool]:
        return fixed.hit(item, "whatif")

    cases: dict[tuple[str, int], Case] = {}
    for c in CALLERS:
        cases["shipped", c] = Case("exact as shipped", c, call, use(None))
        for label, proto in protos.items():
            cases[label, c] = Case(label, c, call, use(proto))
        cases["limits", c] = Case("(limits fixed, no socket_timeout)", c, hit, use(None))
    try:
        await measure(list(cases.values()), n, rounds, admin)
    finally:
        th.__dict__.pop("_decide", None)
        await plain.aclose()

    report.figure("what if (monkeypatched here)", "decisions/s", "vs shipped | p50 p99 ms | client")
    report.figure("", "", "CPU/decision | decisions per EVALSHA")
    for c in CALLERS:
        base = cases["shipped", c]
        for key in ("shipped", *protos, "limits"):
            case = cases[key, c]
            note = (
                f"{case.rate / base.rate:.2f}x | {case.p(50):.3f} {case.p(99):.3f}"
                f" | {case.cpu / case.done * 1e6:.1f} us | {case.done / max(1, case.evals):.0f}"
            )
            if case.refused:
                note += f" | {case.refused} refused!"
            report.figure(f"{c:>3}: {case.label}", f"{case.rate:,.0f}/s", note)


# throttle_acquire as it was before the running sum: it read every bucket of the window
OLD_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local K = tonumber(ARGV[1])
local limits = {}
for k = 1, K do
  local base = 2 + 3 * (k - 1)
  local L = {n = tonumber(ARGV[base]), p = tonumber(ARGV[base + 1]),
             w = tonumber(ARGV[base + 2]), used = 0, add = 0}
  L.cur = math.floor(now / L.w)
  local oldest = math.floor((now - L.p) / L.w)
  local h = redis.call('HGETALL', KEYS[k])
  for i = 1, #h, 2 do
    local b, c = tonumber(h[i]), tonumber(h[i + 1])
    if b < oldest then redis.call('HDEL', KEYS[k], h[i]) else L.used = L.used + c end
  end
  limits[k] = L
end
local out = {now}
local i = 2 + 3 * K
while i <= #ARGV do
  local m = tonumber(ARGV[i + 1])
  i = i + 2
  local costs, order = {}, {}
  for j = 1, m do
    local k, cost = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
    i = i + 2
    order[j] = k
    costs[k] = (costs[k] or 0) + cost
  end
  local ok = true
  for k, cost in pairs(costs) do
    local L = limits[k]
    if L.n > 0 and L.used + cost > L.n then ok = false end
  end
  if ok then
    for k, cost in pairs(costs) do
      limits[k].used = limits[k].used + cost
      limits[k].add = limits[k].add + cost
    end
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = 0
  for j = 1, m do out[#out + 1] = limits[order[j]].n - limits[order[j]].used end
end
for k = 1, K do
  local L = limits[k]
  if L.add > 0 then
    for _, key in ipairs({KEYS[k], KEYS[K + k]}) do
      redis.call('HINCRBY', key, L.cur, L.add)
      redis.call('PEXPIRE', key, L.p + L.w)
    end
  end
end
return out
"""


def lua_costs(server: RedisServer, report: Report) -> None:
    """Redis time of one call (usec_per_call), one request, the window full (11 buckets)."""
    client = server.client()
    source = script_source("throttle_acquire")
    variants = {
        "throttle_one (1 request, 1 limit)": script_source("throttle_one"),
        "throttle_acquire, 1 request": source,
        "  the same, before the running sum (0.1)": OLD_ACQUIRE,
        "  a script returning 4 ints": "return {1, 1, 0, 5}",
        "limits incr_expire (fixed window)": (
            "local c = redis.call('incrby', KEYS[1], ARGV[2]) if tonumber(c) == "
            "tonumber(ARGV[2]) then redis.call('expire', KEYS[1], ARGV[1]) end return c"
        ),
    }
    for name, text in variants.items():
        script = client.register_script(text)
        if name.startswith("limits"):
            keys, args = ["lua-bench:incr"], [10, 1]
        elif name.startswith("throttle_one"):
            keys, args = ["{lua-bench}:w", "{lua-bench}:s"], [10**9, 100, 10, 1, 0]
            client.delete(*keys)
        else:  # a 100 ms window of 10 ms buckets: filled with 11 buckets in 0.2 s
            keys, args = ["{lua-bench}:w", "{lua-bench}:s"], [1, 10**9, 100, 10, 0, 1, 1, 1]
            client.delete(*keys)
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            script(keys, args)
        client.config_resetstat()
        for _ in range(3000):
            script(keys, args)
        usec = float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
        report.figure(f"Lua: {name}", f"{usec:.1f} us", "Redis time per EVALSHA")
    client.close()


def main() -> None:
    parser = make_parser("Cluster-wide throttles: mcluster exact mode against limits.")
    parser.add_argument(
        "--whatif", action="store_true", help="also measure prototypes of faster code paths"
    )
    args = parser.parse_args()
    run_benchmark(
        "throttle",
        args.strict,
        lambda server, report: run(server, args.quick, args.whatif, report),
        (120 if args.quick else 600) * (3 if args.whatif else 1),
    )


if __name__ == "__main__":
    main()
