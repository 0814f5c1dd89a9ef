"""HTTP routes of the cluster-wide throttles.

POST /v1/throttles          {"name": "t1", "rate": "1000/10", ...} -> 201 created,
                            200 exists with the same rate, 409 with another rate
GET  /v1/throttles          -> {"throttles": [{"name", "rate", "used", ...}]}
POST /v1/throttles/acquire  {"limits": [{"name": "t1", "cost": 1}, ...]}
                            -> {"allowed", "retry_after_ms", "degraded", "limits": [...]}
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from mcluster.agent.http_common import NODE_KEY, error, read_json
from mcluster.objects import throttle
from mcluster.objects.throttle import ThrottleConflict, ThrottleDef, ThrottleError

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
