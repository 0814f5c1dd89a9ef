"""Regenerate the sample outputs in the docs: ``python docs/gen_samples.py``.

Each ``<!-- sample: COMMAND -->`` ... ``<!-- /sample -->`` block of the files in DOCS is
replaced by what COMMAND prints (``CMD; CMD`` runs several): a console command through
``run_command`` (``--json CMD`` for its JSON), ``watch`` for one plain dashboard frame, or
``METHOD PATH [JSON]`` against relay-0-1's HTTP API. They run against a real
redis-server with three in-process nodes (relay-0-1..3) that recorded a few events, one
fresh cluster per file. Whatever varies between runs (epochs, private names, ages,
times, ports, pids) is normalized by ``normalize``. tests/test_docs.py regenerates the
samples and compares.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mcluster.agent.node import Node  # noqa: E402
from mcluster.config import load_config, parse_config  # noqa: E402
from mcluster.console import ConsoleContext, run_command  # noqa: E402
from mcluster.console.commands import CommandError, NotFound  # noqa: E402
from mcluster.console.dashboard import render_plain  # noqa: E402
from mcluster.console.serve import serve_console  # noqa: E402
from mcluster.console.snapshot import Snapshot, SnapshotReader  # noqa: E402
from mcluster.faces.http.app import make_app  # noqa: E402
from mcluster.manager.manager import Manager  # noqa: E402
from mcluster.store import node_status  # noqa: E402
from mcluster.store.connect.urls import make_async_client  # noqa: E402
from mcluster.store.jobs import Job, JobAborted  # noqa: E402
from mcluster.store.keys import ClusterKeys  # noqa: E402
from tests.redis_servers import RedisServer, start_redis  # noqa: E402
from tests.test_console import CIDR, DOMAINS  # noqa: E402  (Momentum's reference counts)

DOCS = tuple(
    ROOT / name
    for name in (
        "docs/console.md",
        "docs/audit-metrics.md",
        "docs/dashboard.md",
        "docs/http-api.md",
        "docs/operations.md",
        "README.md",
    )
)
"""The files with sample blocks. A block may run several commands (``CMD; CMD``), and a
command starting ``--json`` prints the JSON the console's ``--json`` prints."""
JSON_FLAG = "--json "
HTTP_METHODS = ("GET", "POST", "PUT")
"""A command starting with one of these is sent to relay-0-1's HTTP API."""
WATCH = "watch"
"""The sample block of one plain dashboard frame (``--watch`` when stdout is a pipe)."""
NAMESPACE = "docs"
PATIENT = ("cluster reset", "config reload")
PATIENT_TIMEOUT = 30.0
"""Commands whose answer waits for work in the member: the console waits for them up to
30 s whatever a file's setup chose (a reset under load takes longer than operations.md's
5 s; their text names no timeout)."""

CONFIG = """
Datasource "sessions" {}
cluster {
  Replicate "inbound_cidr" {}
  Replicate "outbound_domains" {}
  Replicate "metrics" { parameters = "connect;reception;rejection;audit_series" }
  Replicate "sessions" { type = "cache" parameters = "snapshot" }
}
inbound_audit { monitors = ("300,6") }
"""

SAMPLE = re.compile(r"(<!-- sample: (?P<command>.+?) -->\n)(?P<body>.*?)(<!-- /sample -->)", re.S)


HttpClient = TestClient[web.Request, web.Application]


@dataclass(frozen=True)
class Sampler:
    """What the samples run against: a console attached to relay-0-1 and its HTTP API;
    the nodes, their console responders, and tasks a setup started (cancelled at the end)
    and what it must stop (``cleanups``, awaited at the end)."""

    ctx: ConsoleContext
    http: HttpClient
    url: str = ""  # the redis-server's
    nodes: tuple[Node, ...] = ()
    serving: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


Setup = Callable[[Sampler], Awaitable[Sampler]]
"""Run on one file's cluster before its samples (``SETUPS``); returns the sampler to use."""


_NORMALIZE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"#e\d+-\d+#"), "#e7-4123#"),  # private names: epoch and pid
    (re.compile(r"console@[\w.-]+:\d+"), "console@ops:7741"),
    (re.compile(r"\b\d+(\.\d+)? ?(ms|s) ago\b"), "0.4 s ago"),
    (re.compile(r"\b\d+\.\d s\b"), "0.1 s"),
    (re.compile(r"\b\d+\.\ds\b"), "0.1s"),  # the dashboard's ages
    (re.compile(r"\b\d\d:\d\d:\d\d UTC\b"), "12:00:00 UTC"),
    (re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?Z?"), "2026-01-01 12:00:00"),
    (re.compile(r"\b1[6-9]\d{11}\b"), "1767268800000"),  # epoch milliseconds
    (re.compile(r"\b1[6-9]\d{8}(\.\d+)?\b"), "1767268800"),  # epoch seconds
    (re.compile(r"127\.0\.0\.1:(?!4802\b)\d{4,5}"), "127.0.0.1:6379"),  # 4802: the agent
    (re.compile(r"reloaded \S+/mcluster\.conf"), "reloaded /etc/mcluster/mcluster.conf"),
    # the first node to beat takes the leader lease: usually relay-0-1, not always
    (re.compile(r"\(relay-0-\d is leader\)"), "(relay-0-1 is leader)"),
    (re.compile(r"leader relay-0-\d \(epoch \d+\)"), "leader relay-0-1 (epoch 1)"),
)


def normalize(text: str) -> str:
    """The sample with what varies between runs replaced by fixed values."""
    for pattern, fixed in _NORMALIZE:
        text = pattern.sub(fixed, text)
    return "\n".join(row.rstrip() for row in text.splitlines())


def doc_commands(doc: str) -> list[str]:
    """The sample blocks' commands (``CMD`` or ``CMD; CMD``), in order."""
    return [m.group("command") for m in SAMPLE.finditer(doc)]


def fill(doc: str, samples: dict[str, str]) -> str:
    """The doc with every sample block's body replaced by its sample."""

    def body(match: re.Match[str]) -> str:
        command = match.group("command")
        return f"{match.group(1)}```\n{samples[command]}\n```\n{match.group(4)}"

    return SAMPLE.sub(body, doc)


def _fixed_figures(snapshot: Snapshot) -> Snapshot:
    """The snapshot with what varies between runs replaced by fixed values, as
    ``normalize`` does for ages: the reported lags (and with them the object named) and
    staleness, and the leader (the first node to beat: usually relay-0-1, not always)."""
    leader = "relay-0-1" if snapshot.leader is not None else None
    every = tuple(dataclasses.replace(m, leader=m.node == leader) for m in snapshot.members)
    epoch = next((m.epoch for m in every if m.leader), None)
    lines = tuple(
        dataclasses.replace(
            line,
            lag_ms=12.0,
            lag_object="inbound_cidr",
            reported_ms_ago=100,
            staleness_ms=None if line.staleness_ms is None else 3.0,
        )
        if line.lag_ms is not None
        else line
        for line in snapshot.replication
    )
    return dataclasses.replace(
        snapshot, replication=lines, members=every, leader=leader, epoch=epoch
    )


async def _frame(ctx: ConsoleContext) -> str:
    snapshot = await SnapshotReader(ctx.client, ctx.keys, ctx.configured).read()
    snapshot = _fixed_figures(snapshot)
    buffer = io.StringIO()
    Console(file=buffer, width=80, highlight=False).print(render_plain(snapshot))
    return f"$ mcluster console --watch --seconds 0 | cat\n--- frame 1\n{buffer.getvalue()}"


async def _http(http: HttpClient, command: str) -> str:
    """``METHOD PATH [JSON]`` sent to relay-0-1's HTTP API: the status line and the body."""
    method, _, rest = command.partition(" ")
    path, _, body = rest.partition(" ")
    response = await http.request(method, path, json=json.loads(body) if body else None)
    flags = "" if method == "GET" else f" -X {method}"
    sent = f" -d '{body}'" if body else ""
    status = f"{response.status} {response.reason}"
    return (
        f"$ curl -s{flags} 'http://127.0.0.1:4802{path}'{sent}\n{status}\n{await response.text()}"
    )


async def _run_one(sampler: Sampler, command: str) -> str:
    ctx = sampler.ctx
    if command in PATIENT:
        ctx = dataclasses.replace(ctx, timeout=max(ctx.timeout, PATIENT_TIMEOUT))
    if command == WATCH:
        return await _frame(ctx)
    if command.partition(" ")[0] in HTTP_METHODS:
        return await _http(sampler.http, command)
    json_mode = command.startswith(JSON_FLAG)
    command = command.removeprefix(JSON_FLAG)
    prompt = f'$ mcluster console --json -c "{command}"' if json_mode else f"mcluster> {command}"
    try:
        result = await run_command(ctx, command)
    except (CommandError, NotFound) as exc:
        return f"{prompt}\nmcluster: {exc}"
    if json_mode:
        return f"{prompt}\n{json.dumps(result.data)}"
    buffer = io.StringIO()
    Console(file=buffer, width=100, highlight=False).print(result.renderable, soft_wrap=True)
    return f"{prompt}\n{buffer.getvalue().rstrip()}"


async def _run(sampler: Sampler, block: str) -> str:
    """One sample block: each command of ``CMD; CMD`` with its output, normalized."""
    return normalize("\n".join([await _run_one(sampler, c.strip()) for c in block.split("; ")]))


@contextlib.asynccontextmanager
async def _cluster(url: str) -> AsyncIterator[Sampler]:
    config = parse_config(CONFIG)
    nodes: list[Node] = []
    stopping = False
    serving: dict[str, asyncio.Task[None]] = {}
    tasks: list[asyncio.Task[None]] = []
    cleanups: list[Callable[[], Awaitable[None]]] = []
    configured = [(o.name, o.type) for o in config.objects]
    client = make_async_client(url)
    try:
        for i, name in enumerate(CIDR, start=1):
            node = Node(config, name, url, namespace=NAMESPACE, address=f"10.0.0.1{i}:4802")
            await node.start()
            nodes.append(node)
            for addr, n in CIDR[name].items():
                node.record("inbound_cidr", addr, n)
                node.audit.record("connect", addr, count=n)
            for domain, n in DOMAINS[name].items():
                node.record("outbound_domains", domain, n)
            if i == 1:
                await node.audit.define("senders", "string", 60, 10, "cluster")
                node.audit.record("rejection", "10.0.0.181", count=2)
            await node.flush()
            serving[name] = asyncio.create_task(
                serve_console(node.client, node.keys, node, lambda: configured, lambda: stopping)
            )
        nodes[0].audit.series_add("senders", "bob@example.com", 3)
        await nodes[0].flush()
        await nodes[1].caches.set("sessions", "alice", "relay-0-2", "5M")
        await _reported(client, [n.name for n in nodes], stale=("relay-0-1", "relay-0-3"))
        # a long broadcast timeout: answers come late on a loaded machine, the text is the same
        ctx = ConsoleContext(
            client, ClusterKeys(NAMESPACE), "relay-0-1", configured, timeout=30.0, config=config
        )
        async with TestClient(TestServer(make_app(nodes[0]))) as http:
            yield Sampler(ctx, http, url, tuple(nodes), serving, tasks, cleanups)
    finally:
        for cleanup in cleanups:
            await cleanup()
        stopping = True
        for task in [*serving.values(), *tasks]:
            task.cancel()
        for node in nodes:
            await node.stop()
        await client.aclose()


async def _reported(
    client: Redis, nodes: list[str], stale: tuple[str, ...], timeout: float = 30.0
) -> None:
    """Wait until every node reported its figures with a heartbeat (the dashboard's), the
    ``stale`` ones with a cache staleness (they saw another node's set)."""

    async def done() -> bool:
        found = await node_status.read_all(client, ClusterKeys(NAMESPACE))
        every = all(node in found for node in nodes)
        return every and all(found[node].staleness_ms is not None for node in stale)

    async with asyncio.timeout(timeout):
        while not await done():
            await asyncio.sleep(0.05)


AUDIT_WINDOW_S = 300
"""The audit monitor's window: a sample run that crosses a window boundary is run again
(its events would be split over windows 0 and 1)."""


def _window(server: RedisServer) -> int:
    seconds, _ = server.client().time()
    return int(seconds) // AUDIT_WINDOW_S


async def _operations(sampler: Sampler) -> Sampler:
    """docs/operations.md: a manager (``manager-mx``) joins, relay-0-2 stops answering
    console requests (a silent node: still a member), relay-0-3 runs a re-sync job (job 1)
    until it is aborted, relay-0-1's config file changes (for ``config reload``), and the
    console waits its default 5 s for answers."""
    manager = Manager(None, sampler.url, name="manager-mx", namespace=NAMESPACE)
    await manager.start()
    sampler.cleanups.append(manager.stop)
    sampler.serving["relay-0-2"].cancel()
    node = sampler.nodes[2]
    job = await Job.start(
        node.client, node.keys, "resync", "this node's lease was lost (paused, partitioned or "
        "reaped)", runner=node.name, runner_private=node.private_name, total=4060,
    )  # fmt: skip
    await job.step(1184, force=True)
    sampler.tasks.append(asyncio.create_task(_until_aborted(job)))
    # relay-0-1 runs from a file, which now adds outbound_cidr and changes outbound_domains
    folder = tempfile.TemporaryDirectory()
    sampler.cleanups.append(lambda: asyncio.to_thread(folder.cleanup))
    path = Path(folder.name) / "mcluster.conf"
    path.write_text(CONFIG)
    sampler.nodes[0].config = load_config(path)
    changed = 'Replicate "outbound_domains" { max_delay = 0.5 }\n  Replicate "outbound_cidr" {}'
    path.write_text(CONFIG.replace('Replicate "outbound_domains" {}', changed))
    return dataclasses.replace(sampler, ctx=dataclasses.replace(sampler.ctx, timeout=5.0))


async def _until_aborted(job: Job) -> None:
    """A running job: it records its progress until an operator aborts it."""
    with contextlib.suppress(JobAborted):
        async with job:
            while True:
                await asyncio.sleep(0.05)
                await job.step(job.record.done, force=True)


SETUPS: dict[str, Setup] = {"operations.md": _operations}
"""A file's setup, by file name."""


async def generate(
    commands: list[str], redis_binary: str | None = None, setup: Setup | None = None
) -> dict[str, str]:
    """Every command's sample, run against a fresh redis-server and three nodes (after
    ``setup``, when the file has one: ``SETUPS``)."""
    for _ in range(2):  # two boundaries are 300 s apart: the second run is within one
        server = start_redis(redis_binary)
        try:
            window = _window(server)
            async with _cluster(server.url) as sampler:
                if setup is not None:
                    sampler = await setup(sampler)
                samples = {command: await _run(sampler, command) for command in commands}
            if _window(server) == window:
                return samples
        finally:
            server.stop()
    raise RuntimeError("the audit window changed in both runs; is the Redis clock moving?")


def main() -> None:
    for path in DOCS:
        doc = path.read_text()
        samples = asyncio.run(generate(doc_commands(doc), setup=SETUPS.get(path.name)))
        path.write_text(fill(doc, samples))
        print(f"{path.relative_to(ROOT)}: {len(samples)} samples written")


if __name__ == "__main__":
    main()
