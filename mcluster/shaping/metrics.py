"""Shaping's Prometheus metrics (``GET /metrics``, listed in docs/metrics.md).

Counters are this node's (activations it made, refusals it gave): summed over the nodes
they are the farm's. The adaptive rates are cluster-wide, read from Redis at scrape time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mcluster.agent.outbox import RETRY_ERRORS
from mcluster.shaping.model import AdaptiveState
from mcluster.shaping.service import Shaper, shaping_state


async def adaptive_rates(shaper: Shaper, deadline: float) -> tuple[AdaptiveState, ...] | None:
    """The adaptive destinations' current rates, None when Redis did not answer in time."""
    if not shaper.config.adaptive:
        return ()
    try:
        async with asyncio.timeout(deadline):
            state = await shaping_state(shaper.ctx.client, shaper.keys, shaper.config)
    except (TimeoutError, *RETRY_ERRORS):
        return None
    return state.adaptive


def collect(shaper: Shaper, rates: tuple[AdaptiveState, ...] | None) -> Iterator[Metric]:
    actions = CounterMetricFamily(
        "mcluster_shaping_actions",
        "Shaping actions this node activated (a matching reply it reported fired the rule)",
        labels=["rule", "action"],
    )
    for (rule, action), n in sorted(shaper.activations.items()):
        actions.add_metric([rule, action], n)
    yield actions
    refusals = CounterMetricFamily(
        "mcluster_shaping_refusals",
        "OBTM decisions shaping refused: by a suspension (reason suspend, rule its name) or "
        "by a limit shaping adds (reason rate: adaptive:NAME, warmup:NAME, shaped:DEST)",
        labels=["rule", "reason"],
    )
    for (rule, reason), n in sorted(shaper.refusals.items()):
        refusals.add_metric([rule, reason], n)
    yield refusals
    s = shaper.stats
    yield CounterMetricFamily(
        "mcluster_shaping_outcomes", "Delivery outcomes reported to this node", value=s.outcomes
    )
    yield CounterMetricFamily(
        "mcluster_shaping_degraded",
        "Shaping checks Redis did not answer in time (the decision went on without them)",
        value=s.degraded,
    )
    yield CounterMetricFamily(
        "mcluster_shaping_aimd_steps", "AIMD steps this node ran as leader", value=s.aimd_steps
    )
    if rates is not None:
        gauge = GaugeMetricFamily(
            "mcluster_shaping_adaptive_rate",
            "Current AIMD message rate of an adaptive destination, per second (cluster-wide)",
            labels=["adaptive", "destination"],
        )
        for r in rates:
            gauge.add_metric([r.name, r.destination], r.rate / r.period)
        yield gauge
