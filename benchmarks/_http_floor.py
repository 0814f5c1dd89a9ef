"""The floor of benchmarks/outbound.py's HTTP cases: aiohttp answering at once.

    python benchmarks/_http_floor.py PORT

``POST /v1/connections/open`` and ``/close`` read the JSON body and answer the agent's
shapes (``{"allowed", "slot", "reason", "spill_over"}``, ``{"closed": true}``) with no
decision, no Redis and no middleware, on the agent's event loop (uvloop when installed):
what is left of a pair's time is aiohttp's, the client's, the kernel's and the loop's.
"""

from __future__ import annotations

import itertools
import sys

from aiohttp import web

from mcluster.faces.loop import loop_factory

_ids = itertools.count(1)


async def post_open(request: web.Request) -> web.Response:
    await request.json()
    slot = f"floor{next(_ids):x}"
    return web.json_response({"allowed": True, "slot": slot, "reason": None, "spill_over": []})


async def post_close(request: web.Request) -> web.Response:
    await request.json()
    return web.json_response({"closed": True})


def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/connections/open", post_open)
    app.router.add_post("/v1/connections/close", post_close)
    factory = loop_factory("auto")
    loop = factory() if factory is not None else None
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main(int(sys.argv[1]))
