"""Typed results of ``Node``'s (and ``Manager``'s) public calls: frozen dataclasses.

Each still reads like the dict it replaced (``result["epoch"]``, ``stats()["inbound_cidr"]``,
``result.get("file")``), so callers written against 0.1 keep working; ``to_json()`` is the
exact JSON the faces send (HTTP, console ``--json``), converted there, not here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcluster.agent.outbox import Outbox

__all__ = ["NodeStats", "OutboxStats", "ReadsLikeADict", "ReloadResult", "ResetResult", "as_json"]


class ReadsLikeADict(Mapping[str, Any]):
    """``to_json()``'s keys and values, read through the Mapping interface (the base of
    every typed result and stats of the agent's public calls)."""

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())


def as_json(figures: Mapping[str, Any]) -> dict[str, Any]:
    """A typed result's ``to_json()``, or a plain mapping as a dict."""
    return figures.to_json() if isinstance(figures, ReadsLikeADict) else dict(figures)


@dataclass(frozen=True, eq=False)
class ResetResult(ReadsLikeADict):
    """``cluster reset`` done: the member's new private name and epoch, keys re-published."""

    node: str
    private_name: str
    epoch: int
    republished: int  # keys; "keys" in JSON (an attribute would hide Mapping.keys)

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "private_name": self.private_name, "epoch": self.epoch,
                "keys": self.republished}  # fmt: skip


@dataclass(frozen=True, eq=False)
class ReloadResult(ReadsLikeADict):
    """``config reload`` done: what was added, removed, changed, and what needs a restart.

    ``file`` is None (and ``reason`` says why) when there was nothing to reload."""

    node: str
    file: str | None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.reason is not None:
            return {"node": self.node, "file": self.file, "reason": self.reason}
        return {"node": self.node, "file": self.file, "added": list(self.added),
                "removed": list(self.removed), "changed": list(self.changed),
                "needs_restart": list(self.needs_restart)}  # fmt: skip


@dataclass(frozen=True, eq=False)
class OutboxStats(ReadsLikeADict):
    """One object's shipping figures on this node (``GET /v1/stats``)."""

    counters: Mapping[str, int]
    """recorded, applied, batches, repeats, anomalies, retries, dropped (``Outbox.stats``)"""
    seq: int
    max_delay: float
    max_pending: int

    @staticmethod
    def of(box: Outbox) -> OutboxStats:
        """The figures of ``box`` now."""
        return OutboxStats(dict(vars(box.stats)), box.seq, box.max_delay, box.max_pending)

    def to_json(self) -> dict[str, Any]:
        return dict(self.counters) | {"seq": self.seq, "max_delay": self.max_delay,
                                      "max_pending": self.max_pending}  # fmt: skip


@dataclass(frozen=True, eq=False)
class NodeStats(ReadsLikeADict):
    """``Node.stats()``: per object, the audit recorder (``AuditStats``) and the cache
    replicas (``CacheReplicaStats``), by name."""

    objects: Mapping[str, OutboxStats]
    audit: Mapping[str, Any] | None = None
    caches: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        shipped: dict[str, Any] = {name: s.to_json() for name, s in self.objects.items()}
        if self.audit is not None:
            shipped["audit"] = as_json(self.audit)
        return shipped | {name: as_json(figures) for name, figures in self.caches.items()}
