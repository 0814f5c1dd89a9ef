"""HTTP routes of the cluster-wide throttles.

POST /v1/throttles          {"name": "t1", "rate": "1000/10", ...} -> 201 created,
                            200 exists with the same rate, 409 with another rate
GET  /v1/throttles          -> {"throttles": [{"name", "rate", "used", ...}]}
POST /v1/throttles/acquire  {"limits": [{"name": "t1", "cost": 1}, ...]}
                            -> {"allowed", "retry_after_ms", "degraded", "limits": [...]}
POST /v1/outbound/message   {"binding", "domain"[, "binding_group"]} -> OBTM, as acquire
POST /v1/connections/open   {"binding", "domain"[, "binding_group", "host", "ip",
                             "mx_hosts": [...]]}
                            -> {"allowed", "slot", "reason", "spill_over": [...]}
                            (OBTC and the caps; once allowed, counted in the outbound views)
POST /v1/connections/close  {"slot": "..."} -> {"closed": bool}
POST /v1/connections/renew  {"owner": "..."} -> {"renewed": N}
                            (an open with "owner" is freed when its owner stops renewing
                            for lease TTL: mcluster/outbound/leases.py)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from mcluster.agent.slots import SlotDecision
from mcluster.errors import InvalidValue, ThrottleError
from mcluster.faces.http.common import NODE_KEY, error, read_json
from mcluster.objects import throttle
from mcluster.objects.outbound import Route
from mcluster.objects.throttle import Decision, ThrottleConflict, ThrottleDef
from mcluster.outbound.leases import check_owner

MAX_LIMITS = 32


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


async def post_throttle(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    body = await read_json(request)
    if not isinstance(body, dict):
        return error(400, 'body must be a JSON object {"name": ..., "rate": "N/S"}')
    try:
        tdef = ThrottleDef.model_validate(body)
    except ValidationError as exc:
        return error(400, _validation_message(exc))
    try:
        created = await node.throttles.create(tdef)
    except ThrottleConflict as exc:
        return error(409, str(exc))
    return web.json_response(
        {"name": tdef.name, "rate": tdef.rate, "created": created}, status=201 if created else 200
    )


def parse_limits(body: Any) -> list[tuple[str, int]]:
    if not isinstance(body, dict) or not isinstance(body.get("limits"), list):
        raise ThrottleError('body must be a JSON object {"limits": [{"name": ..., "cost": 1}]}')
    limits = body["limits"]
    if not 0 < len(limits) <= MAX_LIMITS:
        raise ThrottleError(f"limits must name 1 to {MAX_LIMITS} throttles")
    parsed = []
    for i, item in enumerate(limits):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ThrottleError(f"limits[{i}]: must be an object with a name and a cost")
        cost = item.get("cost", 1)
        if type(cost) is not int or not 0 < cost <= throttle.MAX_COST:
            raise ThrottleError(
                f"limits[{i}]: cost must be an integer 1..{throttle.MAX_COST}, got {cost!r}"
            )
        parsed.append((item["name"], cost))
    return parsed


async def post_acquire(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    body = await read_json(request)
    try:
        decision = await node.throttles.acquire(parse_limits(body))
    except ThrottleError as exc:
        return error(400, str(exc))
    return web.json_response(decision.to_json())


async def get_throttles(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    rows = await throttle.usage(node.client, node.throttles.okeys)
    return web.json_response(
        {"throttles": [{"name": n, "rate": r, "used": u} for n, u, r in rows]}
        | {"stats": vars(node.throttles.stats)}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/throttles", post_throttle)
    app.router.add_get("/v1/throttles", get_throttles)
    app.router.add_post("/v1/throttles/acquire", post_acquire)
    add_outbound_routes(app)


def parse_route(body: Any) -> Route:
    if not isinstance(body, dict):
        raise ThrottleError('body must be a JSON object {"binding": ..., "domain": ...}')
    unknown = set(body) - {"binding", "domain", "binding_group", "host", "ip", "mx_hosts"}
    if unknown:
        raise ThrottleError(f"unknown field(s): {', '.join(sorted(unknown))}")
    for field in ("binding", "domain"):
        if not isinstance(body.get(field), str) or not body[field]:
            raise ThrottleError(f"{field} must be a non-empty string")
    for field in ("binding_group", "host", "ip"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise ThrottleError(f"{field} must be a string")
    mx_hosts = body.get("mx_hosts") or []
    if not isinstance(mx_hosts, list) or not all(isinstance(h, str) and h for h in mx_hosts):
        raise ThrottleError("mx_hosts must be a list of non-empty strings")
    for field, value in [*body.items(), *(("mx_hosts", h) for h in mx_hosts)]:
        if isinstance(value, str) and (len(value) > 255 or not value.isprintable()):
            raise ThrottleError(f"{field} must be at most 255 printable characters")
    try:
        return Route(body["binding"], body["domain"], body.get("binding_group"),
                     body.get("host"), body.get("ip"), tuple(mx_hosts))  # fmt: skip
    except ValueError as exc:  # a bad ip, too many mx_hosts
        raise ThrottleError(str(exc)) from None


async def post_message(request: web.Request) -> web.Response:
    """OBTM for one message."""
    node = request.app[NODE_KEY]
    return await _route_decision(request, lambda route: node.outbound_message(route))


async def post_open(request: web.Request) -> web.Response:
    """OBTC and the caps for one new connection; with an ``owner``, the answer also gives
    the ``lease_ttl`` within which that owner must renew."""
    node = request.app[NODE_KEY]
    body = await read_json(request)
    owner = body.pop("owner", None) if isinstance(body, dict) else None
    try:
        route = parse_route(body)
        if owner is not None:
            check_owner(owner)
    except (ThrottleError, InvalidValue) as exc:
        return error(400, str(exc))
    decision = await node.open_connection(route, owner)
    answer = decision.to_json()
    if owner is not None:
        answer["lease_ttl"] = node.lease_ttl
    return web.json_response(answer)


async def _route_decision(
    request: web.Request, decide: Callable[[Route], Awaitable[Decision | SlotDecision]]
) -> web.Response:
    try:
        decision = await decide(parse_route(await read_json(request)))
    except ThrottleError as exc:
        return error(400, str(exc))
    return web.json_response(decision.to_json())


async def post_close(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("slot"), str):
        return error(400, 'body must be a JSON object {"slot": "..."}')
    return web.json_response({"closed": await node.close_connection(body["slot"])})


async def post_renew(request: web.Request) -> web.Response:
    """Renew an owner's lease on its slots: {"renewed": the slots it holds}."""
    node = request.app[NODE_KEY]
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"owner"}:
        return error(400, 'body must be a JSON object {"owner": "..."}')
    try:
        renewed = node.renew_owner(body["owner"])
    except InvalidValue as exc:
        return error(400, str(exc))
    return web.json_response({"renewed": renewed, "lease_ttl": node.lease_ttl})


def add_outbound_routes(app: web.Application) -> None:
    app.router.add_post("/v1/outbound/message", post_message)
    app.router.add_post("/v1/connections/open", post_open)
    app.router.add_post("/v1/connections/close", post_close)
    app.router.add_post("/v1/connections/renew", post_renew)
