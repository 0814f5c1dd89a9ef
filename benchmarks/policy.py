"""The Postfix policy service: decisions/s and latency against policyd-rate-limit and a floor.

Every server is its own process, measured in the same run at 1, 20 and 50 concurrent
clients, in interleaved rounds (a rate is the median of the rounds):

- ``floor``: a bare server answering ``DUNNO`` (benchmarks/_dunno.py): the client's, the
  kernel's and the event loop's share of a request;
- ``policyd-rate-limit``: policyd-rate-limit 1.2.0 from PyPI in a venv of its own (made
  on first use under ``--prl-venv``), SQLite, limits by ``sasl_username``, counting at
  ``DATA`` (its ``count_mode: 1``; it ignores the other states), the same limit; it is
  one process and one node, not cluster-wide;
- ``mcluster client_rates``: an agent with two ``client_rates`` rules (/32 with the
  limit, /24 wide open): what the issue's "mcluster today" measured;
- ``mcluster quotas``: an agent with 3 quotas (messages by ``sasl_username`` with the
  limit, recipients by ``sender``, bytes by ``sasl_username``), once the ``Quota`` scopes
  exist (the case is left out, and said so, on a tree without them);
- with ``--unix``, ``mcluster quotas, unix socket``: the same agent on a Unix socket
  (``--policy unix:PATH``, as Postfix's ``check_policy_service unix:...`` asks it).

Each client is one smtpd process: one connection, many requests, each sent after the
previous answer, as smtpd does. Every request is the first of a new mail transaction (a
new ``instance``), so every request is a decision: ``RCPT`` for mcluster and the floor,
``DATA`` for policyd-rate-limit (the only state it counts at). Client ``n`` speaks for
user ``n % --users`` (sender ``USER@example.net``, client address one per user); the
users are new in every round and at every level, so each starts with an empty window.

Targets: at 50 clients mcluster makes >= 10x policyd-rate-limit's decisions/s; deciding
p99 <= 2 ms at 20 clients and <= 5 ms at 50; no degraded answer (the agents' /metrics);
every user's admitted count is exactly min(limit, its requests) for the limiting servers.

    python benchmarks/policy.py [--quick] [--strict] [--seconds 2] [--rounds 3] [--users 5]
        [--limit 1000] [--prl-venv ~/.cache/mcluster-bench/policyd-rate-limit-1.2.0]

The machine's other load moves absolute figures; compare with the floor and
policyd-rate-limit measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
from _redis import RedisServer, run_benchmark
from _report import Report, make_parser, percentile, spawn_floor

from tests import postfix
from tests.redis_servers import free_port

HERE = Path(__file__).resolve().parent
LEVELS = (1, 20, 50)
PRL_VERSION = "1.2.0"
WINDOW = 3600

AGENT_CONFIG = """
cluster {{
  namespace = "bench{index}"
  Replicate "inbound_cidr" {{}}
}}
Policy {{
  {rules}
  deadline_ms = 100
}}
"""
RATES = 'client_rates = ("32,{limit}/3600" "24,1000000000/3600")'
QUOTAS = """
  Quota "per_user" {{ key = "sasl_username"  limit = "{limit}/3600" }}
  Quota "rcpt" {{ key = "sender"  limit = "{rcpt}/3600"  count = "recipients" }}
  Quota "size" {{ key = "sasl_username"  limit = "10G/86400"  count = "bytes" }}
"""
PRL_CONFIG = """\
debug: False
user: "nobody"
group: "nogroup"
pidfile: "{dir}/run/prl.pid"
sqlite_config:
    database: "{db}/db/prl.sqlite3"
backend: 0
SOCKET: ["127.0.0.1", {port}]
limits:
    - [{limit}, 3600]
limits_by_id: {{}}
sql_limits_by_id: ""
limit_by_sasl: True
limit_by_sender: False
limit_by_ip: False
success_action: "dunno"
fail_action: "defer_if_permit Rate limit reached, retry later"
db_error_action: "dunno"
report: False
count_mode: 1
"""


def request(state: str, name: str, client: str, instance: str) -> bytes:
    """One request as smtpd sends it: ``name`` is the SASL login and the sender's local
    part; one recipient; a message ``SIZE=`` of 4 KiB."""
    return postfix.request(
        state, client, instance, recipient="bob@example.org", count=0 if state == "RCPT" else 1,
        sender=f"{name}@example.net", login=name, size=4096,
    )  # fmt: skip


@dataclass
class Server:
    name: str
    state: str  # the protocol state of every request (the one it decides at)
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    http_port: int = 0  # mcluster: its /metrics
    unix: Path | None = None  # served on this Unix socket, not on ``port``
    limiting: bool = True  # its answers must show the limit exactly
    scratch: Path | None = None  # a folder of its own to remove at the end
    rates: dict[int, list[float]] = field(default_factory=dict)
    latencies: dict[int, list[float]] = field(default_factory=dict)
    admitted: dict[int, list[float]] = field(default_factory=dict)  # DUNNO answers only
    answers: dict[int, Counter[str]] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)  # users whose admitted count is off
    cpu: dict[int, float] = field(default_factory=dict)
    requests: dict[int, int] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def has_quotas() -> bool:
    """Whether this tree's Policy scope takes Quota scopes (issue 19)."""
    from mcluster.config import ConfigError, parse_config
    from mcluster.objects.policy import policy_config

    try:
        policy_config(parse_config("Policy {" + QUOTAS.format(limit=1, rcpt=1) + "}"))
    except ConfigError:
        return False
    return True


def prl_python(venv: Path) -> Path | None:
    """policyd-rate-limit's venv (made on first use); None when it cannot be installed."""
    script = venv / "bin" / "policyd-rate-limit"
    if not script.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", f"policyd-rate-limit=={PRL_VERSION}"]
        if subprocess.run(pip, capture_output=True).returncode != 0:
            return None
    return script


def spawn_agent(
    name: str,
    rules: str,
    redis_url: str,
    workdir: Path,
    index: int,
    tree: str = "",
    loop: str = "",
    unix: bool = False,
) -> Server:
    config = workdir / f"agent{index}.conf"
    config.write_text(AGENT_CONFIG.format(rules=rules, index=index))
    port, http_port = free_port(), free_port()
    socket_path = workdir / f"policy{index}.sock" if unix else None
    policy = f"unix:{socket_path}" if socket_path else f"127.0.0.1:{port}"
    log = workdir / f"agent{index}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcluster", "agent", "--config", str(config),
         "--node", f"bench-{index}", "--redis", redis_url, "--log-level", "WARNING",
         "--listen", f"127.0.0.1:{http_port}", "--policy", policy,
         *(["--loop", loop] if loop else [])],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        # the older tree as the working directory too: ``python -m`` puts the working
        # directory before PYTHONPATH, so from a checkout it would run that checkout
        env={**os.environ, "PYTHONPATH": tree} if tree else None, cwd=tree or None,
    )  # fmt: skip
    return Server(name, "RCPT", port, proc, log, http_port, unix=socket_path)


def spawn_prl(script: Path, workdir: Path, limit: int) -> Server:
    """policyd-rate-limit with its SQLite file in memory (/dev/shm when there is one): a
    commit is not a disk flush, as with its in-memory backend, but SQL all the same."""
    folder = workdir / "prl"
    shm = Path("/dev/shm")
    db = Path(tempfile.mkdtemp(prefix="mcluster-prl-", dir=shm if shm.is_dir() else None))
    folder.mkdir()
    (folder / "run").mkdir()
    for sub in (folder, folder / "run", db):
        sub.chmod(0o777)  # it drops to nobody when started as root
    port = free_port()
    config = folder / "prl.yaml"
    config.write_text(PRL_CONFIG.format(dir=folder, db=db, port=port, limit=limit))
    log = workdir / "prl.log"
    proc = subprocess.Popen(
        [str(script), "--file", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    return Server("policyd-rate-limit", "DATA", port, proc, log, scratch=db)


def spawn_dunno(workdir: Path) -> Server:
    log = workdir / "floor.log"
    proc, port = spawn_floor("_dunno.py", log)
    return Server("floor (DUNNO)", "RCPT", port, proc, log, limiting=False)


async def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(
                f"{server.name} exited; its log ends:\n{server.log.read_text()[-2000:]}"
            )
        try:
            reply = await one_request(server, request(server.state, "w", "192.0.2.1", "w.0"))
            if reply.startswith(b"action="):
                return
        except (OSError, asyncio.IncompleteReadError):
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} did not start")


async def one_request(server: Server, data: bytes) -> bytes:
    if server.unix is not None:
        reader, writer = await asyncio.open_unix_connection(str(server.unix))
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        return await reader.readuntil(b"\n\n")
    finally:
        writer.close()


class Client(asyncio.Protocol):
    """One smtpd process's policy connection: a request, wait for the answer, the next
    at once, until ``stop``. Driven from ``data_received``, with no coroutine or future
    per request: the load generator shares the machine's cores with the server it
    measures, so its own CPU per request is kept small (about a third of a coroutine's)."""

    def __init__(
        self, before: bytes, after: bytes, tag: str, stop: float, out: list[float]
    ) -> None:
        self.before, self.after, self.tag = before, after, tag
        self.stop, self.out = stop, out
        self.buffer = b""
        self.seq = 0
        self.started = 0.0
        self.verbs: Counter[bytes] = Counter()  # by the answer's first word
        self.admitted: list[float] = []  # the latencies of the DUNNO answers
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.seq += 1
        data = self.before + f"{self.tag}.{self.seq:x}".encode() + self.after
        self.started = time.perf_counter()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        # The time is taken as the answer's bytes arrive: with 50 clients in this one
        # process, what comes after is the load generator's queue, not the server's.
        answered = time.perf_counter()
        buffer = self.buffer + data
        if not buffer.endswith(b"\n\n"):
            self.buffer = buffer
            return
        self.buffer = b""
        took = answered - self.started
        self.out.append(took)
        verb = buffer[7:].split(b"\n", 1)[0].split(b" ", 1)[0]
        self.verbs[verb] += 1
        if verb == b"DUNNO":
            self.admitted.append(took)
        if time.monotonic() < self.stop:
            self._send()
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if time.monotonic() < self.stop:
            self.done.set_exception(ConnectionError("the policy server closed the connection"))
        else:
            self.done.set_result(None)


async def run_client(
    server: Server, n: int, users: int, tag: str, block: int, stop: float, out: list[float]
) -> tuple[Counter[str], list[float]]:
    """One connection until ``stop``; the answers per user and verb (``u3 DUNNO``) and
    the latencies of the admitted ones."""
    loop = asyncio.get_running_loop()
    user = n % users
    client = f"10.{block}.{user // 250}.{user % 250 + 1}"
    head = request(server.state, f"{tag}u{user}", client, "@@")
    before, after = head.split(b"@@")
    made = functools.partial(Client, before, after, f"{tag}.{n:x}", stop, out)
    if server.unix is not None:
        _, proto = await loop.create_unix_connection(made, str(server.unix))
    else:
        _, proto = await loop.create_connection(made, "127.0.0.1", server.port)
    await proto.done
    verbs = Counter({f"{user} {verb.decode().upper()}": k for verb, k in proto.verbs.items()})
    return verbs, proto.admitted


async def measure_one(
    server: Server, clients: int, users: int, limit: int, seconds: float, tag: str, block: int
) -> None:
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    started, cpu = time.monotonic(), cpu_seconds(server.proc.pid)
    ran = await asyncio.gather(
        *(run_client(server, n, users, tag, block, stop, latencies) for n in range(clients))
    )
    counts = [verbs for verbs, _ in ran]
    for _, admitted in ran:
        server.admitted.setdefault(clients, []).extend(admitted)
    took = time.monotonic() - started
    server.cpu[clients] = server.cpu.get(clients, 0.0) + cpu_seconds(server.proc.pid) - cpu
    server.rates.setdefault(clients, []).append(len(latencies) / took)
    server.latencies.setdefault(clients, []).extend(latencies)
    server.requests[clients] = server.requests.get(clients, 0) + len(latencies)
    total: Counter[str] = sum(counts, Counter())
    verbs = server.answers.setdefault(clients, Counter())
    for key, count in total.items():
        verbs[key.split(" ", 1)[1]] += count
    if server.limiting:
        for user in range(min(users, clients)):
            asked = sum(v for k, v in total.items() if k.split(" ")[0] == str(user))
            admitted = total.get(f"{user} DUNNO", 0)
            if admitted != min(limit, asked):
                server.wrong.append(f"{tag} u{user}: {admitted} admitted of {asked}")


async def metric(session: aiohttp.ClientSession, server: Server, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{server.http_port}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def measure(
    server: RedisServer, report: Report, args: argparse.Namespace, quick: bool
) -> None:
    seconds: float = min(args.seconds, 0.4) if quick else args.seconds
    rounds: int = 1 if quick else args.rounds
    limit: int = args.limit
    users: int = args.users
    levels = (1, 5) if quick else tuple(args.clients or LEVELS)
    workdir = Path(tempfile.mkdtemp(prefix="mcluster-policy-bench-"))
    workdir.chmod(0o755)
    notes = []
    # What can fail goes first: nothing is started yet, so nothing is left running.
    prl = None if args.no_prl else prl_python(Path(args.prl_venv).expanduser())
    if prl is None:
        notes.append(f"policyd-rate-limit {PRL_VERSION}: left out (not installed, or --no-prl)")
    quotas = has_quotas()
    if not quotas:
        notes.append("mcluster quotas: left out (this tree has no Quota scopes yet)")
    rates, rules = RATES.format(limit=limit), QUOTAS.format(limit=limit, rcpt=2 * limit)
    servers: list[Server] = []
    degraded: dict[str, float] = {}
    try:
        servers.append(spawn_dunno(workdir))
        if prl is not None:
            servers.append(spawn_prl(prl, workdir, limit))
        url, tree = server.url, args.agent_tree
        loop = "" if tree else args.loop  # an older tree's agent may not know --loop
        servers.append(spawn_agent("mcluster client_rates", rates, url, workdir, 1, tree, loop))
        if quotas:
            servers.append(spawn_agent("mcluster quotas", rules, url, workdir, 2, tree, loop))
            if args.before:
                servers.append(
                    spawn_agent("mcluster quotas, before", rules, url, workdir, 3, args.before)
                )
            if args.unix and not tree:
                servers.append(
                    spawn_agent("mcluster quotas, unix socket", rules, url, workdir, 4, "",
                                loop, unix=True)
                )  # fmt: skip
        for one in servers:
            await wait_ready(one)
        for one in servers:  # warm up (imports, script loading, SQLite pages)
            await measure_one(one, 5, 5, limit, 0.3, "warm", 0)
            one.rates.clear(), one.latencies.clear(), one.answers.clear(), one.cpu.clear()
            one.admitted.clear()
            one.requests.clear(), one.wrong.clear()
        block = 0  # every measurement's users have client addresses of their own
        for round_ in range(rounds):
            for clients in levels:
                block += 1
                for one in servers:
                    tag = f"r{round_}c{clients}"
                    await measure_one(one, clients, users, limit, seconds, tag, block)
        async with aiohttp.ClientSession() as session:
            for one in servers:
                if one.http_port:
                    degraded[one.name] = await metric(
                        session, one, "mcluster_policy_degraded_total"
                    )
    finally:
        for one in servers:
            one.proc.terminate()
        for one in servers:
            try:
                one.proc.wait(15)
            except subprocess.TimeoutExpired:
                one.proc.kill()
            if one.scratch is not None:
                shutil.rmtree(one.scratch, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    for note in notes:
        report.figure(note, "")
    for clients in levels:
        base = statistics.median(servers[0].rates[clients])
        for one in servers:
            rate = statistics.median(one.rates[clients])
            p50, p99 = (percentile(one.latencies[clients], q) * 1000 for q in (50, 99))
            cpu_us = one.cpu[clients] / max(1, one.requests[clients]) * 1e6
            answers = ", ".join(f"{k} {v}" for k, v in sorted(one.answers[clients].items()))
            report.figure(
                f"{clients:>2} clients, {one.name}",
                f"{rate:,.0f}/s  p50 {p50:.2f} p99 {p99:.2f} ms",
                f"{rate / base:.2f}x floor; {cpu_us:.0f} us CPU/request; {answers}",
            )
    by_name = {one.name: one for one in servers}
    ours = by_name.get("mcluster quotas") or by_name["mcluster client_rates"]
    for clients in levels:
        # Refusals of a spent key are made in the agent (mcluster/agent/throttles.py,
        # known_refusal); the admitted requests are the ones that wait for Redis.
        for one in servers:
            admitted = one.admitted.get(clients, [])
            if one.name.startswith("mcluster quotas") and admitted:
                p50, p99 = (percentile(admitted, q) * 1000 for q in (50, 99))
                report.figure(
                    f"{clients:>2} clients, {one.name}, admitted only",
                    f"p50 {p50:.2f} p99 {p99:.2f} ms",
                    f"{len(admitted):,} of {one.requests[clients]:,} requests",
                )
        # Little's law: clients that each wait for their answer make the mean latency
        # clients / rate, whatever the server does.
        rate = statistics.median(ours.rates[clients])
        report.figure(
            f"{clients:>2} clients, closed loop", f"mean {clients / rate * 1000:.2f} ms",
            f"= {clients} / {rate:,.0f} per s",
        )  # fmt: skip
    top = max(levels)
    if "policyd-rate-limit" in by_name:
        theirs = statistics.median(by_name["policyd-rate-limit"].rates[top])
        mine = statistics.median(ours.rates[top])
        report.target(
            f"{ours.name} at {top} clients >= 10x policyd-rate-limit's decisions/s",
            mine >= 10 * theirs,
            f"{mine:,.0f} against {theirs:,.0f}/s: {mine / theirs:.1f}x",
        )
    for clients, bound in ((20, 2.0), (50, 5.0)):
        if clients in levels:
            p99 = percentile(ours.latencies[clients], 99) * 1000
            report.target(
                f"{ours.name}: p99 at {clients} clients <= {bound:g} ms", p99 <= bound,
                f"{p99:.2f} ms",
            )  # fmt: skip
    for name, count in degraded.items():
        report.target(f"{name}: no degraded answer", count == 0, f"{count:.0f} degraded")
    for one in servers:
        if one.limiting:
            report.target(
                f"{one.name}: every user admitted exactly min(limit, asked)",
                not one.wrong, "; ".join(one.wrong[:3]) or f"limit {limit} per user",
            )  # fmt: skip


def main() -> None:
    parser = make_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--users", type=int, default=5, help="users (keys) shared by clients")
    parser.add_argument("--limit", type=int, default=1000, help="messages per user per hour")
    parser.add_argument(
        "--prl-venv",
        default=f"~/.cache/mcluster-bench/policyd-rate-limit-{PRL_VERSION}",
        help="the venv of policyd-rate-limit (made and installed there on first use)",
    )
    parser.add_argument("--no-prl", action="store_true", help="leave policyd-rate-limit out")
    parser.add_argument(
        "--unix", action="store_true",
        help="measure the quotas agent on a Unix socket too (--policy unix:PATH)",
    )  # fmt: skip
    parser.add_argument(
        "--clients",
        type=int,
        action="append",
        help="a level of concurrent clients (repeat it; default 1, 20 and 50)",
    )
    parser.add_argument(
        "--agent-tree", default="", help="run the agents from this source tree (an older commit)"
    )
    parser.add_argument(
        "--before", default="", help="a source tree whose quotas agent is measured too, "
        "in the same rounds (e.g. the commit before a change: git archive REV | tar -x -C DIR)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(HERE.parent))

    async def run(server: RedisServer, report: Report) -> None:
        await measure(server, report, args, args.quick)

    run_benchmark("policy service, decisions", args.strict, run, 900, args.loop)


if __name__ == "__main__":
    main()
