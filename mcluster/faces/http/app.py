"""The agent's local HTTP API (aiohttp), bound to loopback by default.

    POST /v1/events   {"events": [{"object": ..., "key": ..., "delta": 1}, ...]
                       [, "owner": "haraka-HOST-PID"]} -> 202 {"accepted"[, "lease_ttl"]}
    POST /v1/flush    -> 200 once everything recorded before it is applied in Redis
    GET  /v1/objects  -> {"objects": [...]}       (as ``cluster shared list --json``)
    GET  /v1/objects/{name}?view=global|NODE[&limit=N|all]  (as ``cluster shared show``)
    GET  /v1/objects/{name}/count?key=PREFIX_OR_KEY&view=...   -> {"count": N}
    GET  /v1/stats    -> per-object counters of this agent
    GET  /v1/membership -> [{...}, ...]           (as ``cluster membership --json``)
    GET  /v1/duravip  -> the DuraVIPs this node believes it owns (fencing tokens)
    GET  /healthz     -> 200 once the agent has joined, else 503
    GET  /metrics     -> Prometheus text format (see ``prometheus``)
    /v1/throttles...  -> see ``http_throttles``
    /v1/caches...     -> see ``http_caches``
    /v1/metrics..., /v1/series...  -> see ``http_audit``
    /v1/policy...     -> see ``http_quotas``
    /v1/outbound/outcome, /v1/shaping...  -> see ``http_shaping``
    POST /v1/clients/report  -> see ``http_clients``

A request with a bad event is refused whole (400 naming the first bad event by index and
why); nothing of it is recorded. The guard (``mcluster.security.http_guard``) runs before
every handler: the bearer token, bodies over the limit (8 MiB by default) and batches of
more than ``max_events`` get 413, and nothing of a refused request is applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mcluster.agent.node import Node
from mcluster.agent.outbox import RETRY_ERRORS
from mcluster.errors import Error, InvalidValue, NotFound, UnknownObject
from mcluster.faces import prometheus
from mcluster.faces.http import audit as http_audit
from mcluster.faces.http import caches as http_caches
from mcluster.faces.http import clients as http_clients
from mcluster.faces.http import quotas as http_quotas
from mcluster.faces.http import shaping as http_shaping
from mcluster.faces.http import throttles as http_throttles
from mcluster.faces.http.common import NODE_KEY, error, read_json
from mcluster.faces.policy import PolicyService
from mcluster.objects.views import DEFAULT_LIMIT
from mcluster.outbound.leases import check_owner
from mcluster.security.http_guard import GUARD_KEY, HttpGuard, check_batch
from mcluster.store.cluster_view import membership

log = logging.getLogger("mcluster.agent")

FLUSH_TIMEOUT = 30.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadEvent(Error, ValueError):
    pass


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is a JSON body with a clear message; the agent never dies of a request."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason)
    except (NotFound, UnknownObject) as exc:
        return error(404, str(exc))
    except RETRY_ERRORS as exc:
        return error(503, f"Redis is unreachable ({type(exc).__name__}: {exc}); try again")
    except Exception:
        log.exception("internal error serving %s %s", request.method, request.path)
        return error(500, "internal error; see the agent's log")


def parse_events(request: web.Request, body: Any) -> list[tuple[str, bytes, int]]:
    """Validate every event before recording any: (object, packed key, delta)."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise BadEvent('body must be a JSON object {"events": [...]}')
    events = body["events"]
    check_batch(request, len(events))
    node = request.app[NODE_KEY]
    parsed = []
    for i, event in enumerate(events):
        try:
            if not isinstance(event, dict):
                raise ValueError("must be an object with object, key and delta")
            unknown = set(event) - {"object", "key", "delta"}
            if unknown:
                raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
            obj, key, delta = event.get("object"), event.get("key"), event.get("delta", 1)
            if not isinstance(obj, str):
                raise ValueError("object must be a string")
            if not isinstance(key, str):
                raise ValueError("key must be a string")
            if type(delta) is not int:
                raise ValueError(f"delta must be an integer, got {json.dumps(delta)}")
            if abs(delta) > 2**31:
                raise ValueError(f"delta {delta} is out of range (|delta| <= 2^31)")
            box = node.outbox(obj)
            parsed.append((obj, box.admit(key), delta))
        except (ValueError, UnknownObject) as exc:
            raise BadEvent(f"events[{i}]: {exc}") from None
    return parsed


async def post_events(request: web.Request) -> web.Response:
    """Record the events; with an ``owner``, what they count is also under that owner's
    lease (``mcluster/outbound/leases.py``): taken back if it stops renewing."""
    node = request.app[NODE_KEY]
    body = await read_json(request)
    try:
        parsed = parse_events(request, body)
        owner = body.get("owner")
        if owner is not None:
            check_owner(owner)
    except BadEvent as exc:
        return error(400, str(exc))
    except InvalidValue as exc:  # the owner
        return error(400, str(exc))
    for obj, packed, delta in parsed:
        node.shard_box(obj, packed).add(packed, delta)
        if owner is not None:
            node.owner_leases.count(owner, obj, packed, delta)
    answer: dict[str, object] = {"accepted": len(parsed)}
    if owner is not None:
        answer["lease_ttl"] = node.lease_ttl
    return web.json_response(answer, status=202)


async def post_flush(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    try:
        async with asyncio.timeout(FLUSH_TIMEOUT):
            await node.flush()
    except TimeoutError:
        return error(503, f"Redis did not apply the pending batches within {FLUSH_TIMEOUT} s")
    return web.json_response({"flushed": True})


async def get_objects(request: web.Request) -> web.Response:
    infos = await request.app[NODE_KEY].objects()
    return web.json_response({"objects": [i.to_json() for i in infos]})


def limit_param(request: web.Request) -> int | None:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if raw == "all":
        return None
    if not raw.isdigit():
        raise web.HTTPBadRequest(reason=f"limit must be a number or 'all', got {raw!r}")
    return int(raw)


async def get_object(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    listing = await node.show(
        request.match_info["name"], request.query.get("view", "global"), limit_param(request)
    )
    return web.json_response(listing.to_json())


async def get_count(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    key = request.query.get("key")
    if key is None:
        return error(400, "missing query parameter key (an address, CIDR block or key)")
    try:
        n = await node.count(request.match_info["name"], key, request.query.get("view", "global"))
    except ValueError as exc:
        return error(400, str(exc))
    return web.json_response({"count": n})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE_KEY].stats().to_json())


async def get_membership(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.json_response([m.to_json() for m in await membership(node.client, node.keys)])


async def get_duravip(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE_KEY].duravip.status().to_json())


async def healthz(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    if node.member is None:
        return error(503, "not joined yet")
    return web.json_response(
        {"status": "ok", "node": node.name, "private_name": node.member.private_name}
    )


def make_app(
    node: Node, policy: PolicyService | None = None, guard: HttpGuard | None = None
) -> web.Application:
    """The API of ``node``; without a ``guard``, one with no token and the default limits
    (what a loopback-only agent and the tests run)."""
    guard = guard or HttpGuard()
    app = web.Application(
        client_max_size=guard.limits.max_body, middlewares=[guard.middleware, json_errors]
    )
    app[NODE_KEY] = node
    app[GUARD_KEY] = guard
    app.router.add_post("/v1/events", post_events)
    app.router.add_post("/v1/flush", post_flush)
    app.router.add_get("/v1/objects", get_objects)
    app.router.add_get("/v1/objects/{name}", get_object)
    app.router.add_get("/v1/objects/{name}/count", get_count)
    app.router.add_get("/v1/stats", get_stats)
    app.router.add_get("/v1/membership", get_membership)
    app.router.add_get("/v1/duravip", get_duravip)
    app.router.add_get("/healthz", healthz)
    http_throttles.add_routes(app)
    http_caches.add_routes(app)
    prometheus.add_routes(app, node, policy, guard.refusals)
    http_audit.add_routes(app)
    http_quotas.add_routes(app)
    http_shaping.add_routes(app)
    http_clients.add_routes(app)
    return app
