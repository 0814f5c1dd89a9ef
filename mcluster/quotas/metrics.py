"""Prometheus figures of the policy service's quotas (collected at scrape time).

Every refusal is counted by quota and action; a WARN quota's would-have-refused (shadow
mode: the mail went through) by quota, so an operator sees what enforcing it would do.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from mcluster.quotas.engine import QuotaEngine


def quota_metrics(engine: QuotaEngine) -> Iterator[Metric]:
    refusals = CounterMetricFamily(
        "mcluster_policy_quota_refusals",
        "Requests a quota refused (transaction, recipient or message), by quota and action",
        labels=["quota", "action"],
    )
    warnings = CounterMetricFamily(
        "mcluster_policy_quota_would_refuse",
        "Requests a WARN quota would have refused (shadow mode: the mail went through)",
        labels=["quota"],
    )
    for quota in engine.quotas:
        if quota.warn_only:
            warnings.add_metric([quota.name], engine.stats.warned.get(quota.name, 0))
        else:
            count = engine.stats.refused.get((quota.name, quota.action), 0)
            refusals.add_metric([quota.name, quota.action], count)
    yield refusals
    yield warnings
