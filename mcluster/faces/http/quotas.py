"""HTTP routes of the policy service's quotas (the console's ``policy show`` and
``policy reset``, on any agent; ``?from=NODE`` for one node's share):

GET    /v1/policy                 -> {"node", "quotas": [{name, key, limit, ..., "top": [...]}]}
GET    /v1/policy/QUOTA           -> the same, that quota only
GET    /v1/policy/QUOTA/KEY       -> {"quota", "key", "used", "limit", "retry_after_ms", ...}
DELETE /v1/policy/QUOTA/KEY       -> {"quota", "key", "cleared"}   (clears that key)

KEY is the value as an operator types it (``alice``, ``10.1.2.3`` for a /24 key, ``<>``
for an empty one), URL-encoded.
"""

from __future__ import annotations

from aiohttp import web

from mcluster.errors import InvalidValue
from mcluster.faces.http.common import NODE_KEY, error
from mcluster.objects.policy import FAMILY
from mcluster.quotas import usage


async def get_policy(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    quota = request.match_info.get("quota")
    await usage.check_node(node.client, node.keys, request.query.get("from"))
    quotas = await usage.overview(
        node.client, node.keys.object(FAMILY), quota, request.query.get("from")
    )
    return web.json_response(
        {"node": request.query.get("from"), "quotas": [q.to_json() for q in quotas]}
    )


async def get_key(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    await usage.check_node(node.client, node.keys, request.query.get("from"))
    try:
        info, use = await usage.one_key(
            node.client,
            node.keys.object(FAMILY),
            request.match_info["quota"],
            request.match_info["key"],
            request.query.get("from"),
        )
    except InvalidValue as exc:
        return error(400, str(exc))
    return web.json_response({**use.to_json(), "action": info.action})


async def delete_key(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    okeys = node.keys.object(FAMILY)
    info = usage.find(await usage.load(node.client, okeys), request.match_info["quota"])
    try:
        value = usage.key_value(info, request.match_info["key"])
    except InvalidValue as exc:
        return error(400, str(exc))
    cleared = await usage.reset(node.client, okeys, info, value)
    return web.json_response({"quota": info.name, "key": value, "cleared": cleared})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/policy", get_policy)
    app.router.add_get("/v1/policy/{quota}", get_policy)
    app.router.add_get("/v1/policy/{quota}/{key:.+}", get_key)
    app.router.add_delete("/v1/policy/{quota}/{key:.+}", delete_key)
