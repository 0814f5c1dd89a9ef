"""What the agent's HTTP handlers share: the app key of the node, JSON bodies and errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from mcluster.agent.node import Node

NODE_KEY = web.AppKey("node", Node)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; 400 naming the problem when it is not JSON."""
    try:
        return await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON: {exc}") from None
