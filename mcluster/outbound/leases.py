"""Client leases on connection slots: the slots of an owner that stops renewing are freed.

A slot is held for its node by the agent; when the node dies, reaping frees its slots
within lease TTL. A client of the agent (a Haraka process) can die alone, though, with
the agent alive: its slots would stay taken until something closes them. So an open may
name an ``owner`` (e.g. ``haraka-HOST-PID``); the owner renews (``POST
/v1/connections/renew``, or any open or close of its own), and an owner silent for longer
than the node's lease TTL has every slot it holds closed through the ordinary close path
(``Slots.close``: each view is decremented exactly once, as for a close by the client).

The bookkeeping is in memory, in the agent process: the agent is the one that holds the
slots for its node, and when the agent dies its node's slots are reaped anyway. Slots
opened without an owner are not tracked here and behave as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mcluster.errors import InvalidValue

log = logging.getLogger(__name__)

#: The longest an owner may go past its lease before the sweep sees it (and the least).
MAX_SWEEP = 0.25
MIN_SWEEP = 0.02
MAX_OWNER = 255


def check_owner(owner: object) -> str:
    """``owner`` as given, when it is a non-empty printable string of at most 255 chars."""
    if not isinstance(owner, str) or not owner:
        raise InvalidValue("owner must be a non-empty string")
    if len(owner) > MAX_OWNER or not owner.isprintable():
        raise InvalidValue(f"owner must be at most {MAX_OWNER} printable characters")
    return owner


@dataclass
class _Lease:
    slots: set[str] = field(default_factory=set)
    renewed: float = 0.0  # time.monotonic() of the last renewal


class OwnerLeases:
    """Which owner holds which slot, and when each owner last renewed."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._owners: dict[str, _Lease] = {}
        self._owner_of: dict[str, str] = {}  # slot -> owner
        self.expired = 0  # slots closed because their owner stopped renewing

    def add(self, owner: str, slot: str) -> None:
        """``owner`` took ``slot`` (an open renews its owner's lease)."""
        lease = self._owners.setdefault(owner, _Lease())
        lease.slots.add(slot)
        lease.renewed = self._clock()
        self._owner_of[slot] = owner

    def drop(self, slot: str) -> None:
        """``slot`` was closed: forget it (a close renews its owner's lease)."""
        owner = self._owner_of.pop(slot, None)
        if owner is None:
            return
        lease = self._owners[owner]
        lease.slots.discard(slot)
        lease.renewed = self._clock()
        if not lease.slots:  # nothing to free: the owner is forgotten
            del self._owners[owner]

    def renew(self, owner: str) -> int:
        """Renew ``owner``'s lease; the number of slots it holds (0: none, or freed already)."""
        lease = self._owners.get(owner)
        if lease is None:
            return 0
        lease.renewed = self._clock()
        return len(lease.slots)

    def held(self, owner: str) -> int:
        lease = self._owners.get(owner)
        return len(lease.slots) if lease is not None else 0

    def due(self) -> list[tuple[str, list[str]]]:
        """Take out the owners whose lease ran out, with their slots (for closing)."""
        now = self._clock()
        gone = [o for o, lease in self._owners.items() if now - lease.renewed > self.ttl]
        out = []
        for owner in gone:
            slots = sorted(self._owners.pop(owner).slots)
            for slot in slots:
                self._owner_of.pop(slot, None)
            out.append((owner, slots))
        return out

    async def run(self, close: Callable[[str], Awaitable[bool]]) -> None:
        """Close the slots of every expired owner, every ttl/10 s (at most MAX_SWEEP)."""
        every = min(MAX_SWEEP, max(MIN_SWEEP, self.ttl / 10))
        while True:
            await asyncio.sleep(every)
            for owner, slots in self.due():
                freed = 0
                for slot in slots:
                    try:
                        freed += await close(slot)
                    except Exception as exc:  # Slots.close retries in the background
                        log.warning("slot %s of expired owner %s: %s", slot, owner, exc)
                        freed += 1
                self.expired += freed
                log.warning(
                    "owner %r did not renew within %.1f s: %d slot(s) freed", owner, self.ttl,
                    freed,
                )  # fmt: skip
