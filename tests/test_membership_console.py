"""``cluster membership`` and ``cluster info`` over real nodes, and ``GET /v1/membership``."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster.agent.node import Node
from mcluster.cli import main as cli_main
from mcluster.console import ConsoleContext, console_main, run_command
from mcluster.console.commands import COMMANDS
from mcluster.console.commands.core import HelpView
from mcluster.console.repl import completions
from mcluster.faces.http.app import make_app
from mcluster.store import members
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys
from tests.helpers import config
from tests.redis_servers import RedisServer
from tests.test_console import render

Capture = pytest.CaptureFixture[str]
T = TypeVar("T")

ADDRESSES = {"relay-0-1": "127.0.0.1:4802", "relay-0-2": "127.0.0.2:4802", "relay-0-3": None}
KEYS = {
    "private_name",
    "node",
    "subcluster",
    "type",
    "version",
    "address",
    "groups",
    "epoch",
    "last_heartbeat_ms_ago",
}
PRIVATE = re.compile(r"^#e(\d+)-(\d+)#(relay-0-\d)$")
BEAT = re.compile(r"^Last Heartbeat: (\d+\.\d) s ago$")


@dataclass
class Cluster:
    nodes: dict[str, Node]
    ctx: ConsoleContext

    def attached(self, node: str | None) -> ConsoleContext:
        return ConsoleContext(self.ctx.client, self.ctx.keys, node)

    def member(self, node: str) -> members.Member:
        member = self.nodes[node].member
        assert member is not None
        return member


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float = 10.0) -> T:
    """Poll ``probe`` until it gives something other than None, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.05)


@pytest.fixture
async def cluster(redis_server: RedisServer, namespace: str) -> AsyncIterator[Cluster]:
    nodes: dict[str, Node] = {}
    client = make_async_client(redis_server.url)
    keys = ClusterKeys(namespace)
    try:
        for name, address in ADDRESSES.items():
            node = Node(config(), name, redis_server.url, namespace=namespace, address=address)
            await node.start()
            nodes[name] = node
        await eventually(lambda: members.leader(client, keys))
        yield Cluster(nodes, ConsoleContext(client, keys))
    finally:
        for node in nodes.values():
            await node.stop()
        await client.aclose()


async def leader_name(cluster: Cluster) -> str:
    lead = await eventually(lambda: members.leader(cluster.ctx.client, cluster.ctx.keys))
    return lead[0].rpartition("#")[2]


async def test_membership_text_blocks(cluster: Cluster) -> None:
    lines = render((await run_command(cluster.ctx, "cluster membership")).renderable)
    assert len(lines) == 3 * 8 + 2
    assert lines[8] == lines[17] == ""
    for i, (name, address) in enumerate(ADDRESSES.items()):
        block = lines[9 * i : 9 * i + 8]
        assert block[0] == f"Private Name: {cluster.nodes[name].private_name}"
        assert block[1:7] == [
            f"Node Name: {name}",
            "Subcluster: default",
            "Node Type: Momentum",
            f"Version: {cluster.member(name).version}",
            f"Address: {address or '0.0.0.0:0'}",
            "Groups: ec_console, ec_cluster",
        ]
        beat = BEAT.match(block[7])
        assert beat is not None, block[7]
        assert 0.0 <= float(beat.group(1)) < 10.0


async def test_membership_json(cluster: Cluster) -> None:
    rows = (await run_command(cluster.ctx, "membership")).data
    assert isinstance(rows, list)
    assert [r["node"] for r in rows] == list(ADDRESSES)
    for row in rows:
        assert set(row) == KEYS
        node = cluster.nodes[row["node"]]
        assert node.member is not None
        assert row["private_name"] == node.private_name
        match = PRIVATE.match(row["private_name"])
        assert match is not None
        assert (int(match.group(1)), match.group(3)) == (row["epoch"], row["node"])
        assert row["subcluster"] == "default"
        assert row["type"] == "Momentum"
        assert row["version"] == node.member.version
        assert row["address"] == ADDRESSES[row["node"]]
        assert row["groups"] == ["ec_console", "ec_cluster"]
        ago = row["last_heartbeat_ms_ago"]
        assert isinstance(ago, int)
        assert 0 <= ago <= 1000 * node.lease_ttl
    assert len({r["epoch"] for r in rows}) == 3
    json.dumps(rows)


async def test_info_text_and_json(cluster: Cluster) -> None:
    leader = await leader_name(cluster)
    lead = await members.leader(cluster.ctx.client, cluster.ctx.keys)
    assert lead is not None
    lines = render((await run_command(cluster.ctx, "cluster info")).renderable)
    assert lines == [
        "Daemon: - [console]",
        "Control Group: ec_console",
        "Cluster Group: ec_cluster (" + leader + " is leader)",
        "Logger Group: none",
        f"Epoch: {cluster.member(leader).epoch}",
        f"Leader Token: {lead[1]}",
        "Members: 3 live",
        "Reaping: none",
    ]
    data = (await run_command(cluster.ctx, "info")).data
    assert isinstance(data, dict)
    assert data["leader"] == leader
    assert data["leader_private_name"] == cluster.nodes[leader].private_name
    assert data["leader_token"] == lead[1]
    assert (data["members"], data["node"], data["reaping"]) == (3, None, [])

    node = cluster.nodes["relay-0-2"]
    attached = render((await run_command(cluster.attached("relay-0-2"), "INFO")).renderable)
    assert attached[0] == f"Daemon: 127.0.0.2:4802 [{node.private_name}]"
    assert attached[4] == f"Epoch: {cluster.member('relay-0-2').epoch}"
    lease = re.fullmatch(r"Lease: renewed (\d+\.\d) s ago", attached[5])
    assert lease is not None, attached[5]
    assert float(lease.group(1)) <= node.lease_ttl
    data = (await run_command(cluster.attached("relay-0-3"), "info")).data
    assert isinstance(data, dict)
    assert data["node"] == "relay-0-3"
    assert data["epoch"] == cluster.member("relay-0-3").epoch
    assert data["daemon"] is None and data["lease_held"] is True
    bare = render((await run_command(cluster.attached("relay-0-3"), "info")).renderable)
    assert bare[0] == f"Daemon: - [{cluster.nodes['relay-0-3'].private_name}]"


async def test_info_shows_reaping_in_progress(cluster: Cluster) -> None:
    progress = {"object": "inbound_cidr", "node": "relay-0-9", "total": 5000, "done": 1200}
    progress["started_ms"] = 1
    view = "#e5-123#relay-0-9"
    await cluster.ctx.client.hset(
        cluster.ctx.keys.reaping, f"inbound_cidr {view}", json.dumps(progress)
    )
    lines = render((await run_command(cluster.ctx, "info")).renderable)
    assert lines[-1] == "Reaping: inbound_cidr view #e5-123#relay-0-9: 1,200/5,000 keys"
    data = (await run_command(cluster.ctx, "info")).data
    assert isinstance(data, dict)
    assert data["reaping"] == [progress | {"view": view}]


async def test_info_without_leader_and_with_an_expired_lease(
    redis_server: RedisServer, namespace: str
) -> None:
    client = make_async_client(redis_server.url)
    keys = ClusterKeys(namespace)
    try:
        ctx = ConsoleContext(client, keys)
        assert render((await run_command(ctx, "info")).renderable) == [
            "Daemon: - [console]",
            "Control Group: ec_console",
            "Cluster Group: ec_cluster (no leader)",
            "Logger Group: none",
            "Epoch: none",
            "Leader Token: none",
            "Members: 0 live",
            "Reaping: none",
        ]
        data = (await run_command(ctx, "info")).data
        assert isinstance(data, dict)
        assert (data["leader"], data["leader_token"], data["epoch"]) == (None, None, None)
        assert render((await run_command(ctx, "membership")).renderable) == ["no live members"]
        assert (await run_command(ctx, "membership")).data == []
        # a member record whose lease has expired (not reaped: no leader here)
        ghost = members.new_member("ghost", 4, 99, "0.0", None)
        now = await members.server_time_ms(client)
        await client.hset(
            keys.members, mapping={"ghost": members.record_json(ghost), "ghost:hb": now - 5000}
        )
        lines = render(
            (await run_command(ConsoleContext(client, keys, "ghost"), "info")).renderable
        )
        assert lines[0] == "Daemon: - [#e4-99#ghost]"
        assert lines[4] == "Epoch: 4"
        assert re.fullmatch(r"Lease: expired, last renewed 5\.\d s ago", lines[5]), lines[5]
        assert lines[7] == "Members: 0 live"
        assert (await run_command(ctx, "membership")).data == []
        lines = render(
            (await run_command(ConsoleContext(client, keys, "nobody"), "info")).renderable
        )
        assert lines[0] == "Daemon: - [nobody]"
        assert lines[5] == "Lease: none (nobody is not a member)"
    finally:
        await client.aclose()


async def test_a_node_that_leaves_is_no_longer_a_member(cluster: Cluster) -> None:
    await cluster.nodes.pop("relay-0-2").stop()
    rows = (await run_command(cluster.ctx, "membership")).data
    assert isinstance(rows, list)
    assert [r["node"] for r in rows] == ["relay-0-1", "relay-0-3"]
    lines = render((await run_command(cluster.ctx, "membership")).renderable)
    assert "Node Name: relay-0-2" not in lines
    assert lines.count("") == 1
    leader = await leader_name(cluster)
    assert leader in ("relay-0-1", "relay-0-3")
    info = render((await run_command(cluster.ctx, "info")).renderable)
    assert info[6] == "Members: 2 live"


async def test_http_membership_is_the_console_json(cluster: Cluster) -> None:
    node = cluster.nodes["relay-0-1"]
    async with TestClient(TestServer(make_app(node))) as api:
        resp = await api.get("/v1/membership")
        assert resp.status == 200
        served = await resp.json()
    console = (await run_command(cluster.ctx, "cluster membership")).data
    assert isinstance(console, list)

    def steady(rows: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if k != "last_heartbeat_ms_ago"} for r in rows]

    assert steady(served) == steady(console)
    assert all(set(r) == KEYS for r in served)


async def run_console(url: str, namespace: str, command: str, json_mode: bool) -> int:
    return await asyncio.to_thread(console_main, url, None, None, command, json_mode, namespace)


async def test_console_main_prints_the_list(
    cluster: Cluster, redis_server: RedisServer, namespace: str, capsys: Capture
) -> None:
    assert await run_console(redis_server.url, namespace, "cluster membership", True) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\n") == 1
    rows = json.loads(out)
    assert isinstance(rows, list)
    assert [r["node"] for r in rows] == list(ADDRESSES)
    assert all(set(r) == KEYS for r in rows)
    assert await run_console(redis_server.url, namespace, "cluster info", True) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["leader"] == await leader_name(cluster)
    assert info["members"] == 3


async def test_cli_json_membership(
    cluster: Cluster, redis_server: RedisServer, namespace: str, capsys: Capture
) -> None:
    argv = ["console", "--redis", redis_server.url, "--namespace", namespace, "--json"]
    assert await asyncio.to_thread(cli_main, [*argv, "-c", "cluster membership"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["address"] for r in rows] == list(ADDRESSES.values())
    assert await asyncio.to_thread(cli_main, [*argv[:-1], "-c", "membership extra"]) == 1
    assert capsys.readouterr().err == (
        "mcluster: cluster membership takes no arguments, got 'extra'\n"
    )


def test_membership_and_info_are_implemented() -> None:
    implemented = {c.words for c in COMMANDS if c.implemented}
    assert {("membership",), ("info",)} <= implemented
    assert completions("cluster mem", [], []) == ["membership"]
    assert completions("in", [], []) == ["inbound_audit", "info"]
    assert completions("cluster in", [], []) == ["info"]
    assert completions("cluster membership ", [], ["relay-0-1"]) == []
    assert {"info", "membership"} <= set(completions("help ", [], []))
    lines = render(HelpView())
    for usage in ("cluster membership", "cluster info"):
        (found,) = [ln for ln in lines if ln.startswith(f"  {usage}  ")]
        assert not found.endswith("(not in this release)")


async def test_cluster_help_lists_them_as_implemented(cluster: Cluster) -> None:
    data = (await run_command(cluster.ctx, "cluster help")).data
    assert isinstance(data, dict)
    implemented = {c["command"] for c in data["commands"] if c["implemented"]}
    assert {"cluster membership", "cluster info"} <= implemented
