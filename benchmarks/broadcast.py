"""Console commands over Redis: broadcast round trip to 3 agents, and a silent node.

Three real ``mcluster agent`` processes on one redis-server answer console requests
(``store/requests``: a request list per member, a reply list per request).

(1) ``broadcast cluster nodename`` from a console (as ``run_command`` runs it: member
    lookup, a job record, the requests, every answer): round-trip p50/p99 over N runs.
    Baselines in the same run: a plain Redis PING round trip, and ``unicast n1 cluster
    nodename`` (one member, no job). Target: broadcast p99 <= 100 ms.
(2) one agent stopped (SIGSTOP): a broadcast with a timeout of T answers after T, with
    the silent node reported as ``timeout`` and the others' answers. Target: the console
    returns within T + 0.5 s, never waiting longer for the silent node.

    /work/venv/bin/python benchmarks/broadcast.py [--quick] [--strict] [--runs N]
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _redis import RedisServer, run_benchmark
from _report import Report, make_parser, percentile

from mcluster.console import ConsoleContext, run_command
from mcluster.store import requests
from tests.agents import Farm, until

NODES = ("n1", "n2", "n3")
TARGET_P99_MS = 100.0
SILENT_SLACK = 0.5


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def timed(runs: int, work: Callable[[], Awaitable[None]]) -> list[float]:
    """Seconds each of ``runs`` awaits of ``work()`` took."""
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        await work()
        out.append(time.perf_counter() - started)
    return out


async def measure(server: RedisServer, report: Report, runs: int, silent_timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="mcluster-bench-") as tmp:
        farm = Farm(Path(tmp), heartbeat=0.5, lease_ttl=1.5, redis_server=server)
        try:
            await farm.start(*NODES)
            ctx = ConsoleContext(farm.client, farm.keys, timeout=2.0)

            async def answered() -> bool:
                return len(await requests.responders(farm.client, farm.keys)) == len(NODES)

            await until(answered, 20, what="every agent answers console requests")

            async def broadcast() -> None:
                result = await run_command(ctx, "broadcast cluster nodename")
                assert result.data == {n: {"ok": True, "output": n} for n in NODES}, result.data

            async def unicast() -> None:
                result = await run_command(ctx, "unicast n1 cluster nodename")
                assert result.data == {"n1": {"ok": True, "output": "n1"}}, result.data

            async def ping() -> None:
                await farm.client.ping()

            await timed(5, broadcast)  # warm up: connections, scripts, imports
            pings = await timed(runs, ping)
            unicasts = await timed(runs, unicast)
            broadcasts = await timed(runs, broadcast)
            for name, values in (("PING round trip (baseline)", pings),
                                 ("unicast n1 (baseline)", unicasts),
                                 (f"broadcast to {len(NODES)} agents", broadcasts)):  # fmt: skip
                p50, p99 = percentile(values, 50), percentile(values, 99)
                report.figure(name, f"{ms(p50)} p50", f"p99 {ms(p99)}, {runs} runs")
            ratio = percentile(broadcasts, 50) / percentile(pings, 50)
            report.figure("broadcast / PING", f"{ratio:.0f}x", "p50 over p50")
            report.figure(
                "broadcast / unicast",
                f"{percentile(broadcasts, 50) / percentile(unicasts, 50):.2f}x",
                "p50 over p50",
            )
            p99 = percentile(broadcasts, 99) * 1000
            report.target("broadcast p99", p99 <= TARGET_P99_MS,
                          f"{p99:.1f} ms (target <= {TARGET_P99_MS:.0f} ms)")  # fmt: skip

            farm.pause("n3")  # SIGSTOP: alive to the OS, silent to the cluster
            silent = ConsoleContext(farm.client, farm.keys, timeout=silent_timeout)
            started = time.perf_counter()
            result = await run_command(silent, "broadcast cluster nodename")
            took = time.perf_counter() - started
            want = {"n1": {"ok": True, "output": "n1"}, "n2": {"ok": True, "output": "n2"},
                    "n3": requests.timeout_answer()}  # fmt: skip
            report.figure(
                "broadcast, n3 stopped",
                f"{took:.3f} s",
                f"timeout {silent_timeout:g} s; n1, n2 answered, n3 reported 'timeout'",
            )
            got = "as expected" if result.data == want else result.data
            report.target(
                "silent node not waited for",
                result.data == want and silent_timeout <= took <= silent_timeout + SILENT_SLACK,
                f"{took:.3f} s for a {silent_timeout:g} s timeout (target <= timeout + "
                f"{SILENT_SLACK:g} s); answers {got}",
            )
            farm.resume("n3")
        finally:
            await farm.close()


def main() -> None:
    parser = make_parser(__doc__.splitlines()[0] if __doc__ else "broadcast")
    parser.add_argument("--runs", type=int, default=0, help="round trips per figure")
    args = parser.parse_args()
    runs = args.runs or (20 if args.quick else 200)
    silent_timeout = 0.5 if args.quick else 2.0

    async def run(server: RedisServer, report: Report) -> None:
        await measure(server, report, runs, silent_timeout)

    run_benchmark("broadcast", args.strict, run, limit=120 if args.quick else 600)


if __name__ == "__main__":
    main()
