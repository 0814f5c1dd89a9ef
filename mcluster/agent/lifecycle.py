"""Keeping a node a member: it beats, re-syncs when it must, and reaps while it leads.

``Keeper`` runs a node's life between its join and its leave (``Node.start`` and
``Node.stop`` do those two). Its heartbeat renews the lease and decides when the node must
re-sync: an operator's ``cluster reset``, Redis losing its data or batches, the lease
lost, or a batch refused because the node's view was retired. The re-sync itself is a job
(``agent/resync.py``) run under the lock of every outbox; after an operator aborts it the
node stays out of the views for ``resync_hold`` seconds (or until ``cluster reset``), then
tries again. A flush or a connection open that met a retired view waits here for the
re-sync (``wait_resync``). While the node leads, its reap loop retires dead views.

It owns that state (the re-sync counter and its condition, the pending asks, the abort
hold) so the node's user verbs only ask and wait; what a re-sync does to the outboxes
stays with ``Replication`` and the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mcluster.agent import membership, reaper
from mcluster.agent.outbox import RETRY_ERRORS, Outbox, wait_event
from mcluster.agent.service import Service, hooks
from mcluster.errors import NotJoined
from mcluster.objects.kinds import Kind
from mcluster.store.jobs import JobAborted
from mcluster.store.keys import ObjectKeys
from mcluster.store.retry import worth_logging

log = logging.getLogger("mcluster.agent")  # the node's logger: the same lines as before


class Keeper:
    """A node's heartbeat and the re-syncs it calls for, and its reaping while it leads.

    ``member`` gives the record, lease, keys and scripts; ``outboxes`` and ``services`` are
    the node's own (changed in place); ``reconfiguring`` is the lock a config reload holds
    too; ``resync(reason, kind)`` runs one re-sync job; ``status()`` is the figures each
    heartbeat stores; ``reap_also()`` the objects defined at run time the leader reaps
    too; ``track(task)`` hands every task started here to the node, which cancels them."""

    def __init__(
        self,
        member: membership.Member,
        outboxes: dict[str, Outbox],
        services: list[Service],
        reconfiguring: asyncio.Lock,
        *,
        heartbeat_interval: float,
        resync_hold: float,
        resync_wait: float,
        status: Callable[[], str],
        resync: Callable[[str, str], Awaitable[None]],
        reap_also: Callable[[], Awaitable[list[tuple[Kind, ObjectKeys]]]],
        track: Callable[[asyncio.Task[Any]], None],
    ) -> None:
        self.member = member
        self.outboxes = outboxes
        self.services = services
        self.reconfiguring = reconfiguring
        self.heartbeat_interval = heartbeat_interval
        self.resync_hold = resync_hold
        self.resync_wait = resync_wait  # the longest a flush or a connection open waits
        self._status = status
        self._resync = resync
        self._reap_also = reap_also
        self._track = track
        self.out_of_views = False  # after an aborted re-sync, until the next one
        self.rejoins = 0
        self._retry_now = asyncio.Event()
        self._reset_asked = False
        self._resync_needed = asyncio.Event()
        self._joined = asyncio.Condition()
        self._stopping = False

    def start(self) -> None:
        """Start beating and reaping (the node has just joined)."""
        self._track(asyncio.create_task(self._heartbeat_loop()))
        self._track(asyncio.create_task(self._reap_loop()))

    def stop(self) -> None:
        """No more beats or reaps: the loops end at their next turn, should the node's
        cancel of their tasks be swallowed."""
        self._stopping = True

    def ask_resync(self) -> None:
        """A batch was refused (this node's view was retired): re-sync at the next beat."""
        self._resync_needed.set()

    async def _heartbeat_loop(self) -> None:
        """Renew the lease; re-sync when it is lost or Redis lost data; reap when leader.

        Nothing but a cancel ends it: a node whose heartbeat stopped would never re-sync
        again (its views reaped, its batches refused) while it still believed it led."""
        rejoin: asyncio.Task[None] | None = None
        failures = 0
        while not self._stopping:
            if (rejoin is not None and not rejoin.done()) or failures:
                await asyncio.sleep(self.heartbeat_interval)  # no busy loop on a set event
            else:
                await wait_event(self._resync_needed, self.heartbeat_interval)
            try:
                rejoin = await self._beat_once(rejoin)
                if failures:
                    log.warning("Redis answers again after %d failed heartbeats", failures)
                failures = 0
            except RETRY_ERRORS as exc:
                failures += 1
                if worth_logging(failures):
                    log.error("heartbeat failed (%d in a row): %s", failures, exc)
            except Exception:
                failures += 1
                log.exception("heartbeat failed; trying again")

    async def _beat_once(self, rejoin: asyncio.Task[None] | None) -> asyncio.Task[None] | None:
        """One heartbeat, and the re-sync it calls for; returns the re-sync task running."""
        member = self.member.record
        if member is None:
            return rejoin
        beat = await self.member.beat(member, self._status())
        if self.member.record is not member or (rejoin is not None and not rejoin.done()):
            return rejoin  # a re-sync ran during the beat: this beat speaks of the old epoch
        if rejoin is not None and rejoin.exception() is not None:
            log.error("re-sync failed: %s; retrying", rejoin.exception())
            self._resync_needed.set()
        reason, kind = None, "resync"
        if self._reset_asked:
            reason, kind = "an operator asked for it (cluster reset)", "reset"
        elif not beat.same_data:
            reason = "Redis lost its data (the incarnation marker changed)"
        elif not beat.lease:
            reason = "this node's lease was lost (paused, partitioned or reaped)"
        elif self._resync_needed.is_set():
            reason = "a batch was refused: this node's view was retired"
        else:  # a Redis error here is a failed beat: the next one asks again
            reason = await membership.lost_batches(self.member.scripts, self.outboxes.values())
        if not reason:
            return None
        self._reset_asked = False
        rejoin = asyncio.create_task(self.rejoin(reason, kind))
        self._track(rejoin)
        return rejoin

    async def rejoin(self, reason: str, kind: str = "resync") -> None:
        """Re-sync as a job (``agent/resync.py``). After an abort the node stays out of the
        views for ``resync_hold`` seconds (or until ``cluster reset``), then tries again."""
        log.warning("re-syncing: %s", reason)
        for service in self.services:
            service.on_rejoin()
        for box in self.outboxes.values():
            box.resyncing.set()  # a batch being retried gives up: the snapshot holds it
        async with contextlib.AsyncExitStack() as held:
            await held.enter_async_context(self.reconfiguring)
            for resyncing in hooks(self.services, "resyncing"):  # the connection slots:
                await held.enter_async_context(resyncing())  # none opened or closed now
            for box in self.outboxes.values():
                await held.enter_async_context(box.lock)
            while True:
                try:
                    await self._resync(reason, kind)
                    break
                except JobAborted:
                    self.out_of_views = True
                    log.warning("re-sync aborted: out of the views for %g s", self.resync_hold)
                    await wait_event(self._retry_now, self.resync_hold)
                    self._retry_now.clear()
                    reason = "retrying an aborted re-sync"
            self.out_of_views = False
        self._resync_needed.clear()
        for box in self.outboxes.values():
            box.resyncing.clear()
        async with self._joined:
            self.rejoins += 1
            self._joined.notify_all()

    async def reset(self) -> None:
        """``cluster reset``: re-sync as a ``reset`` job at the next beat, or retry an
        aborted re-sync at once; returns once it is done."""
        rejoins = self.rejoins
        self._reset_asked = not self.out_of_views
        if self.out_of_views:
            self._retry_now.set()
        else:
            self._resync_needed.set()
        async with self._joined:
            await self._joined.wait_for(lambda: not self._reset_asked and self.rejoins > rejoins)

    async def wait_resync(self, rejoins: int) -> None:
        """Ask for a re-sync and wait until one has finished since ``rejoins`` was read;
        TimeoutError after ``resync_wait`` seconds (a caller is never held forever)."""
        self._resync_needed.set()
        async with asyncio.timeout(self.resync_wait):
            async with self._joined:
                await self._joined.wait_for(lambda: self.rejoins > rejoins)

    async def _reap_loop(self) -> None:
        """The leader looks for dead views four times per heartbeat and reaps them."""
        me = asyncio.current_task()
        while not self._stopping:
            await asyncio.sleep(self.heartbeat_interval / 4)
            if me is not None and me.cancelling():  # a cancel swallowed while reaping
                raise asyncio.CancelledError
            if not self.member.is_leader:
                continue
            try:
                objects = [(box.kind, box.keys) for box in self.outboxes.values()]
                objects += await self._reap_also()  # defined at run time
                runner = (self.member.name, self._private_name())
                await reaper.reap(
                    self.member.scripts, self.member.keys, objects, runner, self.resync_hold
                )
            except RETRY_ERRORS as exc:
                log.warning("reaping interrupted: %s", exc)
            except Exception:  # never let the leader stop reaping for good
                log.exception("reaping failed; trying again")

    def _private_name(self) -> str:
        if self.member.record is None:  # as Node.private_name: left meanwhile
            raise NotJoined("the node has not joined yet")
        return self.member.record.private_name
