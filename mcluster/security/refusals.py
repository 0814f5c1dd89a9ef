"""Every refusal of every guard, counted per node for ``/metrics``.

A refusal is a request or connection a guard turned away (no token, a body over the limit,
an address not on the allow-list, ...). Each is counted under its face (``http``,
``policy``, ``config``) and reason, so an operator sees an attack or a misconfigured
client in ``mcluster_refusals_total`` instead of only in the log. The known reasons are
always exported (at 0), so a rate over them works from the first scrape.

Refusals that clients of the agent decide on their own (the Haraka plugin's inbound cap,
its fail-closed answers) are reported by them (``mcluster/faces/http/clients.py``) and
kept here too, in ``ClientReports``.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator

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
        #: what clients of the agent refused themselves (``faces/http/clients.py``)
        self.clients = ClientReports()

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


MAX_REPORTERS = 256
#: (metric, client, first label, second label): a refusal is ("refusals", client, reason,
#: ""), an undecided answer ("unavailable", client, stage, "open" | "closed").
Key = tuple[str, str, str, str]


class ClientReports:
    """The latest totals of each reporter, and what reporters no longer kept apart left."""

    def __init__(self, max_reporters: int = MAX_REPORTERS) -> None:
        self.max_reporters = max_reporters
        self._last: OrderedDict[str, dict[Key, int]] = OrderedDict()  # least recent first
        self._folded: Counter[Key] = Counter()

    def report(self, reporter: str, totals: dict[Key, int]) -> None:
        last = self._last.pop(reporter, {})
        for key, value in totals.items():
            last[key] = max(last.get(key, 0), value)
        self._last[reporter] = last
        while len(self._last) > self.max_reporters:
            _, old = self._last.popitem(last=False)
            self._folded.update(old)

    def totals(self) -> Counter[Key]:
        out = Counter(self._folded)
        for last in self._last.values():
            out.update(last)
        return out

    def metrics(self) -> Iterator[CounterMetricFamily]:
        refusals = CounterMetricFamily(
            "mcluster_client_refusals",
            "Refusals a client of the agent decided itself and reported (POST "
            "/v1/clients/report), by client and reason: e.g. haraka's connection_cap (421 "
            "over the per-block cap) and agent_unavailable (fail closed)",
            labels=["client", "reason"],
        )
        unavailable = CounterMetricFamily(
            "mcluster_client_unavailable",
            "Answers a client of the agent gave without a decision (the agent unreachable, "
            "late, erring or degraded), by client, stage and what it did: fail open (let "
            "through) or fail closed (refused or deferred)",
            labels=["client", "stage", "fail"],
        )
        for (metric, client, first, second), value in sorted(self.totals().items()):
            if metric == "refusals":
                refusals.add_metric([client, first], value)
            else:
                unavailable.add_metric([client, first, second], value)
        yield refusals
        yield unavailable
