"""What shaping costs an OBTM decision: ``node.outbound_message`` on three routes.

- ``plain``: a domain with a ``cluster_outbound_throttle_messages`` bucket and no shaping
  rule: no shaping check (the route is not shaped), one ``throttle_one`` call;
- ``shaped``: the same with a ``Shaping`` rule on the domain (nothing in force): one
  ``shaping_check`` call, then the same decision;
- ``adaptive``: an ``Adaptive`` destination: the check, then a 2-limit decision (the
  configured bucket and the AIMD bucket).

Each with 1 and 50 concurrent callers (asyncio tasks in a closed loop), interleaved rounds
(a rate is the median of the rounds), every decision allowed (the rates are huge). Also a
suspension: ``suspended`` decisions/s answered by the check alone. Reports decisions/s,
p50/p99 latency and the ratio shaped/plain. No target from the issue: a measurement.

    python benchmarks/shaping.py [--quick]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from _redis import RedisServer, run_benchmark
from _report import Report, make_parser, percentile

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.objects.outbound import Route
from mcluster.shaping.model import Outcome

RATE = "1000000000/10"
CONFIG = f"""cluster {{
  Replicate "OBTM" {{}}
  Replicate "outbound_binding_domains" {{}}
}}
Domain "plain.test" {{ cluster_outbound_throttle_messages = "{RATE}" }}
Domain "shaped.test" {{ cluster_outbound_throttle_messages = "{RATE}" }}
Domain "adaptive.test" {{ cluster_outbound_throttle_messages = "{RATE}" }}
Domain "held.test" {{ cluster_outbound_throttle_messages = "{RATE}" }}
Shaping "s" {{ domain = "shaped.test"  match = "/TS0[1-4]/"  action = "suspend" }}
Shaping "h" {{ domain = "held.test"  match = "/TS0[1-4]/"  action = "suspend"  duration = 3600 }}
Adaptive "a" {{ domain = "adaptive.test"  min = "1000/1"  max = "{RATE}"  increase = "1/1" }}
"""
CALLERS = (1, 50)


@dataclass
class Case:
    name: str
    callers: int
    call: Callable[[], Awaitable[bool]]
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def closed_loop(case: Case, n: int) -> float:
    left = n

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            await case.call()
            case.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(case.callers)))
    return n / (time.perf_counter() - start)


async def run(server: RedisServer, report: Report, quick: bool) -> None:
    n, rounds = (300, 2) if quick else (5000, 5)
    async with Node(parse_config(CONFIG), "bench-1", server.url, namespace="bench") as node:
        await node.outbound_outcome(Outcome("b1", "held.test", 421, "4.7.0 [TS01]"))

        degraded: dict[str, int] = {}

        def decide(domain: str, want: bool) -> Callable[[], Awaitable[bool]]:
            route = Route("b1", domain)

            async def call() -> bool:
                decision = await node.outbound_message(route)
                if decision.degraded:
                    degraded[domain] = degraded.get(domain, 0) + 1
                elif decision.allowed != want:
                    raise AssertionError(f"{domain}: {decision}")
                return decision.allowed

            return call

        cases = [
            Case(f"{name} ({c} caller{'s' if c > 1 else ''})", c, decide(f"{name}.test", want))
            for name, want in (
                ("plain", True),
                ("shaped", True),
                ("adaptive", True),
                ("held", False),
            )
            for c in CALLERS
        ]
        for case in cases:  # warm up: scripts loaded, connections open
            await closed_loop(case, 50)
            case.latencies.clear()
        for _ in range(rounds):
            for case in cases:
                case.rates.append(await closed_loop(case, n))
    report.figure("decisions per case", f"{n * rounds:,}", f"{rounds} interleaved rounds")
    report.figure("load average at start", "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    by_name = {}
    for case in cases:
        rate = statistics.median(case.rates)
        by_name[case.name] = rate
        p50, p99 = (percentile(case.latencies, q) * 1000 for q in (50, 99))
        report.figure(case.name, f"{rate:,.0f}/s", f"p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    report.figure("degraded decisions", str(sum(degraded.values())), str(degraded or ""))
    report.target("no decision degraded", not degraded, str(degraded or "none"))
    for c in CALLERS:
        suffix = f"({c} caller{'s' if c > 1 else ''})"
        plain = by_name[f"plain {suffix}"]
        for name in ("shaped", "adaptive"):
            ratio = by_name[f"{name} {suffix}"] / plain
            report.figure(f"{name}/plain {suffix}", f"{ratio:.2f}x")


def main() -> None:
    args = make_parser(__doc__ or "").parse_args()
    run_benchmark("shaping", args.strict, lambda s, r: run(s, r, args.quick), 600)


if __name__ == "__main__":
    main()
