"""Refusals that clients of the agent decide on their own, reported so ``/metrics`` counts them.

A client such as haraka-plugin-mcluster refuses some things itself: its inbound per-block
connection cap (the agent only counts; the plugin compares and answers 421), and every
answer it gives when the agent cannot decide (unreachable, late, 5xx, a 4xx, a degraded
decision): fail open lets the connection or message through undecided, fail closed
refuses or defers it. The agent never sees those answers, and Haraka has no Prometheus
endpoint, so the client reports its running totals to its agent:

    POST /v1/clients/report {"reporter": "haraka-HOST-PID", "client": "haraka",
                             "refusals": {"connection_cap": 3, ...},
                             "unavailable": {"connect": {"open": 1, "closed": 0}, ...}}
    -> 200 {"reported": true}

and the agent exports them as ``mcluster_client_refusals_total{client, reason}`` and
``mcluster_client_unavailable_total{client, stage, fail}``. Totals, not increments: a
report sent twice (a retry after a timeout whose first try arrived) or overtaken by a
later one changes nothing, as the agent keeps the highest total per reporter and name.
A client that was away from the agent reports what it did meanwhile once it is back.

Names are short lower-case identifiers, a report has a bounded number of them, and the
agent keeps the totals of at most ``MAX_REPORTERS`` reporters (client processes) apart
(``ClientReports`` in ``mcluster/security/refusals.py``): beyond that the least recently
heard is folded into a remainder, so the exported counters never go down.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from mcluster.errors import InvalidValue
from mcluster.faces.http.common import error, read_json
from mcluster.outbound.leases import check_owner
from mcluster.security.http_guard import GUARD_KEY
from mcluster.security.refusals import Key

MAX_NAMES = 32  # refusal reasons, or unavailable stages, in one report
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
FAILS = ("open", "closed")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise InvalidValue(
            f"{where}: must be a lower-case name of 1 to 32 letters, digits and _, got {value!r}"
        )
    return value


def _total(value: Any, where: str) -> int:
    if type(value) is not int or not 0 <= value < 2**53:
        raise InvalidValue(f"{where}: must be a whole number >= 0, got {value!r}")
    return value


def _mapping(body: dict[str, Any], field: str) -> dict[str, Any]:
    found = body.get(field, {})
    if not isinstance(found, dict):
        raise InvalidValue(f"{field}: must be an object")
    if len(found) > MAX_NAMES:
        raise InvalidValue(f"{field}: at most {MAX_NAMES} names, got {len(found)}")
    return found


def parse_report(body: Any) -> tuple[str, dict[Key, int]]:
    """The reporter and its totals, every field checked before any is kept."""
    if not isinstance(body, dict):
        raise InvalidValue('body must be a JSON object {"reporter", "client", "refusals", ...}')
    unknown = set(body) - {"reporter", "client", "refusals", "unavailable"}
    if unknown:
        raise InvalidValue(f"unknown field(s): {', '.join(sorted(unknown))}")
    reporter = check_owner(body.get("reporter"))
    client = _name(body.get("client"), "client")
    totals: dict[Key, int] = {}
    for reason, value in _mapping(body, "refusals").items():
        where = f"refusals.{reason}"
        totals["refusals", client, _name(reason, where), ""] = _total(value, where)
    for stage, by_fail in _mapping(body, "unavailable").items():
        where = f"unavailable.{stage}"
        _name(stage, where)
        if not isinstance(by_fail, dict) or not set(by_fail) <= set(FAILS):
            raise InvalidValue(f'{where}: must be an object {{"open": N, "closed": N}}')
        for fail, value in by_fail.items():
            totals["unavailable", client, stage, fail] = _total(value, f"{where}.{fail}")
    return reporter, totals


async def post_report(request: web.Request) -> web.Response:
    try:
        reporter, totals = parse_report(await read_json(request))
    except InvalidValue as exc:
        return error(400, str(exc))
    request.app[GUARD_KEY].refusals.clients.report(reporter, totals)
    return web.json_response({"reported": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/clients/report", post_report)
