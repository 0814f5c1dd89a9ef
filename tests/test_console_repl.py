"""The interactive console: completion (no terminal needed) and a scripted session."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from mcluster.agent.node import Node
from mcluster.console.commands import ConsoleContext
from mcluster.console.repl import Repl, completions, history_path
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys
from tests.redis_servers import RedisServer
from tests.test_console import GLOBAL_CIDR, Cluster, cluster  # noqa: F401  (fixture)

OBJECTS = ["inbound_cidr", "outbound_cidr", "outbound_domains"]
NODES = ["relay-0-1", "relay-0-2", "mx-1"]
FIRST = ["abort", "arp", "duravip", "help", "info", "membership", "nodeaddr", "nodename"]
FIRST = sorted([*FIRST, "jobs", "reset", "shared", "show"])
MODULES = ["audit_series", "inbound_audit", "policy", "shaping"]
TOP = ["broadcast", "unicast", "config"]
SERIES = ["senders", "subjects"]


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        (
            "",
            sorted(["cluster", *FIRST, *MODULES, *TOP, "exit", "quit", "watch"]),
        ),
        ("broadcast ", sorted(["cluster", *FIRST, *MODULES])),
        ("broadcast inbound_audit ", ["show"]),
        ("inb", ["inbound_audit"]),
        ("inbound_audit ", ["show"]),
        ("inbound_audit show ", ["ip"]),
        ("INBOUND_AUDIT SHOW i", ["ip"]),
        ("inbound_audit show ip ", []),
        ("inbound_audit show ip 10.0.0.0/8 ", []),
        ("audit_series ", ["count", "list"]),
        ("audit_series l", ["list"]),
        ("audit_series list ", []),
        ("audit_series count ", SERIES),
        ("audit_series count se", ["senders"]),
        ("audit_series count senders ", []),
        ("audit_series count senders bob@example.com ", ["from"]),
        ("audit_series count senders bob@example.com 0 2 f", ["from"]),
        ("audit_series count senders bob@example.com from ", sorted(NODES)),
        ("audit_series count senders bob@example.com FROM relay", ["relay-0-1", "relay-0-2"]),
        ("audit_series count senders bob@example.com from mx-1 ", []),
        ("unicast mx-1 audit_series count ", SERIES),
        ("broadcast cluster shared ", ["list", "show"]),
        ("unicast ", sorted(NODES)),
        ("unicast mx-1 cluster node", ["nodeaddr", "nodename"]),
        ("cl", ["cluster"]),
        ("wa", ["watch"]),
        ("q", ["quit"]),
        ("cluster ", FIRST),
        ("cluster sh", ["shared", "show"]),
        ("SHARED SH", ["show"]),
        ("cluster shared ", ["list", "show"]),
        ("cluster duravip ", ["announce", "debug", "move", "show"]),
        ("cluster duravip announce ", ["view"]),
        ("cluster nodename ", []),
        ("help ", FIRST),
        ("cluster shared show ", OBJECTS),
        ("shared show out", ["outbound_cidr", "outbound_domains"]),
        ("shared show Out", []),
        ("cluster shared show inbound_cidr ", ["all", "from", "limit"]),
        ("cluster shared show inbound_cidr f", ["from"]),
        ("cluster shared show inbound_cidr from ", sorted(NODES)),
        ("cluster shared show inbound_cidr FROM relay-0-", ["relay-0-1", "relay-0-2"]),
        ("cluster shared show inbound_cidr from relay-0-1 ", ["all", "limit"]),
        ("cluster shared show inbound_cidr all ", ["from"]),
        ("cluster shared show inbound_cidr limit ", []),
        ("cluster shared show inbound_cidr limit 5 ", ["from"]),
        ("cluster frobnicate ", []),
    ],
)
def test_completions(buffer: str, expected: list[str]) -> None:
    assert completions(buffer, OBJECTS, NODES, SERIES) == expected


def test_history_lives_in_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCLUSTER_STATE_DIR", str(tmp_path))
    path = history_path()
    assert path is not None
    assert str(path) == f"{tmp_path}/console_history"


def drive(
    server: RedisServer, namespace: str, node: str | None, lines: list[str], **kw: bool
) -> tuple[int, str, str, Repl, list[str]]:
    """Run a Repl over ``lines`` on its own loop (in a thread): (code, out, err, repl)."""
    out, err = io.StringIO(), io.StringIO()
    pending = iter(lines)
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        try:
            return next(pending)
        except StopIteration:
            raise EOFError from None

    with asyncio.Runner() as runner:
        client = make_async_client(server.url)
        ctx = ConsoleContext(client, ClusterKeys(namespace), node)
        repl = Repl(ctx, runner, Console(file=out, width=120), Console(file=err), **kw)
        repl.refresh()
        code = repl.loop(read)
        runner.run(client.aclose())
    return code, out.getvalue(), err.getvalue(), repl, prompts


async def test_session_runs_commands_and_survives_errors(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
) -> None:
    lines = ["shared show inbound_cidr", "shared show nope", "", "cluster bogus", "nodename"]
    code, out, err, repl, prompts = await asyncio.to_thread(
        drive, redis_server, namespace, "relay-0-1", lines
    )
    assert code == 0
    assert out.splitlines() == [*GLOBAL_CIDR, "relay-0-1", ""]  # "" is the newline at EOF
    assert err.splitlines() == [
        "mcluster: unknown object 'nope'; managed objects: inbound_cidr, outbound_domains, "
        "outbound_slots",
        "mcluster: unknown command 'cluster bogus'; type 'cluster help' for the list",
    ]
    assert prompts == ["mcluster(relay-0-1)> "] * 6
    assert repl.objects == ["inbound_cidr", "outbound_domains", "outbound_slots"]
    assert repl.nodes == ["relay-0-1", "relay-0-2", "relay-0-3"]


async def test_quit_exit_and_json_mode(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
) -> None:
    code, out, err, _, prompts = await asyncio.to_thread(
        drive, redis_server, namespace, None, ["nodename", "EXIT", "shared list"]
    )
    assert (code, out, prompts) == (0, "", ["mcluster> "] * 2)
    assert "cluster nodename needs --node NAME" in err
    code, out, err, _, _ = await asyncio.to_thread(
        drive, redis_server, namespace, None, ["shared list", "quit"], json_mode=True
    )
    assert code == 0 and err == ""
    assert [o["name"] for o in json.loads(out)["objects"]] == [
        "inbound_cidr",
        "outbound_domains",
        "outbound_slots",
    ]


async def test_shared_list_refreshes_completion(
    cluster: Cluster,  # noqa: F811
    redis_server: RedisServer,
    namespace: str,
) -> None:
    gone = Node(cluster.config, "gone-1", redis_server.url, namespace=namespace)
    await gone.start()
    gone.record("inbound_cidr", "192.0.2.1", 2)
    await gone.stop(drain=False)  # its member record is gone, its view stays

    def session() -> tuple[list[str], list[str]]:
        with asyncio.Runner() as runner:
            client = make_async_client(redis_server.url)
            ctx = ConsoleContext(client, ClusterKeys(namespace))
            repl = Repl(ctx, runner, Console(file=io.StringIO()), Console(file=io.StringIO()))
            assert repl.objects == []  # nothing fetched yet
            repl.handle("cluster shared list")
            runner.run(client.aclose())
            return repl.objects, repl.nodes

    objects, nodes = await asyncio.to_thread(session)
    assert objects == ["inbound_cidr", "outbound_domains", "outbound_slots"]
    assert nodes == ["gone-1", "relay-0-1", "relay-0-2", "relay-0-3"]


async def test_the_session_completes_audit_series_it_read(
    redis_server: RedisServer, namespace: str
) -> None:
    """The REPL fetches the series names with the other names (and again after
    ``audit_series list``); completion offers them after ``audit_series count``."""
    from mcluster.config import parse_config

    config = parse_config('cluster { Replicate "metrics" { parameters = "audit_series" } }')
    node = Node(config, "relay-0-1", redis_server.url, namespace=namespace)
    await node.start()
    try:
        await node.audit.define("senders", "string", 60, 10, "cluster")
        code, out, _, repl, _ = await asyncio.to_thread(
            drive, redis_server, namespace, "relay-0-1", ["audit_series list"]
        )
        assert code == 0 and "senders: string 60,10 replicate cluster" in out
        assert repl.series == ["senders"]
        assert completions("audit_series count s", repl.objects, repl.nodes, repl.series) == [
            "senders"
        ]
    finally:
        await node.stop()
