"""``GET /metrics``: the agent's figures in Prometheus's text format.

One ``CollectorRegistry`` per node, holding one collector that reads the node's own
figures at scrape time (outbox stats, throttle stats, the policy service's stats), so
nothing on the hot path knows about Prometheus, and several nodes in one process never
share a metric. Cluster-wide figures (members, reaping) are read from Redis by the
scrape, within ``REDIS_DEADLINE``; when Redis does not answer they are left out and
``mcluster_redis_up`` is 0. The names are listed in ``docs/metrics.md``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from mcluster.agent.caches import CacheReplicaStats
from mcluster.agent.histogram import Histogram
from mcluster.agent.node import Node
from mcluster.agent.outbox import RETRY_ERRORS
from mcluster.agent.throttles import Throttles
from mcluster.faces.policy import PolicyService
from mcluster.objects.policy import FAMILY as POLICY_FAMILY
from mcluster.objects.quota_config import ACTIONS as QUOTA_ACTIONS
from mcluster.quotas.metrics import quota_metrics
from mcluster.security.refusals import Refusals
from mcluster.shaping import metrics as shaping_metrics
from mcluster.shaping.model import AdaptiveState
from mcluster.store import members
from mcluster.store.cluster_view import reaping_progress

REDIS_DEADLINE = 0.5
LOOKUPS = {"hit": "hits", "negative_hit": "negative_hits", "miss": "misses"}


@dataclass
class ClusterFigures:
    """What the last scrape read from Redis (None: Redis did not answer)."""

    members: int | None = None
    reaping_jobs: list[dict[str, object]] = field(default_factory=list)
    adaptive: tuple[AdaptiveState, ...] | None = None  # shaping's AIMD rates


def _histogram(name: str, doc: str, per_object: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=["object"])
    for obj, hist in per_object.items():
        family.add_metric([obj], hist.cumulative(), sum_value=hist.total)
    return family


class NodeCollector(Collector):
    """Every figure of one node (and its policy service, when it runs one)."""

    def __init__(
        self, node: Node, policy: PolicyService | None = None, refusals: Refusals | None = None
    ) -> None:
        self.node = node
        self.policy = policy
        self.refusals = refusals or Refusals()
        self.cluster = ClusterFigures()

    async def refresh(self) -> None:
        """Read the cluster-wide figures from Redis (bounded by ``REDIS_DEADLINE``)."""
        node = self.node
        try:
            async with asyncio.timeout(REDIS_DEADLINE):
                live = await members.all_members(node.client, node.keys, live_only=True)
                jobs = await reaping_progress(node.client, node.keys)
            self.cluster = ClusterFigures(len(live), jobs)
        except (TimeoutError, *RETRY_ERRORS):
            self.cluster = ClusterFigures()
        if node.shaping is not None:
            self.cluster.adaptive = await shaping_metrics.adaptive_rates(
                node.shaping, REDIS_DEADLINE
            )

    def collect(self) -> Iterator[Metric]:
        yield from self._outboxes()
        yield from self._membership()
        yield from self._throttles()
        yield from self._connections()
        yield CounterMetricFamily(
            "mcluster_counts_owner_expired",
            "Counts (POST /v1/events with an owner, e.g. a Haraka process's open inbound "
            "connections) taken back because their owner did not renew within lease TTL",
            value=self.node.owner_leases.expired_counts,
        )
        yield from self._caches()
        if self.node.shaping is not None:
            yield from shaping_metrics.collect(self.node.shaping, self.cluster.adaptive)
        if self.policy is not None:
            yield from self._policy(self.policy)
        yield self.refusals.metric()
        yield from self.refusals.clients.metrics()

    def _outboxes(self) -> Iterator[Metric]:
        boxes = self.node.outboxes
        counters = [
            ("events_recorded", "recorded", "Events recorded by this node"),
            ("events_applied", "applied", "Keys applied in Redis by this node's batches"),
            ("events_dropped", "dropped", "Events dropped: the buffer was full (Redis away)"),
            ("batches", "batches", "Batches applied in Redis"),
            ("batch_repeats", "repeats", "Batches Redis had applied already (a retry)"),
            ("batch_retries", "retries", "Batch sends retried after a Redis error"),
            ("anomalies", "anomalies", "Units clamped at zero (decrements below zero)"),
        ]
        for name, attr, doc in counters:
            family = CounterMetricFamily(f"mcluster_{name}", doc, labels=["object"])
            for obj, box in boxes.items():
                family.add_metric([obj], getattr(box.stats, attr))
            yield family
        pending = GaugeMetricFamily(
            "mcluster_pending_keys", "Distinct keys waiting to be shipped", labels=["object"]
        )
        lag = GaugeMetricFamily(
            "mcluster_replication_lag_seconds",
            "Age of the oldest delta recorded on this node and not yet applied in Redis",
            labels=["object"],
        )
        now = time.monotonic()
        for obj, box in boxes.items():
            pending.add_metric([obj], len(box.buffer))
            lag.add_metric([obj], box.lag(now))
        yield pending
        yield lag
        yield _histogram(
            "mcluster_apply_latency_seconds",
            "Time to apply one batch in Redis (one script call)",
            {obj: box.apply_seconds for obj, box in boxes.items()},
        )
        yield _histogram(
            "mcluster_batch_keys",
            "Distinct keys per applied batch",
            {obj: box.batch_keys for obj, box in boxes.items()},
        )

    def _membership(self) -> Iterator[Metric]:
        node = self.node
        up = self.cluster.members is not None
        yield GaugeMetricFamily("mcluster_redis_up", "Redis answered this scrape", value=up)
        yield GaugeMetricFamily(
            "mcluster_joined", "This node holds a membership", value=node.member is not None
        )
        yield GaugeMetricFamily("mcluster_leader", "This node is the leader", value=node.is_leader)
        epoch = node.member.epoch if node.member is not None else 0
        yield GaugeMetricFamily("mcluster_epoch", "This node's epoch", value=epoch)
        yield CounterMetricFamily(
            "mcluster_resyncs", "Re-syncs (rejoined with a snapshot)", value=node.rejoins
        )
        resyncing = any(box.resyncing.is_set() for box in node.outboxes.values())
        yield GaugeMetricFamily("mcluster_resync_in_progress", "A re-sync runs", value=resyncing)
        if self.cluster.members is not None:
            yield GaugeMetricFamily(
                "mcluster_members", "Live members of the cluster", value=self.cluster.members
            )
            jobs = GaugeMetricFamily(
                "mcluster_reaping_keys_remaining",
                "Keys of a dead view still to drain, per reaping job",
                labels=["object", "node"],
            )
            for job in self.cluster.reaping_jobs:
                left = int(str(job.get("total", 0))) - int(str(job.get("done", 0)))
                jobs.add_metric([str(job.get("object")), str(job.get("node"))], max(0, left))
            yield jobs
            yield GaugeMetricFamily(
                "mcluster_reaping_jobs",
                "Dead views being drained",
                value=len(self.cluster.reaping_jobs),
            )

    def _throttles(self) -> Iterator[Metric]:
        families: dict[str, Throttles] = self.node.throttle_families()
        if self.policy is not None:
            families[POLICY_FAMILY] = self.policy.windows
        decisions = CounterMetricFamily(
            "mcluster_throttle_decisions",
            "Throttle decisions asked of Redis, by outcome; mode degraded: Redis did not "
            "answer in time and the throttle's on_error policy decided",
            labels=["family", "outcome", "mode"],
        )
        local = CounterMetricFamily(
            "mcluster_throttle_local_decisions",
            "Decisions made in process from a local quota reservation",
            labels=["family"],
        )
        spent = CounterMetricFamily(
            "mcluster_throttle_spent_refusals",
            "Refusals made in process: the window had refused as much or more within "
            "the last 100 ms (a client asking again and again after its limit)",
            labels=["family"],
        )
        batches = CounterMetricFamily(
            "mcluster_throttle_batches", "Decision script calls", labels=["family"]
        )
        for name, throttles in families.items():
            s = throttles.stats
            for outcome, mode, value in [
                ("allowed", "exact", s.allowed),
                ("denied", "exact", s.decisions - s.allowed),
                ("allowed", "degraded", s.degraded_allow),
                ("denied", "degraded", s.degraded_deny),
            ]:
                decisions.add_metric([name, outcome, mode], value)
            local.add_metric([name], s.local_decisions)
            spent.add_metric([name], s.spent_refusals)
            batches.add_metric([name], s.batches)
        yield decisions
        yield local
        yield spent
        yield batches

    def _connections(self) -> Iterator[Metric]:
        stats = self.node.connection_stats()
        if stats is None:
            return
        yield CounterMetricFamily(
            "mcluster_connections_opened", "Outbound connection slots taken", value=stats.opened
        )
        yield CounterMetricFamily(
            "mcluster_connections_closed", "Outbound connection slots given back",
            value=stats.closed,
        )  # fmt: skip
        yield CounterMetricFamily(
            "mcluster_connections_owner_expired",
            "Outbound connection slots freed because their owner (a client of the agent, "
            "e.g. a Haraka process) did not renew within lease TTL",
            value=self.node.owner_leases.expired,
        )
        refused = CounterMetricFamily(
            "mcluster_connections_refused",
            "Outbound connection opens refused, by what refused: the cap's option and scope "
            "(e.g. 'cluster_max_outbound_connections (host)'), OBTC, or re-syncing",
            labels=["refused_by"],
        )
        for by, value in sorted(stats.refused.items()):
            refused.add_metric([by], value)
        yield refused

    def _caches(self) -> Iterator[Metric]:
        staleness = GaugeMetricFamily(
            "mcluster_cache_replica_staleness_seconds",
            "Replica staleness over the last changes: Redis time of a write to this node's "
            "replica applying it (quantile 0.5, 0.99 and 1 = the most)",
            labels=["cache", "quantile"],
        )
        size = GaugeMetricFamily(
            "mcluster_cache_replica_keys", "Pairs in this node's replica", labels=["cache"]
        )
        lookups = CounterMetricFamily(
            "mcluster_cache_lookups",
            "Cache reads by result: hit, negative_hit (known absent), miss (asked Redis)",
            labels=["cache", "result"],
        )
        reloads = CounterMetricFamily(
            "mcluster_cache_reloads",
            "Replica reloads after a gap in the change stream",
            labels=["cache"],
        )
        for name, replica in self.node.caches.replicas.items():
            figures = CacheReplicaStats.of(replica)
            for quantile, value in (
                ("0.5", figures.staleness_p50),
                ("0.99", figures.staleness_p99),
                ("1", figures.staleness_max),
            ):
                if value is not None:
                    staleness.add_metric([name, quantile], value / 1000)
            size.add_metric([name], figures.replica_size)
            for result in ("hit", "negative_hit", "miss"):
                lookups.add_metric([name, result], getattr(replica.stats, LOOKUPS[result]))
            reloads.add_metric([name], replica.stats.reloads)
        yield from (staleness, size, lookups, reloads)

    def _policy(self, policy: PolicyService) -> Iterator[Metric]:
        s = policy.stats
        requests = CounterMetricFamily(
            "mcluster_policy_requests", "Postfix policy requests by action", labels=["action"]
        )
        for action in ("DUNNO", "DEFER_IF_PERMIT", *QUOTA_ACTIONS[1:]):
            requests.add_metric([action], s.actions.get(action, 0))
        yield requests
        yield from quota_metrics(policy.quotas)
        for name, value, doc in [
            ("transactions", s.transactions, "Mail transactions decided (counted in windows)"),
            ("degraded", s.degraded, "Decisions made by on_error: Redis did not answer"),
            ("garbage", s.garbage, "Connections closed for garbage"),
            ("connections", s.connections, "Connections from smtpd"),
            ("errors", s.errors, "Decisions that failed unexpectedly (on_error answered)"),
        ]:
            yield CounterMetricFamily(f"mcluster_policy_{name}", doc, value=value)
        released = CounterMetricFamily(
            "mcluster_policy_released",
            "Transactions ended, by what ended them",
            labels=["reason"],
        )
        for reason in ("end-of-message", "next", "closed", "timeout", "overflow", "stopped"):
            released.add_metric([reason], s.released.get(reason, 0))
        yield released
        yield GaugeMetricFamily(
            "mcluster_policy_open_transactions",
            "Transactions seen and not yet ended",
            value=len(policy.transactions),
        )


class Metrics:
    """The registry of one node and the collector in it."""

    def __init__(
        self, node: Node, policy: PolicyService | None = None, refusals: Refusals | None = None
    ) -> None:
        self.collector = NodeCollector(node, policy, refusals)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    async def render(self) -> bytes:
        await self.collector.refresh()
        return generate_latest(self.registry)


METRICS_KEY = web.AppKey("metrics", Metrics)


async def get_metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(
    app: web.Application,
    node: Node,
    policy: PolicyService | None,
    refusals: Refusals | None = None,
) -> None:
    app[METRICS_KEY] = Metrics(node, policy, refusals)
    app.router.add_get("/metrics", get_metrics)
