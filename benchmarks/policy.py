"""The Postfix policy service: requests/s and latency over loopback, 50 smtpd connections.

Three real ``mcluster agent --policy`` processes on one redis-server, each with its own
``Policy`` scope, measured in interleaved rounds (a rate is the median of the rounds):

- ``no limits`` (the baseline): ``Policy {}``: the protocol and the transaction leases
  in ``inbound_cidr``, no Redis call on the request path;
- ``caps engaged, admitting``: ``client_rates = ("32,..." "24,...")`` with huge rates:
  every transaction's first request is one all-or-nothing decision in Redis (batched with
  the concurrent ones), and every transaction is admitted;
- ``caps engaged, deferring``: rates of 1 per hour: each client's first transaction is
  admitted, every later one is deferred (still one decision in Redis each).

Each of the 50 clients is one smtpd process: one connection, transactions of 2 RCPT,
DATA and END-OF-MESSAGE (4 requests; the first decides, the others reuse the answer),
every client from its own /24. Reported: requests/s, p50/p99 of every request and of the
deciding (first) request, and the degraded answers (from the agent's ``/metrics``).
Targets: no degraded answer, and the deciding request's p99 within the deadline (100 ms).

    /work/venv/bin/python benchmarks/policy.py [--quick] [--strict] [--clients 50] [--seconds 3]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _redis import RedisServer, run_benchmark
from _report import Report, make_parser, percentile

from tests.postfix import Smtpd
from tests.redis_servers import free_port

CASES = {
    "no limits": "",
    "caps engaged, admitting": 'client_rates = ("32,1000000000/60" "24,1000000000/60")',
    "caps engaged, deferring": 'client_rates = ("32,1/3600" "24,1/3600")',
}
CONFIG = """
cluster {{
  namespace = "bench"
  Replicate "inbound_cidr" {{}}
}}
Policy {{
  {rules}
  deadline_ms = 100
}}
"""


@dataclass
class Case:
    name: str
    policy_port: int
    http_port: int
    proc: subprocess.Popen[bytes]
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    deciding: list[float] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    cpu: float = 0.0  # seconds of the agent process while measured
    log: str = ""  # the agent's output


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(name: str, rules: str, redis_url: str, workdir: Path, index: int) -> Case:
    config = workdir / f"case{index}.conf"
    config.write_text(CONFIG.format(rules=rules))
    policy_port, http_port = free_port(), free_port()
    log = (workdir / f"case{index}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcluster", "agent", "--config", str(config),
         "--node", f"bench-{index}", "--redis", redis_url, "--log-level", "WARNING",
         "--listen", f"127.0.0.1:{http_port}", "--policy", f"127.0.0.1:{policy_port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return Case(name, policy_port, http_port, proc, log=log.name)


async def wait_ready(case: Case, session: aiohttp.ClientSession) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if case.proc.poll() is not None:
            log = Path(case.log).read_text(errors="replace")[-2000:]
            raise AssertionError(f"agent for {case.name!r} exited; its log ends:\n{log}")
        try:
            async with session.get(f"http://127.0.0.1:{case.http_port}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"agent for {case.name!r} did not start")


async def metric(case: Case, session: aiohttp.ClientSession, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{case.http_port}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def client(case: Case, n: int, stop: float, round_: int) -> int:
    """One smtpd process: transactions until ``stop``; requests answered."""
    address = f"10.{round_ % 250}.{n}.{1 + list(CASES).index(case.name)}"
    done = 0
    async with Smtpd(case.policy_port) as smtpd:
        while time.monotonic() < stop:
            instance = smtpd.new_instance()
            for i, state in enumerate(("RCPT", "RCPT", "DATA", "END-OF-MESSAGE")):
                started = time.perf_counter()
                answer = await smtpd.ask(state, address, instance, count=i)
                took = time.perf_counter() - started
                case.latencies.append(took)
                if i == 0:
                    case.deciding.append(took)
                    verb = answer.split(" ", 1)[0]
                    case.answers[verb] = case.answers.get(verb, 0) + 1
                    if verb != "DUNNO":
                        done += 1
                        break
                done += 1
    return done


async def measure(
    server: RedisServer, report: Report, clients: int, seconds: float, rounds: int
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-policy-bench-"))
    cases = [spawn(n, r, server.url, workdir, i) for i, (n, r) in enumerate(CASES.items())]
    try:
        async with aiohttp.ClientSession() as session:
            for case in cases:
                await wait_ready(case, session)
            for round_ in range(rounds):
                for case in cases:
                    stop = time.monotonic() + seconds
                    started, cpu = time.monotonic(), cpu_seconds(case.proc.pid)
                    counts = await asyncio.gather(
                        *(client(case, n, stop, round_) for n in range(clients))
                    )
                    case.rates.append(sum(counts) / (time.monotonic() - started))
                    case.cpu += cpu_seconds(case.proc.pid) - cpu
                    case.requests += sum(counts)
            degraded = {
                c.name: await metric(c, session, "mcluster_policy_degraded_total") for c in cases
            }
    finally:
        for case in cases:
            case.proc.terminate()
        for case in cases:
            try:
                case.proc.wait(15)
            except subprocess.TimeoutExpired:
                case.proc.kill()
    base = statistics.median(cases[0].rates)
    for case in cases:
        rate = statistics.median(case.rates)
        ratio = "" if case is cases[0] else f"{rate / base:.2f}x the baseline"
        report.figure(f"{case.name}: requests/s", f"{rate:,.0f}", ratio)
        p50, p99 = (percentile(case.latencies, q) * 1000 for q in (50, 99))
        report.figure(f"{case.name}: p50 / p99 per request", f"{p50:.2f} / {p99:.2f} ms")
        cpu_us = case.cpu / max(1, case.requests) * 1e6
        report.figure(f"{case.name}: agent CPU per request", f"{cpu_us:.0f} us")
        report.figure(
            f"{case.name}: p99 deciding request",
            f"{percentile(case.deciding, 99) * 1000:.2f} ms",
            ", ".join(f"{k} {v}" for k, v in sorted(case.answers.items())),
        )
    for case in cases:
        report.target(f"{case.name}: no degraded answer", degraded[case.name] == 0,
                      f"{degraded[case.name]:.0f} degraded")  # fmt: skip
        p99 = percentile(case.deciding, 99) * 1000
        report.target(f"{case.name}: deciding p99 within the deadline", p99 <= 100, f"{p99:.2f} ms")
    admitting, deferring = cases[1].answers, cases[2].answers
    report.target(
        "admitting: every transaction admitted", set(admitting) == {"DUNNO"}, str(admitting)
    )
    first = clients * rounds  # one admitted transaction per client address
    report.target(
        "deferring: only each address's first transaction admitted",
        deferring.get("DUNNO", 0) <= first and deferring.get("DEFER_IF_PERMIT", 0) > 0,
        str(deferring),
    )


def main() -> None:
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent smtpd connections")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per case per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    seconds = min(args.seconds, 0.5) if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))

    async def run(server: RedisServer, report: Report) -> None:
        await measure(server, report, args.clients, seconds, rounds)

    run_benchmark(f"policy service, {args.clients} clients", args.strict, run, 600)


if __name__ == "__main__":
    main()
