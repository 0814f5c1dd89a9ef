"""The console's commands against a real Redis, with data written by real nodes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from rich.console import Console, RenderableType

from mcluster.agent.node import Node
from mcluster.config import ClusterConfig, parse_config
from mcluster.console import ConsoleContext, run_command
from mcluster.console.commands import (
    COMMANDS,
    CommandError,
    NotFound,
    UnknownCommand,
    UsageError,
    exit_code,
)
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys
from tests.redis_servers import RedisServer

CONFIG = """
cluster {
  Replicate "inbound_cidr" {}
  Replicate "outbound_domains" {}
}
"""

# The reference's sample (7.7.1.1 and 7.7.1.3) spread over three nodes.
CIDR = {
    "relay-0-1": {"10.0.0.180": 4, "10.0.0.181": 1},
    "relay-0-2": {"10.0.0.103": 3, "10.0.0.180": 2, "10.0.0.181": 2},
    "relay-0-3": {"10.0.0.103": 1, "10.0.0.180": 8, "10.0.0.181": 10},
}
DOMAINS = {
    "relay-0-1": {"aol.com": 1, "bellsouth.net": 4, "hotmail.com": 26, "yahoo.com": 30},
    "relay-0-2": {"aol.com": 9, "bellsouth.net": 19, "hotmail.com": 220, "omniti.com": 5},
    "relay-0-3": {"yahoo.com": 35},
}
GLOBAL_CIDR = [
    "lazy, snapped cidrtree 'inbound_cidr', view 'global'",
    "     31                         10.0.0.0/8",
    "     31                         10.0.0.0/24",
    "      4                         10.0.0.103/32",
    "     27                         10.0.0.180/31",
    "     14                         10.0.0.180/32",
    "     13                         10.0.0.181/32",
]


@dataclass
class Cluster:
    nodes: dict[str, Node]
    ctx: ConsoleContext
    config: ClusterConfig

    def attached(self, node: str | None) -> ConsoleContext:
        return ConsoleContext(self.ctx.client, self.ctx.keys, node, self.ctx.configured)


def render(renderable: RenderableType) -> list[str]:
    buffer = io.StringIO()
    Console(file=buffer, width=120).print(renderable)
    return buffer.getvalue().splitlines()


async def text(ctx: ConsoleContext, line: str) -> list[str]:
    return render((await run_command(ctx, line)).renderable)


async def start_reference_nodes(
    config: ClusterConfig, url: str, namespace: str, nodes: dict[str, Node]
) -> None:
    """Start relay-0-1..3 into ``nodes`` (so a caller can stop those that started) with
    the reference's CIDR and DOMAINS counts, flushed."""
    for i, name in enumerate(CIDR, start=1):
        node = Node(config, name, url, namespace=namespace, address=f"127.0.0.{i}:4802")
        await node.start()
        nodes[name] = node
        for addr, n in CIDR[name].items():
            node.record("inbound_cidr", addr, n)
        for domain, n in DOMAINS[name].items():
            node.record("outbound_domains", domain, n)
        await node.flush()


@pytest.fixture
async def cluster(redis_server: RedisServer, namespace: str) -> AsyncIterator[Cluster]:
    config = parse_config(CONFIG)
    nodes: dict[str, Node] = {}
    await start_reference_nodes(config, redis_server.url, namespace, nodes)
    client = make_async_client(redis_server.url)
    ctx = ConsoleContext(client, ClusterKeys(namespace))
    try:
        yield Cluster(nodes, ctx, config)
    finally:
        for node in nodes.values():
            await node.stop()
        await client.aclose()


async def test_global_view_prints_the_reference_rows(cluster: Cluster) -> None:
    assert await text(cluster.ctx, "cluster shared show inbound_cidr") == GLOBAL_CIDR


async def test_cluster_word_is_optional_and_verbs_ignore_case(cluster: Cluster) -> None:
    assert await text(cluster.ctx, "  SHARED Show inbound_cidr ") == GLOBAL_CIDR
    assert await text(cluster.ctx, "Cluster shared show inbound_cidr from global") == GLOBAL_CIDR


async def test_from_node_shows_the_node_view(cluster: Cluster) -> None:
    node = cluster.nodes["relay-0-2"]
    assert await text(cluster.ctx, "cluster shared show inbound_cidr from relay-0-2") == [
        f"lazy, snapped cidrtree 'inbound_cidr', view '{node.private_name}'",
        "      7                         10.0.0.0/8",
        "      7                         10.0.0.0/24",
        "      3                         10.0.0.103/32",
        "      4                         10.0.0.180/31",
        "      2                         10.0.0.180/32",
        "      2                         10.0.0.181/32",
    ]
    assert node.private_name.endswith("#relay-0-2")


async def test_gauge_table_global_and_node_views(cluster: Cluster) -> None:
    assert await text(cluster.ctx, "cluster shared show outbound_domains") == [
        "lazy, snapped gauge table 'outbound_domains', view 'global'",
        "                                                     aol.com:           10",
        "                                               bellsouth.net:           23",
        "                                                 hotmail.com:          246",
        "                                                  omniti.com:            5",
        "                                                   yahoo.com:           65",
    ]
    lines = await text(cluster.ctx, "cluster shared show outbound_domains from relay-0-1")
    assert lines[1:] == [
        "                                                     aol.com:            1",
        "                                               bellsouth.net:            4",
        "                                                 hotmail.com:           26",
        "                                                   yahoo.com:           30",
    ]


async def test_json_is_the_listing_of_the_http_api(cluster: Cluster) -> None:
    result = await run_command(cluster.ctx, "cluster shared show inbound_cidr from relay-0-1")
    assert result.data == {
        "object": "inbound_cidr",
        "type": "cidrtree",
        "view": cluster.nodes["relay-0-1"].private_name,
        "node": "relay-0-1",
        "rows": [
            {"key": "10.0.0.0/8", "count": 5},
            {"key": "10.0.0.0/24", "count": 5},
            {"key": "10.0.0.180/31", "count": 5},
            {"key": "10.0.0.180/32", "count": 4},
            {"key": "10.0.0.181/32", "count": 1},
        ],
        "total_rows": 5,
        "omitted_rows": 0,
        "distinct_keys": 2,
        "anomalies": 0,
    }
    listing = await cluster.nodes["relay-0-3"].show("outbound_domains")
    assert (await run_command(cluster.ctx, "shared show outbound_domains")).data == (
        listing.to_json()
    )


async def test_limit_and_all(cluster: Cluster) -> None:
    lines = await text(cluster.ctx, "cluster shared show inbound_cidr limit 2")
    assert lines == [
        *GLOBAL_CIDR[:3],
        "… 4 more rows not shown (3 addresses); "
        "use 'cluster shared show inbound_cidr all' to list them",
    ]
    limited = await run_command(cluster.ctx, "shared show inbound_cidr LIMIT 0 from relay-0-3")
    assert limited.data["rows"] == []
    assert limited.data["omitted_rows"] == 6
    assert await text(cluster.ctx, "shared show inbound_cidr all") == GLOBAL_CIDR
    assert await text(cluster.ctx, "shared show inbound_cidr from relay-0-2 all") == (
        await text(cluster.ctx, "shared show inbound_cidr from relay-0-2")
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("shared show", "needs an object name"),
        ("shared show inbound_cidr limit", "'limit' needs a number of rows"),
        ("shared show inbound_cidr limit -3", "whole number of rows"),
        ("shared show inbound_cidr limit x", "whole number of rows"),
        ("shared show inbound_cidr all limit 3", "either 'all' or 'limit N'"),
        ("shared show inbound_cidr from", "'from' needs a node name"),
        ("shared show inbound_cidr from a from b", "unexpected 'from'"),
        ("shared show inbound_cidr sideways", "unexpected 'sideways'"),
        ("shared list everything", "takes no arguments"),
        ("", "empty command"),
        ("cluster", "empty command"),
    ],
)
async def test_usage_errors(cluster: Cluster, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        await run_command(cluster.ctx, line)
    assert exit_code(info.value) == 1


async def test_unknown_object_names_the_managed_ones(cluster: Cluster) -> None:
    with pytest.raises(NotFound) as info:
        await run_command(cluster.ctx, "cluster shared show outbound_domain")
    assert str(info.value) == (
        "unknown object 'outbound_domain'; managed objects: inbound_cidr, outbound_domains, "
        "outbound_slots"
    )
    assert exit_code(info.value) == 2


async def test_unknown_node_names_the_nodes_with_a_view(cluster: Cluster) -> None:
    with pytest.raises(NotFound) as info:
        await run_command(cluster.ctx, "cluster shared show inbound_cidr from relay-9")
    message = str(info.value)
    assert "unknown node 'relay-9'" in message
    assert "relay-0-1, relay-0-2, relay-0-3" in message
    assert exit_code(info.value) == 2


async def test_shared_list(cluster: Cluster) -> None:
    assert await text(cluster.ctx, "cluster shared list") == [
        "Currently managed objects:",
        "                  inbound_cidr [lazy, cidrtree w/ snapshots]",
        "              outbound_domains [lazy, gauge table w/ snapshots]",
        "                outbound_slots [lazy, gauge table w/ snapshots]",
    ]
    result = await run_command(cluster.ctx, "shared list")
    assert result.data == {
        "objects": [
            {
                "name": "inbound_cidr",
                "type": "cidrtree",
                "replication_type": "inbound_cidr",
                "description": "lazy, cidrtree w/ snapshots",
            },
            {
                "name": "outbound_domains",
                "type": "gauge table",
                "replication_type": "outbound_domains",
                "description": "lazy, gauge table w/ snapshots",
            },
            {
                "name": "outbound_slots",
                "type": "gauge table",
                "replication_type": "outbound_binding_domains",
                "description": "lazy, gauge table w/ snapshots",
            },
        ]
    }


async def test_configured_objects_are_listed_too(cluster: Cluster) -> None:
    ctx = ConsoleContext(
        cluster.ctx.client, cluster.ctx.keys, None, [("outbound_cidr", "outbound_cidr")]
    )
    names = [o["name"] for o in (await run_command(ctx, "shared list")).data["objects"]]
    assert names == ["inbound_cidr", "outbound_cidr", "outbound_domains", "outbound_slots"]
    assert await text(ctx, "shared show outbound_cidr") == [
        "lazy, snapped cidrtree 'outbound_cidr', view 'global'"
    ]


async def test_nodename(cluster: Cluster) -> None:
    result = await run_command(cluster.attached("relay-0-2"), "cluster nodename")
    assert render(result.renderable) == ["relay-0-2"]
    assert result.data == {"node": "relay-0-2"}
    with pytest.raises(CommandError) as info:
        await run_command(cluster.ctx, "cluster nodename")
    assert str(info.value) == (
        "cluster nodename needs --node NAME (the node this console is attached to)"
    )
    assert exit_code(info.value) == 1


async def test_nodeaddr(cluster: Cluster) -> None:
    result = await run_command(cluster.attached("relay-0-3"), "NODEADDR")
    assert render(result.renderable) == ["127.0.0.3:4802"]
    assert result.data == {"node": "relay-0-3", "address": "127.0.0.3:4802"}
    with pytest.raises(CommandError, match="cluster nodeaddr needs --node NAME"):
        await run_command(cluster.ctx, "cluster nodeaddr")
    with pytest.raises(NotFound) as info:
        await run_command(cluster.attached("relay-7"), "cluster nodeaddr")
    assert str(info.value) == (
        "unknown node 'relay-7'; cluster members: relay-0-1, relay-0-2, relay-0-3"
    )


async def test_nodeaddr_without_an_address(
    cluster: Cluster, redis_server: RedisServer, namespace: str
) -> None:
    async with Node(cluster.config, "bare", redis_server.url, namespace=namespace):
        with pytest.raises(CommandError, match="'bare' has no cluster address"):
            await run_command(cluster.attached("bare"), "cluster nodeaddr")


async def test_help_lists_all_commands(cluster: Cluster) -> None:
    result = await run_command(cluster.ctx, "cluster help")
    commands = result.data["commands"]
    assert [c["command"] for c in commands] == [c.usage for c in COMMANDS]
    implemented = {c["command"] for c in commands if c["implemented"]}
    assert implemented == {
        "cluster help",
        "cluster membership",
        "cluster info",
        "cluster nodename",
        "cluster nodeaddr",
        "cluster shared list",
        "cluster shared show OBJ [from NODE] [all | limit N]",
        "broadcast COMMAND",
        "unicast NODE COMMAND",
        "cluster jobs",
        "cluster abort ID",
        "cluster arp show",
        "cluster duravip show [tables]",
        "cluster duravip move FROM TO",
        "cluster duravip announce view",
        "cluster duravip debug on|off",
        "cluster show logs",
        "cluster reset",
        "config reload",
    }
    lines = render(result.renderable)
    assert len(lines) == 1 + len(COMMANDS)
    duravip = await run_command(cluster.ctx, "help duravip")
    assert [c["command"] for c in duravip.data["commands"]] == [
        "cluster duravip show [tables]",
        "cluster duravip move FROM TO",
        "cluster duravip announce view",
        "cluster duravip debug on|off",
    ]


async def test_unknown_and_incomplete_commands(cluster: Cluster) -> None:
    with pytest.raises(UnknownCommand) as info:
        await run_command(cluster.ctx, "cluster frobnicate now")
    assert str(info.value) == (
        "unknown command 'cluster frobnicate now'; type 'cluster help' for the list"
    )
    with pytest.raises(UsageError, match=r"incomplete command 'cluster shared'; one of: "):
        await run_command(cluster.ctx, "cluster shared")
    with pytest.raises(UnknownCommand, match="no command matches"):
        await run_command(cluster.ctx, "help frobnicate")


def test_every_implemented_command_has_a_handler() -> None:
    from mcluster.console.commands import HANDLERS as _HANDLERS

    assert {c.words for c in COMMANDS if c.implemented} == set(_HANDLERS)
