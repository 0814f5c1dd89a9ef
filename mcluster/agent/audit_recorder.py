"""A node's audit metrics: events and series adds counted in memory, shipped in batches.

``record`` and ``series_add`` are O(1) and never touch the network: counts coalesce per
(targets, key) and ship when ``max_pending`` keys wait or ``max_delay`` seconds passed
(from the ``metrics`` stanza). Each batch carries (origin, seq); the script applies a seq
once only, so a batch retried after a lost reply, a re-sync or a cancelled shipment is
never counted twice. Unlike the gauge views, audit counts are events that happened: they
are not per-node views and are not reaped when a node dies.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from mcluster.agent.outbox import RETRY_ERRORS, Stats, wait_event
from mcluster.agent.results import ReadsLikeADict
from mcluster.agent.service import ServiceContext
from mcluster.config import ClusterConfig
from mcluster.errors import AuditError
from mcluster.objects import audit
from mcluster.objects.audit import (
    BY_BINDING,
    BY_DOMAIN,
    EVENT_TYPES,
    INBOUND,
    SERIES_FIELD,
    Item,
    Target,
)
from mcluster.objects.audit_views import (
    AuditSettings,
    SeriesDef,
    define_series,
    get_series,
    ip_cluster,
    outbound_counts,
    publish_settings,
    series_count,
    series_def,
    show_ip,
)
from mcluster.objects.cidrtree import parse_address
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts

log = logging.getLogger("mcluster.agent")

#: Hash increments per script call (64 IPv4 events into 2 monitors): ~1 ms of Redis.
BATCH_COST = 512
KNOWN_LIMIT = 65536
#: Buffer key: (group, form, field prefix, key).
Pending = tuple[int, str, str, bytes]
#: A numbered batch: (seq, [(targets, item -> count)]).
Batch = tuple[int, list[tuple[list[Target], dict[Item, int]]]]


@dataclass(frozen=True, eq=False)
class AuditStats(ReadsLikeADict):
    """The audit recorder's figures (``Node.stats()["audit"]``, ``GET /v1/stats``): its
    counters (``AuditRecorder.stats``), the last batch seq and the keys waiting."""

    counters: Mapping[str, int]
    seq: int
    pending: int

    @staticmethod
    def of(recorder: AuditRecorder) -> AuditStats:
        return AuditStats(dict(vars(recorder.stats)), recorder.seq, len(recorder.buffer))

    def to_json(self) -> dict[str, Any]:
        return dict(self.counters) | {"seq": self.seq, "pending": self.pending}


@dataclass(frozen=True, eq=False)
class MonitorCounts(ReadsLikeADict):
    """One monitor's counts, per event label, per window (index 0: the current one)."""

    window: int  # seconds
    windows: int
    counts: Mapping[str, tuple[int, ...]]

    def to_json(self) -> dict[str, Any]:
        return {"window": self.window, "windows": self.windows} | {
            label: list(per_window) for label, per_window in self.counts.items()
        }


@dataclass(frozen=True, eq=False)
class AuditCounts(ReadsLikeADict):
    """``show_ip`` (by ``cidr``) or ``outbound`` (by ``domain`` or ``binding``): the counts
    of one address block, domain or binding, per monitor."""

    by: str
    key: str
    monitors: tuple[MonitorCounts, ...]

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> AuditCounts:
        """From the JSON the reads of ``objects/audit_views.py`` build (the console's)."""
        by = next(k for k in data if k != "monitors")
        monitors = tuple(
            MonitorCounts(m["window"], m["windows"], {
                k: tuple(v) for k, v in m.items() if k not in ("window", "windows")
            })
            for m in data["monitors"]
        )  # fmt: skip
        return AuditCounts(by, data[by], monitors)

    def to_json(self) -> dict[str, Any]:
        return {self.by: self.key, "monitors": [m.to_json() for m in self.monitors]}


class AuditRecorder:
    """Counts audit events and series adds of one node; ``ship`` sends them exactly once.

    A ``Service`` of the node (``agent/service.py``) when made ``from_context``: once the
    node has joined it publishes what is counted where and ships in a task of the node."""

    name = "audit"

    def __init__(
        self,
        settings: AuditSettings,
        keys: ClusterKeys,
        node: str,
        scripts: Callable[[], Scripts],
        max_buffered: int = 1_000_000,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.okeys = audit.audit_keys(keys)
        self.node = node
        self._scripts = scripts
        self.max_buffered = max_buffered
        self.origin = f"{node}:{uuid.uuid4().hex[:16]}"
        self.seq = 0
        self.buffer: dict[Pending, int] = {}
        self.unsent: list[Batch] = []
        self.groups: list[tuple[Target, ...]] = []
        self._group_ids: dict[tuple[Target, ...], int] = {}
        self._event_groups = {
            t: self._group([tg for a in places for tg in settings.targets(a)])
            for t, places in settings.aggregates.items()
        }
        self.series: dict[str, tuple[SeriesDef, int]] = {}
        self.known: dict[str, bytes] = {}
        self.stats = Stats()
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.stopping = False
        self.ctx: ServiceContext | None = None  # set when the node runs it as a service

    @staticmethod
    def from_config(
        config: ClusterConfig,
        keys: ClusterKeys,
        node: str,
        scripts: Callable[[], Scripts],
        max_buffered: int = 1_000_000,
    ) -> AuditRecorder | None:
        settings = AuditSettings.from_config(config)
        if not settings.enabled:
            return None
        return AuditRecorder(settings, keys, node, scripts, max_buffered)

    @staticmethod
    def from_context(ctx: ServiceContext, max_buffered: int = 1_000_000) -> AuditRecorder | None:
        """The node's recorder, a service of the node; None when the config counts nothing."""
        recorder = AuditRecorder.from_config(ctx.config(), ctx.keys, ctx.node, ctx.scripts,
                                             max_buffered)  # fmt: skip
        if recorder is not None:
            recorder.ctx = ctx
        return recorder

    # -- the service ---------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing before the join: events recorded meanwhile wait in the buffer."""

    async def after_join(self) -> None:
        await self.publish()
        if self.ctx is not None:
            self.ctx.spawn(self.run(), self.name)

    async def before_stop(self) -> None:
        """The run loop ends after its shipment; the node's last flush ships the rest."""
        self.stopping = True

    async def stop(self) -> None:
        """Nothing: the node's task is cancelled already."""

    def on_rejoin(self) -> None:
        """Nothing: audit counts are events, not views; batches keep their (origin, seq)."""

    def _group(self, targets: list[Target]) -> int:
        key = tuple(targets)
        gid = self._group_ids.get(key)
        if gid is None:
            gid = self._group_ids[key] = len(self.groups)
            self.groups.append(key)
        return gid

    # -- the hot path ------------------------------------------------------------------

    def _address(self, ip: str) -> bytes:
        packed = self.known.get(ip)
        if packed is None:
            try:  # strict dotted quad (no leading zeros), 15x quicker than ipaddress
                packed = socket.inet_pton(socket.AF_INET, ip)
            except (OSError, TypeError):
                packed = parse_address(ip)  # IPv6, or a clear error
            if len(self.known) >= KNOWN_LIMIT:
                self.known.clear()
            self.known[ip] = packed
        return packed

    def prepare(
        self,
        event_type: str,
        ip: str | None = None,
        domain: str | None = None,
        binding: str | None = None,
        count: int = 1,
    ) -> list[tuple[Pending, int]]:
        """Validate one event (ValueError says what is wrong); what ``admit`` will count."""
        letter = EVENT_TYPES.get(event_type)
        if letter is None:
            raise AuditError(f"type must be one of {', '.join(EVENT_TYPES)}, got {event_type!r}")
        gid = self._event_groups.get(event_type)
        if gid is None:
            raise AuditError(
                f"{event_type} events are not counted: add {event_type} to the parameters of "
                'Replicate "metrics" (or "eccmgr_metrics") in the cluster scope'
            )
        check_count(count)
        out: list[tuple[Pending, int]] = []
        if ip is not None:
            out.append(((gid, "t", letter, self._address(ip)), count))
        elif event_type in INBOUND:
            raise AuditError(f"a {event_type} event needs ip (the client's address)")
        for by, value in ((BY_DOMAIN, domain), (BY_BINDING, binding)):
            if value is not None and event_type not in INBOUND:
                key = audit.check_string_key(value).encode()
                out.append(((gid, "s", f"{letter}{by}:", key), count))
        if not out:
            raise AuditError(f"a {event_type} event needs a domain or a binding (or an ip)")
        return out

    def admit(self, prepared: list[tuple[Pending, int]]) -> None:
        buffer = self.buffer
        for key, n in prepared:
            if len(buffer) >= self.settings.max_pending:
                self.wake.set()
                if len(buffer) >= self.max_buffered and key not in buffer:
                    self.stats.dropped += 1
                    if self.stats.dropped & (self.stats.dropped - 1) == 0:
                        log.error("audit: %d events dropped: Redis away", self.stats.dropped)
                    continue
            buffer[key] = buffer.get(key, 0) + n
            self.stats.recorded += 1

    def record(
        self,
        event_type: str,
        ip: str | None = None,
        domain: str | None = None,
        binding: str | None = None,
        count: int = 1,
    ) -> None:
        """Count one event (``connect``, ``reception``, ...): O(1), in memory."""
        self.admit(self.prepare(event_type, ip, domain, binding, count))

    def check_allowed(self, sdef: SeriesDef) -> None:
        """A series may be replicated only as the config allows (AuditError says how)."""
        if sdef.replicate == "cluster" and not self.settings.series_cluster:
            raise AuditError(
                f"series {sdef.name!r} has replicate cluster: add audit_series to the "
                'parameters of Replicate "metrics" in the cluster scope'
            )
        if sdef.replicate == "manager" and not self.settings.series_manager:
            raise AuditError(
                f"series {sdef.name!r} has replicate manager: add "
                'Replicate "eccmgr_metrics" {} to the cluster scope'
            )

    def define_local(self, sdef: SeriesDef) -> None:
        self.check_allowed(sdef)
        gid = self._group([sdef.target(a) for a in sdef.aggregates(self.node)])
        self.series[sdef.name] = (sdef, gid)

    def series_prepare(self, name: str, key: str, count: int = 1) -> list[tuple[Pending, int]]:
        """Validate one series add (ValueError says what is wrong)."""
        defined = self.series.get(name)
        if defined is None:
            raise AuditError(f"no audit series named {name!r} on this node; define it first")
        sdef, gid = defined
        if not isinstance(key, str):
            raise AuditError(f"key must be a string, got {key!r}")
        form = "s" if sdef.type == "string" else "t"
        return [((gid, form, SERIES_FIELD, sdef.parse_key(key)), check_count(count))]

    def series_add(self, name: str, key: str, count: int = 1) -> None:
        """``audit_series_add``: count ``key`` (an address or string) in a defined series."""
        self.admit(self.series_prepare(name, key, count))

    # -- shipping ----------------------------------------------------------------------

    def _take(self, pending: Iterator[tuple[Pending, int]]) -> Batch | None:
        """The next batch of at most BATCH_COST increments from ``pending``, numbered."""
        groups: dict[int, dict[Item, int]] = {}
        cost = 0
        for (gid, form, prefix, key), n in pending:
            item = Item(form, prefix, key)
            groups.setdefault(gid, {})[item] = n
            cost += audit.item_cost(item) * len(self.groups[gid])
            if cost >= BATCH_COST:
                break
        return self._numbered(groups) if groups else None

    def _numbered(self, groups: dict[int, dict[Item, int]]) -> Batch:
        self.seq += 1
        return self.seq, [(list(self.groups[g]), items) for g, items in groups.items()]

    async def ship(self) -> None:
        """Send everything pending now; returns once Redis applied it (exactly once).

        Batches are cut one at a time, so the event loop is never held for long however
        much waits. A batch cut short (cancelled) stays in ``unsent`` and is re-sent with
        its seq; what was not cut yet goes back to the buffer.
        """
        async with self.lock:
            items, self.buffer = self.buffer, {}
            self.wake.clear()
            pending = iter(items.items())
            try:
                while True:
                    if not self.unsent:
                        batch = self._take(pending)
                        if batch is None:
                            return
                        self.unsent.append(batch)
                    seq, groups = self.unsent[0]
                    await self._send(seq, groups)
                    self.unsent.pop(0)
            finally:
                for key, n in pending:
                    self.buffer[key] = self.buffer.get(key, 0) + n

    async def _send(
        self, seq: int, groups: list[tuple[list[Target], dict[Item, int]]], backoff: float = 2.0
    ) -> None:
        delay = 0.02
        while True:
            try:
                scripts = self._scripts()
                applied, _ = await audit.apply(scripts, self.okeys, self.origin, seq, groups)
                break
            except RETRY_ERRORS as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a cancel seen as a lost reply
                    raise asyncio.CancelledError from exc
                self.stats.retries += 1
                log.warning("audit: batch %d not confirmed (%s); retrying", seq, exc)
                await asyncio.sleep(delay)
                delay = min(backoff, delay * 2)
            except ResponseError as exc:  # never retried forever: logged and counted
                log.error("audit: Redis refused batch %d: %s", seq, exc)
                self.stats.dropped += sum(len(items) for _, items in groups)
                return
        self.stats.batches += 1
        if applied:
            self.stats.applied += sum(len(items) for _, items in groups)
        else:
            self.stats.repeats += 1

    async def run(self) -> None:
        """Ship when ``max_pending`` keys wait or ``max_delay`` seconds have passed."""
        while not self.stopping:
            await wait_event(self.wake, self.settings.max_delay)
            await self.ship()

    # -- reads (Momentum's functions) ---------------------------------------------------

    async def define(
        self, name: str, type: str, interval: int, num_windows: int, replicate: object = "none"
    ) -> SeriesDef:
        """``msys.audit_series.define``: the same definition on every node (kept in Redis)."""
        sdef = series_def(
            name=name, type=type, interval=interval, num_windows=num_windows, replicate=replicate
        )
        self.check_allowed(sdef)
        await define_series(self._scripts().client, self.keys, sdef)
        self.define_local(sdef)
        return sdef

    async def count(self, name: str, key: str, start: int = 0, end: int | None = None) -> int:
        """``msys.audit_series.count``: windows start..end (0 = current) of a key or CIDR
        block, as this node sees it (its own adds, plus the cluster's when replicated)."""
        defined = self.series.get(name)
        sdef = defined[0] if defined else await get_series(self._scripts().client, self.keys, name)
        where = sdef.reader_aggregate("node", self.node)
        return await series_count(self._scripts(), self.keys, sdef, key, start, end, where)

    async def ip_cluster(
        self, event_type: str, ip: str, monitor: int = 0, mask: int | None = None
    ) -> float:
        """``ec_ip_connections_cluster`` (``connect``), ``..._receptions_...`` (``reception``),
        ``..._rejections_...`` (``rejection``): see ``audit.weighted`` for the formula."""
        return await ip_cluster(
            self._scripts(), self.keys, self.settings, event_type, ip, monitor, mask
        )

    async def show_ip(self, cidr: str) -> AuditCounts:
        """Connections, receptions and rejections under ``cidr``, per monitor and window."""
        shown = await show_ip(self._scripts(), self.keys, self.settings, cidr, "node")
        return AuditCounts.from_json(shown)

    async def outbound(self, by: str, key: str) -> AuditCounts:
        """Deliveries, transient and permanent failures of one domain or binding (``by``)."""
        counts = await outbound_counts(self._scripts(), self.keys, self.settings, by, key, "node")
        return AuditCounts.from_json(counts)

    async def publish(self) -> None:
        """Tell consoles started without ``--config`` what is counted where."""
        await publish_settings(self._scripts().client, self.keys, self.settings)


def check_count(count: object) -> int:
    if type(count) is not int or not 1 <= count <= 2**31:
        raise AuditError(f"count must be an integer from 1 to 2^31, got {count!r}")
    return count
