"""HTTP routes of the replicated caches.

PUT /v1/caches/{cache}/{key}   {"value": "...", "ttl": "5M"}  (ttl optional: "0" = never)
                               -> 200 {"cache", "key", "stamp", "evicted", "expired"}
GET /v1/caches/{cache}/{key}   -> 200 {"value": "...", "source": "replica"|"redis"|"loader"},
                                  404 when the cache holds no such key
GET /v1/caches                 -> {"caches": [names]}
GET /v1/caches/{cache}         -> this node's replica figures and the cache's in Redis
                                  (size, evictions, expiries, staleness p50/p99)

Keys are the rest of the path, percent-decoded (so they may hold ``/``). A bad key, value
or ttl gets 400 naming it; an unknown cache 404 naming the caches there are.
"""

from __future__ import annotations

from aiohttp import web

from mcluster.agent.http_common import NODE_KEY, error, read_json

_FIELDS = {"value", "ttl"}


async def put_pair(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    name, key = request.match_info["cache"], request.match_info["key"]
    node.caches.replica(name)  # 404 before looking at the body
    body = await read_json(request)
    if not isinstance(body, dict) or "value" not in body:
        return error(400, 'body must be a JSON object {"value": "...", "ttl": "5M"}')
    unknown = set(body) - _FIELDS
    if unknown:
        return error(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    try:
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
    return web.json_response(await node.caches.stats(request.match_info["cache"]))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/caches", get_caches)
    app.router.add_get("/v1/caches/{cache}", get_cache)
    app.router.add_put("/v1/caches/{cache}/{key:.+}", put_pair)
    app.router.add_get("/v1/caches/{cache}/{key:.+}", get_pair)
