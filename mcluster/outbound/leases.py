"""Client leases on connection slots: the slots of an owner that stops renewing are freed.

A slot is held for its node by the agent; when the node dies, reaping frees its slots
within lease TTL. A client of the agent (a Haraka process) can die alone, though, with
the agent alive: its slots would stay taken until something closes them. So an open may
name an ``owner`` (e.g. ``haraka-HOST-PID``); the owner renews (``POST
/v1/connections/renew``, or any open or close of its own), and an owner silent for longer
than the node's lease TTL has every slot it holds closed through the ordinary close path
(``Slots.close``: each view is decremented exactly once, as for a close by the client).

Counts get the same lease: events posted with an ``owner`` (``POST /v1/events {"events",
"owner"}``, e.g. a Haraka process counting its open inbound connections in
``inbound_cidr``) are summed per owner, object and key, and when the owner stops renewing
the agent records the opposite of what is left (each key back by exactly what that owner
put there and did not take out itself).

The bookkeeping is in memory, in the agent process: the agent is the one that holds the
slots and counts for its node, and when the agent dies its node's views are reaped
anyway. Slots opened and events posted without an owner are not tracked here and behave
as before.
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


#: What an owner counted and has not taken out: (object, packed key) -> sum of its deltas.
Counts = dict[tuple[str, bytes], int]


@dataclass
class _Lease:
    slots: set[str] = field(default_factory=set)
    counts: Counts = field(default_factory=dict)
    renewed: float = 0.0  # time.monotonic() of the last renewal

    def empty(self) -> bool:
        return not self.slots and not self.counts


@dataclass(frozen=True)
class Expired:
    """An owner whose lease ran out: its slots to close and its counts to take back."""

    owner: str
    slots: list[str]
    counts: Counts


class OwnerLeases:
    """Which owner holds which slot, and when each owner last renewed."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._owners: dict[str, _Lease] = {}
        self._owner_of: dict[str, str] = {}  # slot -> owner
        self.expired = 0  # slots closed because their owner stopped renewing
        self.expired_counts = 0  # units of counts taken back for the same reason

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
        if lease.empty():  # nothing to free: the owner is forgotten
            del self._owners[owner]

    def count(self, owner: str, obj: str, key: bytes, delta: int) -> None:
        """``owner`` counted ``delta`` on ``key`` of ``obj`` (this renews its lease)."""
        lease = self._owners.setdefault(owner, _Lease())
        lease.renewed = self._clock()
        left = lease.counts.get((obj, key), 0) + delta
        if left:
            lease.counts[obj, key] = left
        else:
            lease.counts.pop((obj, key), None)
        if lease.empty():
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

    def due(self) -> list[Expired]:
        """Take out the owners whose lease ran out, with their slots and counts."""
        now = self._clock()
        gone = [o for o, lease in self._owners.items() if now - lease.renewed > self.ttl]
        out = []
        for owner in gone:
            lease = self._owners.pop(owner)
            slots = sorted(lease.slots)
            for slot in slots:
                self._owner_of.pop(slot, None)
            out.append(Expired(owner, slots, lease.counts))
        return out

    async def run(
        self,
        close: Callable[[str], Awaitable[bool]],
        uncount: Callable[[str, bytes, int], None] | None = None,
    ) -> None:
        """Close the slots and take back (``uncount(obj, key, -left)``) the counts of every
        expired owner, every ttl/10 s (at most MAX_SWEEP)."""
        every = min(MAX_SWEEP, max(MIN_SWEEP, self.ttl / 10))
        while True:
            await asyncio.sleep(every)
            for gone in self.due():
                freed = 0
                for slot in gone.slots:
                    try:
                        freed += await close(slot)
                    except Exception as exc:  # Slots.close retries in the background
                        log.warning("slot %s of expired owner %s: %s", slot, gone.owner, exc)
                        freed += 1
                self.expired += freed
                taken = 0
                for (obj, key), left in gone.counts.items():
                    if uncount is None:
                        break
                    try:
                        uncount(obj, key, -left)
                    except Exception as exc:  # an object a config reload removed since
                        log.warning("counts of expired owner %s in %s: %s", gone.owner, obj, exc)
                        continue
                    taken += abs(left)
                self.expired_counts += taken
                log.warning(
                    "owner %r did not renew within %.1f s: %d slot(s) freed, %d count(s) "
                    "taken back", gone.owner, self.ttl, freed, taken,
                )  # fmt: skip
