"""Refusals that clients of the agent decide themselves (mcluster/faces/http/clients.py):
reported as running totals, a repeated or overtaken report changes nothing, a bad report
is refused whole naming the field, and /metrics exports the sum over reporters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mcluster import Node
from mcluster.faces.http.app import make_app
from mcluster.security.refusals import ClientReports
from tests.helpers import started_nodes
from tests.redis_cluster import AnyRedis

CONF = 'cluster { Replicate "inbound_cidr" {} }'


def test_totals_keep_the_highest_and_fold_old_reporters() -> None:
    reports = ClientReports(max_reporters=2)
    refused = ("refusals", "haraka", "connection_cap", "")
    reports.report("h-1", {refused: 3})
    reports.report("h-1", {refused: 2})  # overtaken by the report of 3: kept at 3
    reports.report("h-2", {refused: 1})
    assert reports.totals()[refused] == 4
    reports.report("h-3", {refused: 5})  # h-1, least recently heard, is folded in
    assert reports.totals()[refused] == 9
    reports.report("h-3", {refused: 6})
    assert reports.totals()[refused] == 10


@pytest.fixture
async def node(shared_redis: AnyRedis, namespace: str) -> AsyncIterator[Node]:
    async with started_nodes(CONF, shared_redis.url, namespace, count=1) as (made,):
        yield made


async def test_reports_over_http_and_metrics(node: Node) -> None:
    async with TestClient(TestServer(make_app(node))) as api:

        async def report(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            resp = await api.post("/v1/clients/report", json=body)
            return resp.status, dict(await resp.json())

        first = {"reporter": "haraka-h-1", "client": "haraka",
                 "refusals": {"connection_cap": 2, "agent_unavailable": 1},
                 "unavailable": {"connect": {"closed": 1}, "send": {"open": 3}}}  # fmt: skip
        assert await report(first) == (200, {"reported": True})
        assert (await report(first))[0] == 200  # a retry: counted once
        other = {"reporter": "haraka-h-2", "client": "haraka",
                 "refusals": {"connection_cap": 1}}  # fmt: skip
        assert (await report(other))[0] == 200
        metrics = await (await api.get("/metrics")).text()
        for line in [
            'mcluster_client_refusals_total{client="haraka",reason="connection_cap"} 3.0',
            'mcluster_client_refusals_total{client="haraka",reason="agent_unavailable"} 1.0',
            'mcluster_client_unavailable_total{client="haraka",fail="closed",stage="connect"} 1.0',
            'mcluster_client_unavailable_total{client="haraka",fail="open",stage="send"} 3.0',
        ]:
            assert line in metrics, line
        for body, message in [
            ([], "body must be a JSON object"),
            ({"reporter": "h", "client": "haraka", "extra": 1}, "unknown field(s): extra"),
            ({"reporter": "", "client": "haraka"}, "owner must be a non-empty string"),
            ({"reporter": "h", "client": "Haraka!"}, "client: must be a lower-case name"),
            ({"reporter": "h", "client": "haraka", "refusals": {"cap": -1}},
             "refusals.cap: must be a whole number >= 0"),
            ({"reporter": "h", "client": "haraka", "unavailable": {"connect": {"maybe": 1}}},
             'unavailable.connect: must be an object {"open": N, "closed": N}'),
            ({"reporter": "h", "client": "haraka",
              "refusals": {f"r{i}": 1 for i in range(33)}}, "refusals: at most 32 names"),
        ]:  # fmt: skip
            status, answer = await report(body)  # type: ignore[arg-type]
            assert status == 400 and message in answer["error"], (body, answer)
        # nothing of a refused report was kept
        assert 'reason="cap"' not in await (await api.get("/metrics")).text()
