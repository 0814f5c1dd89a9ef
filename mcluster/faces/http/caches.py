"""HTTP routes of the replicated caches.

PUT /v1/caches/{cache}/{key}   {"value": "...", "ttl": "5M"}  (ttl optional: "0" = never)
                               -> 200 {"cache", "key", "stamp", "evicted", "expired"}
GET /v1/caches/{cache}/{key}   -> 200 {"value": "...", "source": "replica"|"redis"|"loader"},
                                  404 when the cache holds no such key
GET /v1/caches                 -> {"caches": [names]}
GET /v1/caches/{cache}         -> this node's replica figures and the cache's in Redis
                                  (size, evictions, expiries, staleness p50/p99)

PUT  /v1/gauge-caches/{name}  {"maxelems": 1000, "ttl": "1H", "replicate": true}
                               -> 201 {"name", "maxelems", "ttl", "replicate", "created": true},
                                  200 when it was defined already (the limits are updated)
GET  /v1/gauge-caches          -> {"gauge_caches": [definitions]}
POST /v1/gauge-caches/{name}/inc  {"key": "...", "by": 1}  (by optional) -> 202
POST /v1/gauge-caches/{name}/dec  {"key": "...", "by": 1}                -> 202
GET  /v1/gauge-caches/{name}/{key}?view=global|NODE -> {"value": n}  (0 when missing)
GET  /v1/gauge-caches/{name}?view=global|NODE&limit=N|all -> the rows, as /v1/objects/{name}

Keys are the rest of the path, percent-decoded (so they may hold ``/``). A bad key, value,
ttl or definition gets 400 naming it; an unknown cache 404 naming the caches there are.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mcluster.agent.gauge_caches import GaugeCacheError
from mcluster.faces.http.common import NODE_KEY, error, read_json
from mcluster.objects.views import DEFAULT_LIMIT

_FIELDS = {"value", "ttl"}
_DEF_FIELDS = {"maxelems", "ttl", "replicate"}
_CHANGE_FIELDS = {"key", "by"}
MAX_BY = 2**31


def _object(body: Any, fields: set[str], usage: str) -> dict[str, Any]:
    """A JSON object with only ``fields``; ValueError naming the problem."""
    if not isinstance(body, dict):
        raise ValueError(f"body must be a JSON object {usage}")
    unknown = set(body) - fields
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    return body


async def put_pair(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name, key = request.match_info["cache"], request.match_info["key"]
    node.caches.replica(name)  # 404 before looking at the body
    body = await read_json(request)
    try:
        _object(body, _FIELDS, '{"value": "...", "ttl": "5M"}')
        if "value" not in body:
            raise ValueError('body must be a JSON object {"value": "...", "ttl": "5M"}')
        written = await node.caches.set(name, key, body["value"], body.get("ttl", 0))
    except ValueError as exc:
        return error(400, str(exc))
    return web.json_response(
        {
            "cache": name,
            "key": key,
            "stamp": written.stamp,
            "evicted": written.evicted,
            "expired": written.expired,
        }
    )


async def get_pair(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name, key = request.match_info["cache"], request.match_info["key"]
    try:
        hit = await node.caches.get(name, key)
    except ValueError as exc:
        return error(400, str(exc))
    if hit is None:
        return error(404, f"cache {name!r} holds no key {key!r}")
    return web.json_response({"value": hit.value, "source": hit.source})


async def get_caches(request: web.Request) -> web.Response:
    return web.json_response({"caches": request.app[NODE_KEY].caches.names})


async def get_cache(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    stats = await node.caches.stats(request.match_info["cache"])
    return web.json_response(stats.to_json())


async def put_gauge_cache(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name = request.match_info["name"]
    body = await read_json(request)
    try:
        _object(body, _DEF_FIELDS, '{"maxelems": N, "ttl": "1H", "replicate": false}')
        if "maxelems" not in body:
            raise ValueError("maxelems is required")
        created = await node.gauge_caches.define(
            name, body["maxelems"], body.get("ttl", 0), body.get("replicate", False)
        )
    except (ValueError, GaugeCacheError) as exc:
        return error(400, str(exc))
    except RuntimeError as exc:  # a replicated one before the node has joined
        return error(503, str(exc))
    definition = node.gauge_caches.defs[name].to_json()
    return web.json_response(definition | {"created": created}, status=201 if created else 200)


async def get_gauge_caches(request: web.Request) -> web.Response:
    defined = request.app[NODE_KEY].gauge_caches.definitions()
    return web.json_response({"gauge_caches": [d.to_json() for d in defined]})


async def post_change(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name, verb = request.match_info["name"], request.match_info["verb"]
    node.gauge_caches.stats(name)  # 404 before looking at the body
    body = await read_json(request)
    try:
        _object(body, _CHANGE_FIELDS, '{"key": "...", "by": 1}')
        key, by = body.get("key"), body.get("by", 1)
        if not isinstance(key, str):
            raise ValueError("key must be a string")
        if type(by) is not int or not 0 <= by <= MAX_BY:
            raise ValueError(f"by must be an integer 0..{MAX_BY}, got {by!r}")
        change = node.gauge_caches.inc if verb == "inc" else node.gauge_caches.dec
        change(name, key, by)
    except ValueError as exc:
        return error(400, str(exc))
    return web.json_response({"accepted": 1}, status=202)


async def get_gauge(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name, key = request.match_info["name"], request.match_info["key"]
    try:
        value = await node.gauge_caches.get(name, key, request.query.get("view", "global"))
    except ValueError as exc:
        return error(400, str(exc))
    return web.json_response({"value": value})


async def get_gauge_cache(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    if raw != "all" and not raw.isdigit():
        return error(400, f"limit must be a number or 'all', got {raw!r}")
    limit = None if raw == "all" else int(raw)
    listing = await node.gauge_caches.show(
        request.match_info["name"], request.query.get("view", "global"), limit
    )
    return web.json_response(listing.to_json())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/caches", get_caches)
    app.router.add_get("/v1/caches/{cache}", get_cache)
    app.router.add_put("/v1/caches/{cache}/{key:.+}", put_pair)
    app.router.add_get("/v1/caches/{cache}/{key:.+}", get_pair)
    app.router.add_get("/v1/gauge-caches", get_gauge_caches)
    app.router.add_put("/v1/gauge-caches/{name}", put_gauge_cache)
    app.router.add_get("/v1/gauge-caches/{name}", get_gauge_cache)
    app.router.add_post("/v1/gauge-caches/{name}/{verb:inc|dec}", post_change)
    app.router.add_get("/v1/gauge-caches/{name}/{key:.+}", get_gauge)
