"""Cluster-wide connection caps: slots taken all-or-nothing, counted in the node's view.

``open`` takes one slot under every cap that applies to a route (one script); ``close``
gives it back. Slots are counted in this node's view of the ``outbound_slots`` object
(a gauge table), so when the node dies, reaping frees its slots within lease TTL + 1 s.
A slot closed twice, or after its view was reaped, changes nothing. On a re-sync the
node re-opens the slots it still holds, under its new view, without checking the caps
(the connections are open already).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from mcluster.agent.outbox import Outbox
from mcluster.objects.outbound import Cap, OutboundPolicy, Route
from mcluster.store.keys import GLOBAL
from mcluster.store.scripts import Scripts

OBJECT = "outbound_slots"


@dataclass(frozen=True)
class SlotDecision:
    allowed: bool
    slot: str | None
    reason: str | None

    def to_json(self) -> dict[str, object]:
        return {"allowed": self.allowed, "slot": self.slot, "reason": self.reason}


class Slots:
    """The connection slots this node holds."""

    def __init__(self, scripts: Callable[[], Scripts], box: Outbox, policy: OutboundPolicy):
        self._scripts = scripts
        self.box = box
        self.policy = policy
        self.held: dict[str, list[Cap]] = {}

    def _keys(self) -> list[str]:
        k = self.box.keys
        return [f"{k.base}:slots", k.views, k.data(GLOBAL), k.data(self.box.view),
                k.meta(GLOBAL), k.meta(self.box.view)]  # fmt: skip

    async def open(self, route: Route) -> SlotDecision:
        caps = self.policy.caps(route)
        slot = uuid.uuid4().hex
        allowed, full = await self._open(slot, caps, force=False)
        if not allowed:
            cap = next(c for c in caps if c.key == full)
            return SlotDecision(False, None, f"{cap.source}: {cap.key} holds {cap.limit}")
        self.held[slot] = caps
        return SlotDecision(True, slot, None)

    async def _open(self, slot: str, caps: list[Cap], *, force: bool) -> tuple[bool, str]:
        args: list[str | int] = [self.box.view, slot, 1 if force else 0]
        for cap in caps:
            args += [cap.key, cap.limit]
        allowed, full = await self._scripts().run("slot_open", self._keys(), args)
        return bool(allowed), full.decode() if isinstance(full, bytes) else str(full)

    async def close(self, slot: str) -> bool:
        """Give a slot back; False when there was nothing to give back."""
        self.held.pop(slot, None)
        done = await self._scripts().run("slot_close", self._keys(), [self.box.view, slot])
        return bool(done)

    async def reopen(self) -> None:
        """After a re-sync: count the slots still held under the new view."""
        for slot, caps in self.held.items():
            await self._open(slot, caps, force=True)
