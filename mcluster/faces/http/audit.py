"""HTTP endpoints of the audit metrics and named series (see ``docs/audit-metrics.md``).

    POST /v1/metrics/events   {"events": [{"type", "ip", "domain", "binding", "count"}]} -> 202
    GET  /v1/metrics/inbound?cidr=10.0.0.0/8     (as ``inbound_audit show ip``)
    GET  /v1/metrics/ip?type=connect&ip=A[&monitor=0&mask=24]  -> {"value": weighted average}
    GET  /v1/metrics/outbound?domain=D | ?binding=B
    POST /v1/series           {"name", "type", "interval", "num_windows", "replicate"}
    GET  /v1/series           -> {"series": [definitions]}
    POST /v1/series/{name}/add   {"adds": [{"key": "10.1.2.3", "count": 1}, ...]} -> 202
    GET  /v1/series/{name}/count?key=K[&start=0&end=0]  -> {"count": N}

Bad input gets 400 naming the first bad entry by index; nothing of that request is
counted (the rules of ``/v1/events``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mcluster.agent.audit_recorder import AuditRecorder, Pending
from mcluster.faces.http.common import NODE_KEY, error, read_json
from mcluster.objects.audit_views import list_series
from mcluster.security.http_guard import check_batch

_EVENT_FIELDS = {"type", "ip", "domain", "binding", "count"}
Handler = Callable[[web.Request], Awaitable[web.Response]]
Prepared = list[tuple[Pending, int]]


def _entries(request: web.Request, body: Any, field: str) -> list[Any]:
    if not isinstance(body, dict) or not isinstance(body.get(field), list):
        raise ValueError(f'body must be a JSON object {{"{field}": [...]}}')
    entries: list[Any] = body[field]
    check_batch(request, len(entries), field)  # 413 past the agent's --api-max-events
    return entries


def _text(entry: dict[str, Any], name: str) -> str | None:
    value = entry.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string or null")
    return value


def _int(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ValueError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


def _recorder(request: web.Request) -> AuditRecorder:
    return request.app[NODE_KEY].audit


def bad_input(handler: Handler) -> Handler:
    """ValueError (and AuditError) from a handler -> 400 with its message."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except ValueError as exc:
            return error(400, str(exc))

    return wrapped


def _admit_all(
    recorder: AuditRecorder, entries: list[Any], field: str, prepare: Callable[[Any], Prepared]
) -> web.Response:
    """Validate every entry before counting any; 400 names the first bad one by index."""
    prepared = []
    for i, entry in enumerate(entries):
        try:
            prepared.append(prepare(entry))
        except ValueError as exc:
            raise ValueError(f"{field}[{i}]: {exc}") from None
    for entry in prepared:
        recorder.admit(entry)
    return web.json_response({"accepted": len(prepared)}, status=202)


@bad_input
async def post_events(request: web.Request) -> web.Response:
    recorder = _recorder(request)

    def prepare(event: Any) -> Prepared:
        if not isinstance(event, dict):
            raise ValueError("must be an object with type, ip, domain, binding and count")
        unknown = set(event) - _EVENT_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        kind = event.get("type")
        if not isinstance(kind, str):
            raise ValueError("type must be a string")
        ip, domain, binding = (_text(event, f) for f in ("ip", "domain", "binding"))
        return recorder.prepare(kind, ip, domain, binding, event.get("count", 1))

    entries = _entries(request, await read_json(request), "events")
    return _admit_all(recorder, entries, "events", prepare)


@bad_input
async def get_inbound(request: web.Request) -> web.Response:
    cidr = request.query.get("cidr") or request.query.get("ip")
    if cidr is None:
        raise ValueError("missing query parameter cidr (an address or CIDR block)")
    return web.json_response((await _recorder(request).show_ip(cidr)).to_json())


@bad_input
async def get_ip(request: web.Request) -> web.Response:
    kind, ip = request.query.get("type", "connect"), request.query.get("ip")
    if ip is None:
        raise ValueError("missing query parameter ip")
    monitor = _int(request, "monitor", 0) or 0
    value = await _recorder(request).ip_cluster(kind, ip, monitor, _int(request, "mask", None))
    return web.json_response({"type": kind, "ip": ip, "monitor": monitor, "value": value})


@bad_input
async def get_outbound(request: web.Request) -> web.Response:
    for by in ("domain", "binding"):
        if by in request.query:
            counts = await _recorder(request).outbound(by, request.query[by])
            return web.json_response(counts.to_json())
    raise ValueError("missing query parameter domain or binding")


@bad_input
async def post_series(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object with name, type, interval, num_windows")
    fields: dict[str, Any] = {k: body.get(k) for k in ("name", "type", "interval", "num_windows")}
    sdef = await _recorder(request).define(**fields, replicate=body.get("replicate", "none"))
    return web.json_response(sdef.model_dump())


async def get_series(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    found = await list_series(node.client, node.keys)
    return web.json_response({"series": [s.model_dump() for s in found]})


@bad_input
async def post_series_add(request: web.Request) -> web.Response:
    recorder = _recorder(request)
    name = request.match_info["name"]

    def prepare(add: Any) -> Prepared:
        if not isinstance(add, dict) or set(add) - {"key", "count"}:
            raise ValueError("must be an object with key and count")
        key: Any = add.get("key")
        return recorder.series_prepare(name, key, add.get("count", 1))

    entries = _entries(request, await read_json(request), "adds")
    return _admit_all(recorder, entries, "adds", prepare)


@bad_input
async def get_series_count(request: web.Request) -> web.Response:
    key = request.query.get("key")
    if key is None:
        raise ValueError("missing query parameter key (an address, CIDR block or string)")
    start = _int(request, "start", 0) or 0
    end = _int(request, "end", start)
    n = await _recorder(request).count(request.match_info["name"], key, start, end)
    return web.json_response({"count": n})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/metrics/events", post_events)
    app.router.add_get("/v1/metrics/inbound", get_inbound)
    app.router.add_get("/v1/metrics/ip", get_ip)
    app.router.add_get("/v1/metrics/outbound", get_outbound)
    app.router.add_post("/v1/series", post_series)
    app.router.add_get("/v1/series", get_series)
    app.router.add_post("/v1/series/{name}/add", post_series_add)
    app.router.add_get("/v1/series/{name}/count", get_series_count)
