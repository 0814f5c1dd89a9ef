"""Every refusal of every guard, counted per node for ``/metrics``.

A refusal is a request or connection a guard turned away (no token, a body over the limit,
an address not on the allow-list, ...). Each is counted under its face (``http``,
``policy``, ``config``) and reason, so an operator sees an attack or a misconfigured
client in ``mcluster_refusals_total`` instead of only in the log. The known reasons are
always exported (at 0), so a rate over them works from the first scrape.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client.core import CounterMetricFamily

#: The reasons each face refuses for (the label values of ``mcluster_refusals_total``).
REASONS: dict[str, tuple[str, ...]] = {
    "http": (
        "unauthorized",
        "body_too_large",
        "too_many_events",
        "header_timeout",
        "body_timeout",
        "connections",
    ),
    "policy": ("not_allowed", "idle_timeout", "request_timeout", "connections"),
    "config": ("too_large", "too_deep"),
}


class Refusals:
    """Counts of refusals by (face, reason); one per node, never shared between nodes."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def count(self, face: str, reason: str) -> None:
        assert reason in REASONS[face], (face, reason)
        self.counts[face, reason] += 1

    def get(self, face: str, reason: str) -> int:
        return self.counts[face, reason]

    def metric(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "mcluster_refusals",
            "Requests and connections a guard refused, by face and reason",
            labels=["face", "reason"],
        )
        for face, reasons in REASONS.items():
            for reason in reasons:
                family.add_metric([face, reason], self.counts[face, reason])
        return family
