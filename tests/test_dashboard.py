"""The live dashboard: a snapshot read from real nodes, rendered at 80x24, and ``--watch``."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from rich.console import Console, RenderableType

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.console.dashboard import render, render_plain, short_names
from mcluster.console.snapshot import (
    JobLine,
    ReplicationLine,
    Snapshot,
    read_snapshot,
    top_rows,
)
from mcluster.store import members
from mcluster.store.connect.urls import make_async_client
from mcluster.store.keys import ClusterKeys
from tests.helpers import until
from tests.redis_servers import RedisServer
from tests.test_console import CIDR, DOMAINS, start_reference_nodes
from tests.test_console_repl import drive

CONFIG = """
cluster {
  Replicate "inbound_cidr" {}
  Replicate "outbound_domains" {}
  Replicate "shared_named_throttles" {}
  Shared_Throttle "customer_42" { rate = "10/60" }
  Shared_Throttle "idle" { rate = "1000/60" }
}
"""
USED = 9  # of customer_42's 10 per minute


def screen(renderable: RenderableType, width: int = 80, height: int = 24) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, height=height, color_system=None).print(renderable)
    return out.getvalue().splitlines()


@pytest.fixture
async def busy(redis_server: RedisServer, namespace: str) -> AsyncIterator[dict[str, Node]]:
    """Three nodes with the reference's counts, a throttle near its limit, an anomaly."""
    config = parse_config(CONFIG)
    nodes: dict[str, Node] = {}
    try:
        await start_reference_nodes(config, redis_server.url, namespace, nodes)
        nodes["relay-0-3"].record("outbound_domains", "gone.example", -2)  # clamped: anomaly
        decision = await nodes["relay-0-1"].throttles.acquire([("customer_42", USED)])
        assert decision.allowed
        for node in nodes.values():
            await node.flush()
        client = nodes["relay-0-1"].client

        async def leader_elected() -> bool:
            return await members.leader(client, ClusterKeys(namespace)) is not None

        await until(leader_elected, 10, "a leader")
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


async def snapshot_of(redis_server: RedisServer, namespace: str) -> Snapshot:
    client = make_async_client(redis_server.url)
    try:
        return await read_snapshot(client, ClusterKeys(namespace))
    finally:
        await client.aclose()


def test_short_names_drop_the_shared_prefix() -> None:
    assert short_names(["relay-0-1", "relay-0-2", "relay-0-3"]) == ["1", "2", "3"]
    assert short_names(["a", "ab"]) == ["a", "b"]
    assert short_names(["solo"]) == ["solo"]


async def test_empty_cluster_renders_at_80x24(redis_server: RedisServer, namespace: str) -> None:
    snap = await snapshot_of(redis_server, namespace)
    assert (snap.members, snap.objects, snap.leader) == ((), (), None)
    lines = screen(render(snap))
    assert len(lines) == 24 and max(map(len, lines)) <= 80
    text = "\n".join(lines)
    assert f"mcluster '{namespace}'  0 live  no leader" in lines[0]
    assert "no live members" in text
    assert "no objects yet" in text
    assert "Jobs" not in text  # no job running: no panel


async def test_busy_cluster_snapshot_is_exact(
    busy: dict[str, Node], redis_server: RedisServer, namespace: str
) -> None:
    snap = await snapshot_of(redis_server, namespace)
    assert snap.nodes == ("relay-0-1", "relay-0-2", "relay-0-3")
    assert snap.leader in snap.nodes
    assert [m.epoch for m in snap.members] == [n.member.epoch for n in busy.values() if n.member]
    cidr = next(o for o in snap.objects if o.name == "inbound_cidr")
    top = cidr.rows[0]
    expected = [sum(CIDR[n].values()) for n in snap.nodes]
    assert (top.key, top.global_count, list(top.per_node)) == ("10.0.0.0/8", 31, expected)
    domains = next(o for o in snap.objects if o.name == "outbound_domains")
    hotmail = sum(DOMAINS[n].get("hotmail.com", 0) for n in snap.nodes)
    assert (domains.rows[0].key, domains.rows[0].global_count) == ("hotmail.com", hotmail)
    first = snap.throttles[0]
    assert (first.name, first.used, first.limit) == ("customer_42", USED, 10)
    assert {(a.object, a.view, a.count) for a in snap.anomalies} == {
        ("outbound_domains", "global", 2),
        ("outbound_domains", "relay-0-3", 2),
    }
    assert [x.node for x in snap.replication] == list(snap.nodes)  # one line per node


async def test_busy_cluster_renders_at_80x24(
    busy: dict[str, Node], redis_server: RedisServer, namespace: str
) -> None:
    snap = await snapshot_of(redis_server, namespace)
    lines = screen(render(snap))
    assert len(lines) == 24 and max(map(len, lines)) <= 80
    text = "\n".join(lines)
    assert f"3 live  leader {snap.leader} (epoch {snap.epoch})" in lines[0]
    for node in snap.nodes:
        assert node in text
    assert "leader" in text
    row = next(line for line in lines if "10.0.0.0/8" in line)
    assert row.split()[-4:] == ["31", "5", "7", "19"]  # global, then relay-0-1, -2, -3
    assert "customer_42" in text and "90%" in text
    assert "idle" not in text  # far from its limit
    plain = "\n".join(screen(render_plain(snap), height=200))
    for needle in ("Replication lag", "Anomalies", "relay-0-3 | outbound_domains", "hotmail.com"):
        assert needle in plain


def test_jobs_show_progress_bars() -> None:
    job = JobLine("reap #e3-1#relay-0-2", "reaping inbound_cidr", 2500, 5000)
    lines = screen(render(Snapshot("mc", 0, jobs=(job,))))
    text = "\n".join(lines)
    assert "Jobs" in text and "2,500/5,000" in text
    bar = next(line for line in lines if "reaping" in line)
    assert bar.count("━") == 4  # half done on an 8-cell bar
    plain = "\n".join(screen(render_plain(Snapshot("mc", 0, jobs=(job,))), height=60))
    assert "reaping inbound_cidr" in plain


def test_a_narrow_screen_drops_node_columns_not_the_global_count() -> None:
    from mcluster.console.snapshot import ObjectTop, TopRow

    top = ObjectTop("inbound_cidr", "cidrtree", (TopRow("10.0.0.0/8", 31, (4, 7, 20)),), 6)
    nodes = ("relay-0-1", "relay-0-2", "relay-0-3")
    wide = next(
        line for line in screen(render(Snapshot("mc", 0, nodes, objects=(top,)))) if "/8" in line
    )
    assert wide.split()[-4:] == ["31", "4", "7", "20"]
    snap = Snapshot("mc", 0, nodes, objects=(top,))
    narrow = next(line for line in screen(render(snap, 60), width=60) if "/8" in line)
    assert "31" in narrow.split() and len(narrow) <= 60


async def test_watch_without_a_tty_prints_plain_frames_and_exits_0(
    busy: dict[str, Node], redis_server: RedisServer, namespace: str
) -> None:
    argv = [sys.executable, "-m", "mcluster", "console", "--redis", redis_server.url]
    argv += ["--namespace", namespace, "--watch", "--seconds", "2"]
    env = {k: v for k, v in os.environ.items() if k != "MCLUSTER_REDIS_URL"}
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=30, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "\x1b[" not in done.stdout  # no escape sequences in a pipe
    frames = done.stdout.count("--- frame ")
    assert 2 <= frames <= 4, done.stdout
    assert done.stdout.count("relay-0-2") >= frames
    assert "10.0.0.0/8" in done.stdout


def test_watch_needs_positive_seconds() -> None:
    argv = [sys.executable, "-m", "mcluster", "console", "--watch", "--seconds", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--seconds needs --watch and a positive number" in done.stderr


async def test_watch_in_the_repl(
    busy: dict[str, Node], redis_server: RedisServer, namespace: str
) -> None:
    lines = ["watch 1", "watch soon", "nodename"]
    code, out, err, _, prompts = await asyncio.to_thread(
        drive, redis_server, namespace, "relay-0-1", lines
    )
    assert code == 0
    assert "--- frame 1" in out and "10.0.0.0/8" in out
    assert out.rstrip().endswith("relay-0-1")  # the session went on after the dashboard
    assert "usage: watch [SECONDS]" in err
    assert len(prompts) == 4


def test_top_of_a_cidr_tree_is_its_widest_distinct_networks() -> None:
    from mcluster.objects.cidrtree import Row

    rows = [
        Row("0.0.0.0/0", 60),  # trie rows above /8 are left out
        Row("0.0.0.0/1", 50),
        Row("10.0.0.0/8", 50),
        Row("10.0.0.0/15", 50),  # repeats 10.0.0.0/8: one branch of the trie
        Row("10.0.0.0/24", 30),
        Row("10.0.0.7/32", 30),  # repeats 10.0.0.0/24
        Row("10.0.1.0/24", 20),
        Row("127.0.0.0/8", 10),
        Row("2001:db8::/32", 5),
    ]
    top = [r.key for r in top_rows("cidrtree", rows, 5)]
    assert top == ["10.0.0.0/8", "127.0.0.0/8", "10.0.0.0/24", "10.0.1.0/24", "2001:db8::/32"]
    assert [r.key for r in top_rows("gauge table", [Row("a", 1), Row("b", 3)])] == ["b", "a"]


async def test_the_manager_is_listed_but_has_no_column(
    busy: dict[str, Node], redis_server: RedisServer, namespace: str
) -> None:
    from mcluster.manager.manager import Manager

    manager = Manager(None, redis_server.url, name="mgr", namespace=namespace)
    await manager.start()
    try:
        snap = await snapshot_of(redis_server, namespace)
    finally:
        await manager.stop()
    assert "mgr" in [m.node for m in snap.members]
    assert next(m for m in snap.members if m.node == "mgr").manager
    assert snap.nodes == ("relay-0-1", "relay-0-2", "relay-0-3")
    lines = screen(render(snap))
    assert any(line.split()[:1] == ["mgr"] and "manager" in line for line in lines), lines


async def test_a_kept_reader_shows_rows_that_appear_after_its_first_read(
    redis_server: RedisServer, namespace: str
) -> None:
    from mcluster.console.snapshot import SnapshotReader

    client = make_async_client(redis_server.url)
    node = Node(parse_config(CONFIG), "relay-0-1", redis_server.url, namespace=namespace)
    try:
        await node.start()
        reader = SnapshotReader(client, ClusterKeys(namespace))
        first = await reader.read()
        assert all(not top.rows for top in first.objects)
        node.record("inbound_cidr", "10.9.8.7", 3)
        await node.flush()
        later = await reader.read()  # well within the 10 s between full scans
        cidr = next(top for top in later.objects if top.name == "inbound_cidr")
        assert [(r.key, r.global_count, r.per_node) for r in cidr.rows] == [("10.0.0.0/8", 3, (3,))]
    finally:
        await node.stop()
        await client.aclose()


async def test_running_jobs_show_with_their_progress(
    busy: dict[str, Node], redis_server: RedisServer, namespace: str
) -> None:
    from mcluster.store.jobs import Job

    node = busy["relay-0-1"]
    keys = ClusterKeys(namespace)
    job = await Job.start(
        node.client, keys, "resync", "lease lost", runner=node.name,
        runner_private=node.private_name, total=10,
    )  # fmt: skip
    await job.step(4, force=True)
    snap = await snapshot_of(redis_server, namespace)
    assert snap.jobs == (JobLine(f"#{job.id}", "resync lease lost", 4, 10),)
    await job.finish("done")
    assert (await snapshot_of(redis_server, namespace)).jobs == ()  # finished: not shown
    lines = screen(render(snap))
    assert any("resync" in line and "4/10" in line for line in lines), lines


def test_replication_shows_each_nodes_lag_and_staleness() -> None:
    lines = (
        ReplicationLine("relay-0-1", 1234.0, "inbound_cidr", 37.5, "mycache", 200),
        ReplicationLine("relay-0-2", 3.25, "outbound_domains", None, None, 300),
        ReplicationLine("relay-0-3", 8.0, "inbound_cidr", 0.5, "mycache", 9_000),  # silent
        ReplicationLine("relay-0-4"),  # never reported
    )
    nodes = tuple(x.node for x in lines)
    snap = Snapshot("mc", 0, nodes, replication=lines)
    rows = screen(render(snap))
    assert len(rows) == 24 and max(map(len, rows)) <= 80
    cells = {row.split()[0]: row.split()[1:3] for row in rows if row.startswith("relay-0-")}
    assert cells == {
        "relay-0-1": ["1.2s", "38ms"],
        "relay-0-2": ["3.2ms", "-"],
        "relay-0-3": ["?9.0s", "0.5ms"],  # its report is 9 s old: the lag is unknown
        "relay-0-4": ["-", "-"],
    }
    plain = screen(render_plain(snap), height=100)
    row = next(r for r in plain if r.startswith("|relay-0-1 "))
    assert [c.strip() for c in row.strip("|").split("|")] == [
        "relay-0-1", "1.2s", "inbound_cidr", "38ms", "mycache",
    ]  # fmt: skip


STATUS_CONFIG = """
Datasource "mycache" {}
cluster {
  heartbeat_interval = 0.2
  Replicate "inbound_cidr" { max_delay = 0.05 }
  Replicate "mycache" { type = "cache" }
}
"""


async def test_nodes_report_true_lag_and_staleness(
    redis_server: RedisServer, namespace: str
) -> None:
    """A delta held 0.5 s before its batch may ship: the lag its node reports is at least
    that; a replica that applies every set 250 ms later than it is made: the staleness it
    reports is at least that. The dashboard shows both. A heartbeat a second (not 0.2 s):
    the report carrying the lag stays in Redis for longer than a snapshot takes to read."""
    config = parse_config(STATUS_CONFIG.replace("interval = 0.2", "interval = 1"))
    a = Node(config, "relay-0-1", redis_server.url, namespace=namespace)
    b = Node(config, "relay-0-2", redis_server.url, namespace=namespace)
    found: list[Snapshot] = []
    lagged: list[Snapshot] = []  # the snapshot of the worst lag relay-0-1 reported
    try:
        await a.start()
        await b.start()
        b.caches.replica("mycache").clock_offset_ms += 250  # sees each set 250 ms later
        box = a.outboxes["inbound_cidr"]

        def note(snap: Snapshot) -> Snapshot:
            lag = snap.replication[0].lag_ms or 0.0
            if not lagged or lag > (lagged[0].replication[0].lag_ms or 0.0):
                lagged[:] = [snap]
            return snap

        async def watch() -> None:
            # Every report from the hold on: the one after the ship carries its lag, the
            # next ones 0 (a heartbeat reports the worst lag since the last). That report
            # can come before this test reads the time of the ship, so it is watched for.
            while True:
                note(await snapshot_of(redis_server, namespace))
                await asyncio.sleep(0.02)

        async with box.lock:  # the outbox cannot ship for 0.5 s
            a.record("inbound_cidr", "10.1.2.3", 1)
            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.5)
        for i in range(5):
            await a.caches.set("mycache", f"k{i}", "v")
        await until(lambda: _true(box.stats.batches >= 1), 10, "the held batch shipped")
        shipped_ms = await members.server_time_ms(a.client)

        async def reported() -> bool:
            snap = note(await snapshot_of(redis_server, namespace))
            first, second = snap.replication
            if first.reported_ms_ago is None:  # no heartbeat yet
                return False
            found[:] = [snap]
            after = snap.server_time_ms - first.reported_ms_ago > shipped_ms
            return after and second.staleness_ms is not None

        await until(reported, 10, "both nodes reported after the batch shipped")
        watcher.cancel()
    finally:
        await a.stop()
        await b.stop()
    first = lagged[0].replication[0]
    second = found[0].replication[1]
    assert first.lag_object == "inbound_cidr"
    assert first.lag_ms is not None and 500 <= first.lag_ms < 5_000, first
    assert second.staleness_cache == "mycache"
    assert second.staleness_ms is not None and 250 <= second.staleness_ms < 5_000, second
    assert found[0].replication[0].staleness_ms is None  # its own sets are no staleness sample
    lag = f"{first.lag_ms / 1000:.1f}s" if first.lag_ms >= 1000 else f"{first.lag_ms:.0f}ms"
    assert node_cells(lagged[0])["relay-0-1"] == [lag, "-"]
    assert node_cells(found[0])["relay-0-2"][1] == f"{second.staleness_ms:.0f}ms"


def node_cells(snap: Snapshot) -> dict[str, list[str]]:
    """The dashboard's lag and staleness cells of each node of ``snap``."""
    return {row.split()[0]: row.split()[1:3] for row in screen(render(snap)) if "relay" in row}


async def _true(value: bool) -> bool:
    return value
