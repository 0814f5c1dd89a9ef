"""Fuzzing the agent's faces (issue 18): HTTP bodies, paths and queries of every route,
and the policy protocol's streams. No input may give a 500, crash or hang the agent, or
apply part of a batch: an accepted request is applied in full, a refused one leaves
nothing behind. Bounded and derandomized here (``tests/fuzz.py``); deep in
benchmarks/fuzz.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import event, given
from hypothesis import strategies as st

from mcluster.agent.node import Node
from mcluster.config import parse_config
from mcluster.faces.http.app import make_app
from mcluster.faces.http.common import NODE_KEY
from mcluster.faces.policy import Garbage, PolicyService
from mcluster.objects.policy import policy_config
from mcluster.security.http_guard import HttpGuard, HttpLimits
from tests.fuzz import profile
from tests.helpers import requests_of
from tests.redis_servers import RedisServer

CONFIG = """
Datasource "c1" {}
cluster {
  heartbeat_interval = 0.5
  lease_ttl = 2
  Replicate "inbound_cidr" {}
  Replicate "outbound_domains" {}
  Replicate "outbound_binding_domains" {}
  Replicate "c1" { type = "cache" }
  Replicate "metrics" {
    parameters = "connect;reception;rejection;delivery;audit_series;gauge_cache"
  }
}
Policy {
  client_rates = ("32,5/60")
  Quota "per_user" { key = "sasl_username"  limit = "3/3600" }
}
"""
OBJECTS = ["inbound_cidr", "outbound_domains", "outbound_binding_domains", "c1", "metrics", "x"]
PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.sampled_from([2**63, -1.5, 1e308])
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.sampled_from([*OBJECTS, "10.0.0.1", "10.0.0.0/24", "::1", "aol.com", "5/60", "1M"])
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                [
                    "events",
                    "object",
                    "key",
                    "delta",
                    "limits",
                    "name",
                    "cost",
                    "rate",
                    "value",
                    "ttl",
                    "by",
                    "type",
                    "ip",
                    "domain",
                    "binding",
                    "count",
                    "adds",
                    "route",
                    "x",
                ]
            )
            | st.text(max_size=8),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)
events = st.lists(
    st.fixed_dictionaries(
        {"object": st.sampled_from(OBJECTS), "key": st.sampled_from(
            ["10.0.0.1", "10.0.0.0/24", "2001:db8::1", "aol.com", "", "x" * 1100]) | st.text(
            max_size=10)},
        optional={"delta": st.integers(-5, 5) | json_scalars, "extra": json_scalars},
    ),
    max_size=12,
)  # fmt: skip
bodies = (
    json_values.map(lambda v: json.dumps(v).encode())
    | events.map(lambda e: json.dumps({"events": e}).encode())
    | st.binary(max_size=64)
    | st.sampled_from([b"", b"{", b'{"events": [', b"\xff\xfe", b"null", b"[]" * 100])
)
queries = st.dictionaries(
    st.sampled_from(
        [
            "view",
            "limit",
            "key",
            "cidr",
            "ip",
            "start",
            "end",
            "domain",
            "binding",
            "n",
            "since",
            "x",
        ]
    ),
    st.sampled_from(["global", "relay-0-1", "all", "0", "-1", "10.0.0.0/8", "aol.com"])
    | st.text(max_size=12),
    max_size=3,
)
segments = st.sampled_from([*OBJECTS, "per_user", "inc", "dec", "..", "%2F"]) | st.text(
    min_size=1, max_size=12
)


@pytest.fixture
async def node(redis_server: RedisServer, namespace: str) -> AsyncIterator[Node]:
    n = Node(parse_config(CONFIG, "fuzz.conf"), "relay-0-1", redis_server.url, namespace=namespace)
    await n.start()
    yield n
    await n.stop()


@pytest.fixture
async def api(node: Node) -> AsyncIterator[TestClient]:
    service = PolicyService(node, policy_config(node.config))
    guard = HttpGuard(limits=HttpLimits(max_events=10))
    async with TestClient(TestServer(make_app(node, service, guard))) as client:
        yield client


def routes(api: TestClient) -> list[tuple[str, str]]:
    return [(r.method, r.resource.canonical) for r in api.app.router.routes() if r.resource]


def recorded(node: Node) -> dict[str, int]:
    return {name: box.stats.recorded for name, box in node.outboxes.items()}


@profile(quick=150)
@given(data=st.data())
async def test_every_route_takes_any_input_without_a_500(api: TestClient, data: Any) -> None:
    method, canonical = data.draw(st.sampled_from(routes(api)), label="route")
    path = PARAM.sub(lambda m: quote(data.draw(segments, label=m.group(1)), safe=""), canonical)
    chosen = events.map(lambda e: json.dumps({"events": e}).encode()) | bodies
    body = data.draw(chosen, label="body") if method in ("POST", "PUT", "DELETE") else None
    query = data.draw(queries, label="query")
    node = api.app[NODE_KEY]
    before = recorded(node)
    async with asyncio.timeout(30):  # a hang is a failure, not a stuck suite
        resp = await api.request(method, path, data=body, params=query)
        text = await resp.text()
    event(f"status {resp.status}")
    assert resp.status < 500, (method, path, query, body, resp.status, text)
    if resp.status >= 400 and method != "HEAD":
        assert isinstance(json.loads(text)["error"], str), text
    if canonical == "/v1/events":
        after = recorded(node)
        changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        if resp.status == 202:
            want: dict[str, int] = {}
            for one in json.loads(body or b"{}")["events"]:
                want[one["object"]] = want.get(one["object"], 0) + 1
            assert changed == want, (changed, want)  # applied in full
        else:
            assert changed == {}, (resp.status, text, changed)  # nothing of it


@profile(quick=100)
@given(batch=events)
async def test_a_batch_is_applied_whole_or_not_at_all(api: TestClient, batch: Any) -> None:
    node = api.app[NODE_KEY]
    before = recorded(node)
    resp = await api.post("/v1/events", json={"events": batch})
    event(f"status {resp.status}")
    after = recorded(node)
    changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    if resp.status == 202:
        want: dict[str, int] = {}
        for one in batch:
            want[one["object"]] = want.get(one["object"], 0) + 1
        assert changed == want
    else:
        assert resp.status in (400, 413) and changed == {}, (resp.status, changed)


# -- the policy protocol ----------------------------------------------------------------

ATTRS = ["request", "protocol_state", "instance", "client_address", "sasl_username",
         "sender", "recipient", "recipient_count", "size", "queue_id", "x"]  # fmt: skip
attr_values = st.sampled_from(
    [
        "smtpd_access_policy",
        "RCPT",
        "DATA",
        "END-OF-MESSAGE",
        "CONNECT",
        "10.0.0.1",
        "::1",
        "2001:db8::1",
        "",
        "alice",
        "-1",
        "99999999999999999999",
        "1.2.3",
    ]
) | st.text(st.characters(exclude_characters="\n", exclude_categories=["Cs"]), max_size=12)


def request_bytes(attrs: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in attrs.items()).encode() + b"\n"


requests = st.dictionaries(st.sampled_from(ATTRS), attr_values, min_size=1, max_size=8)
streams = st.lists(
    requests.map(request_bytes) | st.binary(max_size=40)
    | st.sampled_from([b"\n", b"\r\n", b"a=b\r\n\r\n", b"=x\n\n", b"x" * 5000, b"\x00"]),
    max_size=6,
).map(b"".join)  # fmt: skip


def read_all(stream: bytes, cuts: list[int]) -> tuple[list[dict[str, str]], str | None]:
    """Feed ``stream`` in pieces cut at ``cuts``, then EOF: the requests read, and the
    Garbage that ended it (None: a clean end)."""
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    out: list[dict[str, str]] = []
    try:
        requests_of(*pieces, into=out)
    except Garbage as exc:
        return out, str(exc)
    return out, None


@profile(quick=300)
@given(stream=streams, data=st.data())
async def test_any_stream_reads_the_same_however_it_is_cut(stream: bytes, data: Any) -> None:
    """The same requests, and garbage or not, however the stream arrives. Which fault
    of a stream with several is named first may depend on the reads (a line too long
    before its binary byte has arrived): the names are tested on whole streams
    (tests/test_policy_io.py)."""
    requests_, garbage = read_all(stream, [])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4), label="cuts"))
    cut_requests, cut_garbage = read_all(stream, cuts)
    assert (cut_requests, cut_garbage is None) == (requests_, garbage is None)


@profile(quick=120)
@given(attrs=requests)
async def test_any_request_is_answered_or_refused_as_garbage(
    node: Node, attrs: dict[str, str]
) -> None:
    service = PolicyService(node, policy_config(node.config))
    try:
        async with asyncio.timeout(10):
            action = await service.answer(attrs)
    except Garbage:
        assert attrs.get("request") != "smtpd_access_policy"
        return
    assert action.split(" ", 1)[0] in ("DUNNO", "DEFER_IF_PERMIT", "REJECT", "HOLD", "DISCARD",
                                       "PREPEND", "OK", "FILTER", "WARN"), action  # fmt: skip
    assert "\n" not in action


@profile(quick=40)
@given(stream=streams)
async def test_the_service_outlives_any_stream(node: Node, stream: bytes) -> None:
    service = PolicyService(node, policy_config(node.config))
    await service.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(stream)
        writer.write_eof()
        async with asyncio.timeout(10):
            answered = await reader.read()
        writer.close()
        assert answered.count(b"action=") <= stream.count(b"\n\n") + stream.count(b"\n\r\n")
        good_r, good_w = await asyncio.open_connection("127.0.0.1", service.port)
        good_w.write(request_bytes({"request": "smtpd_access_policy", "client_address": "::1"}))
        async with asyncio.timeout(10):
            assert await good_r.readuntil(b"\n\n") == b"action=DUNNO\n\n"
        good_w.close()
    finally:
        await service.stop()
