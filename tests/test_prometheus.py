"""GET /metrics: parses with prometheus-client's parser, moves when events flow, one
registry per node, and answers while Redis is away."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from mcluster import Node, parse_config
from mcluster.faces.http.app import make_app
from mcluster.faces.policy import PolicyService
from mcluster.objects.policy import policy_config
from tests.helpers import until
from tests.postfix import Smtpd, policy_agent
from tests.redis_servers import RedisServer, start_redis

CONF = """
Datasource "c1" {}
cluster {
  Replicate "c1" { type = "cache" }
  Replicate "inbound_cidr" {}
  Replicate "outbound_domains" {}
  Replicate "shared_named_throttles" {}
  Shared_Throttle "t1" { rate = "3/60" }
}
Policy { client_rates = ("32,1/60") }
Shaping "ts" { domain = "yahoo.test"  match = "/TS0[1-4]/"  action = "suspend" }
Adaptive "y" { domain = "yahoo.test"  min = "1/60"  max = "100/60"  increase = "1/60" }
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, sorted labels), and the type of every family."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


async def scrape(client: TestClient[aiohttp.web.Request, aiohttp.web.Application]) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return parse(await resp.text())[0]


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def nodes(redis_server: RedisServer, namespace: str) -> AsyncIterator[list[Node]]:
    config = parse_config(CONF)
    async with (
        Node(config, "relay-1", redis_server.url, namespace=namespace) as a,
        Node(config, "relay-2", redis_server.url, namespace=namespace) as b,
    ):
        yield [a, b]


async def test_metrics_parse_and_move_when_events_flow(nodes: list[Node]) -> None:
    a, b = nodes
    policy = PolicyService(a, policy_config(a.config))
    await policy.start("127.0.0.1", 0)
    async with (
        TestClient(TestServer(make_app(a, policy))) as ca,
        TestClient(TestServer(make_app(b))) as cb,
    ):
        text = await (await ca.get("/metrics")).text()
        before, types = parse(text)
        assert types["mcluster_events_recorded"] == "counter"
        assert types["mcluster_apply_latency_seconds"] == "histogram"
        assert types["mcluster_replication_lag_seconds"] == "gauge"
        assert "# TYPE mcluster_events_recorded_total counter" in text
        assert one(before, "mcluster_members") == 2
        assert one(before, "mcluster_redis_up") == 1
        for i in range(40):
            a.record("inbound_cidr", f"10.0.{i}.1", +1)
        a.record("outbound_domains", "example.com", +3)
        b.record("outbound_domains", "example.com", +1)
        lagging = await scrape(ca)
        assert one(lagging, "mcluster_pending_keys", object="inbound_cidr") == 40
        assert one(lagging, "mcluster_replication_lag_seconds", object="inbound_cidr") >= 0
        await a.flush()
        a.record("outbound_domains", "example.com", -9)  # clamps 6 units: anomalies
        await a.flush()
        for _ in range(4):
            await a.throttles.acquire([("t1", 1)])
        mid = await scrape(ca)
        async with Smtpd(policy.port) as smtpd:
            assert await smtpd.transaction("10.9.0.1") == ["DUNNO"] * 4
            assert (await smtpd.transaction("10.9.0.1"))[0].startswith("DEFER_IF_PERMIT")
        await a.caches.set("c1", "user:1", "alice")
        await until(lambda: _has(b, "user:1"), 5, "the pair in b's replica")
        assert (await b.caches.get("c1", "user:1")) is not None
        after, bs = await scrape(ca), await scrape(cb)

    await policy.stop()

    def moved(name: str, now: Samples = after, **labels: str) -> float:
        return one(now, name, **labels) - one(before, name, **labels)

    assert moved("mcluster_events_recorded_total", now=mid, object="inbound_cidr") == 40
    assert moved("mcluster_events_applied_total", now=mid, object="inbound_cidr") == 40
    # The policy transaction's lease: +1 when admitted, -1 at END-OF-MESSAGE.
    assert moved("mcluster_events_recorded_total", object="inbound_cidr") == 42
    assert moved("mcluster_events_recorded_total", object="outbound_domains") == 2
    assert moved("mcluster_anomalies_total", object="outbound_domains") == 6
    batches = moved("mcluster_batches_total", now=mid, object="inbound_cidr")
    assert batches >= 1
    assert moved("mcluster_apply_latency_seconds_count", now=mid, object="inbound_cidr") == batches
    assert moved("mcluster_batch_keys_sum", now=mid, object="inbound_cidr") == 40
    assert one(mid, "mcluster_apply_latency_seconds_bucket", object="inbound_cidr", le="+Inf") == (
        one(mid, "mcluster_apply_latency_seconds_count", object="inbound_cidr")
    )
    assert one(mid, "mcluster_replication_lag_seconds", object="inbound_cidr") == 0
    throttle = {"family": "shared_named_throttles", "mode": "exact"}
    assert moved("mcluster_throttle_decisions_total", outcome="allowed", **throttle) == 3
    assert moved("mcluster_throttle_decisions_total", outcome="denied", **throttle) == 1
    assert moved("mcluster_policy_requests_total", action="DUNNO") == 4
    assert moved("mcluster_policy_requests_total", action="DEFER_IF_PERMIT") == 2
    assert moved("mcluster_policy_released_total", reason="end-of-message") == 1
    policy_windows = {"family": "policy_rates", "mode": "exact"}
    assert moved("mcluster_throttle_decisions_total", outcome="allowed", **policy_windows) == 1
    # One registry per node: b saw only its own event.
    assert one(bs, "mcluster_events_recorded_total", object="outbound_domains") == 1
    assert ("mcluster_policy_requests_total", (("action", "DUNNO"),)) not in bs
    # b's replica received a's write through the change stream: its staleness is measured.
    assert one(bs, "mcluster_cache_replica_keys", cache="c1") == 1
    assert one(bs, "mcluster_cache_lookups_total", cache="c1", result="hit") == 1
    worst = one(bs, "mcluster_cache_replica_staleness_seconds", cache="c1", quantile="1")
    assert 0 <= worst < 5


async def _has(node: Node, key: str) -> bool:
    return key in node.caches.replicas["c1"].entries


async def test_metrics_answer_while_redis_is_away(namespace: str) -> None:
    server = start_redis()
    try:
        async with (
            Node(parse_config(CONF), "relay-1", server.url, namespace=namespace) as node,
            TestClient(TestServer(make_app(node))) as client,
        ):
            assert one(await scrape(client), "mcluster_redis_up") == 1
            server.proc.kill()
            server.proc.wait()
            node.record("inbound_cidr", "10.0.0.1")
            started = time.monotonic()
            samples = await scrape(client)
            assert time.monotonic() - started < 2
            assert one(samples, "mcluster_redis_up") == 0
            assert ("mcluster_members", ()) not in samples
            assert one(samples, "mcluster_events_recorded_total", object="inbound_cidr") == 1
            await node.stop(timeout=0.5)
    finally:
        server.stop()


async def test_agent_process_serves_metrics_on_its_listen_address(tmp_path: Path) -> None:
    async with policy_agent(tmp_path, '"32,5/60"') as (farm, port):
        url = farm.agents["n1"].base + "/metrics"

        async def get() -> Samples:
            async with farm.session.get(url) as resp:
                assert resp.status == 200
                return parse(await resp.text())[0]

        before = await get()
        await farm.post("n1", [{"object": "inbound_cidr", "key": "10.8.0.1", "delta": 2}])
        await farm.flush("n1")
        async with Smtpd(port) as smtpd:
            await smtpd.transaction("10.8.0.2")
        after = await get()
        key = ("mcluster_events_applied_total", (("object", "inbound_cidr"),))
        assert after[key] - before[key] >= 1
        dunno = ("mcluster_policy_requests_total", (("action", "DUNNO"),))
        assert after[dunno] - before[dunno] == 4
        assert after[("mcluster_members", ())] == 1


ROOT = Path(__file__).resolve().parents[1]


async def test_docs_list_exactly_the_metrics_served_and_the_dashboard_uses_them(
    nodes: list[Node],
) -> None:
    node = nodes[0]
    policy = PolicyService(node, policy_config(node.config))
    async with TestClient(TestServer(make_app(node, policy))) as client:
        text = await (await client.get("/metrics")).text()
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    documented = set(
        re.findall(r"^\| `(mcluster_\w+)` \|", (ROOT / "docs/metrics.md").read_text(), re.M)
    )
    assert served == documented
    dashboard = json.loads((ROOT / "deploy/grafana-mcluster.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"mcluster_\w+", exprs)}
    assert used and used <= documented, used - documented
