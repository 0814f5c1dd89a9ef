"""HTTP routes of shaping.

POST /v1/outbound/outcome  {"binding", "domain", "code"[, "host", "text"]}
                           -> {"event", "counted", "provider", "rules": [...]}
GET  /v1/shaping           -> {"now_ms", "actions", "adaptive", "warmups"}  (shaping show)
GET  /v1/shaping/history   ?rule=NAME&limit=N -> {"history": [...]}
POST /v1/shaping/clear     {"rule", "destination"} -> {"cleared": bool}
"""

from __future__ import annotations

from aiohttp import web

from mcluster.faces.http.common import NODE_KEY, error, read_json
from mcluster.shaping.model import Outcome, ShapingError
from mcluster.shaping.service import Shaper

_OFF = (
    "shaping is not configured on this node: add Shaping, Adaptive or Warmup scopes "
    "(docs/shaping.md)"
)


def _shaper(request: web.Request) -> Shaper:
    shaper = request.app[NODE_KEY].shaping
    if shaper is None:
        raise web.HTTPNotFound(reason=_OFF)
    return shaper


async def post_outcome(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    try:
        outcome = Outcome.from_json(await read_json(request))
        result = await node.outbound_outcome(outcome)
    except ShapingError as exc:
        return error(400, str(exc))
    return web.json_response(result.to_json())


async def get_shaping(request: web.Request) -> web.Response:
    shaper = request.app[NODE_KEY].shaping
    if shaper is None:
        return web.json_response(
            {"now_ms": None, "actions": [], "adaptive": [], "warmups": [], "enabled": False}
        )
    return web.json_response((await shaper.show()).to_json() | {"enabled": True})


async def get_history(request: web.Request) -> web.Response:
    shaper = _shaper(request)
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        return error(400, f"limit must be a whole number 1..10000, got {raw!r}")
    entries = await shaper.history(request.query.get("rule"), int(raw))
    return web.json_response({"history": [e.to_json() for e in entries]})


async def post_clear(request: web.Request) -> web.Response:
    shaper = _shaper(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) for k in ("rule", "destination")
    ):
        return error(400, 'body must be a JSON object {"rule": ..., "destination": "domain:x"}')
    try:
        cleared = await shaper.clear(body["rule"], body["destination"])
    except ShapingError as exc:
        return error(400, str(exc))
    return web.json_response({"cleared": cleared})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/outbound/outcome", post_outcome)
    app.router.add_get("/v1/shaping", get_shaping)
    app.router.add_get("/v1/shaping/history", get_history)
    app.router.add_post("/v1/shaping/clear", post_clear)
