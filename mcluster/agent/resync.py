"""A node's re-sync as a job: retire and drain its old views, join with a new epoch, and
publish its absolute state as a snapshot, with progress and abort (``cluster jobs``,
``cluster abort ID``). A ``reset`` also gives up the node's DuraVIPs for re-election
before it leaves; it is a candidate again once it has joined with its new epoch.

Abort is clean at every point:

* while the old views are drained: the drain stops after the chunk in flight; the old
  views stay retired (their batches are refused) and listed in ``reaping``, so the
  leader drains the rest. Every chunk moved its counts out of a node view and the global
  view in one script: global == sum of the views all along.
* while the snapshot is published: the half-published new views are rolled back
  (retired and drained: not abortable), so no view ever holds half a snapshot.

After an abort the node stays out of the views (it keeps recording in memory) for
``resync_hold`` seconds (cluster scope, default 30), or until ``cluster reset``, then
re-syncs again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mcluster.agent.service import hooks
from mcluster.store.jobs import Job, JobAborted

if TYPE_CHECKING:
    from mcluster.agent.node import Node

__all__ = ["JobAborted", "resync"]

log = logging.getLogger("mcluster.agent")


async def resync(node: Node, reason: str, kind: str) -> None:
    """One re-sync, run under every outbox's lock; JobAborted when the operator aborted."""
    boxes = list(node.outboxes.values())
    old = node.member
    total = sum(len(box.state) + len(box.buffer) for box in boxes)
    job = await Job.start(
        node.client, node.keys, kind, reason, runner=node.name,
        runner_private=old.private_name if old is not None else None, total=total,
    )  # fmt: skip
    async with job:
        if kind == "reset" and old is not None:  # it leaves: another node may lead,
            await node.membership.release_leader()
            # and its DuraVIPs are negotiated again (Momentum: a reset restarts Spread).
            for on_reset in hooks(node.services, "on_reset"):
                await on_reset("cluster reset")
        if old is not None:
            job.record.detail = "draining the old views"
            for box in boxes:
                await node.replication.drain_own(box, job)
        await node.membership.join(node.replication.register_views)
        for rejoined in hooks(node.services, "rejoined"):  # DuraVIP: a candidate again,
            rejoined()  # as the new epoch
        assert node.member is not None
        job.record.runner_private = node.member.private_name
        job.record.detail = f"publishing the state as {node.member.private_name}"
        published = 0

        async def step(sent: int) -> None:
            await job.step(published + sent)

        try:
            for box in boxes:
                await box.snapshot_locked(node.scripts, step)
                published += len(box.state)
                log.info("%s: re-published %d keys", box.name, len(box.state))
        except JobAborted:
            log.warning("re-sync aborted: rolling back the half-published views")
            for box in boxes:
                await node.replication.drain_own(box)
            job.record.detail = "rolled back: the node is out of the views until it re-syncs"
            raise
        job.record.detail = f"{published} keys published as {node.member.private_name}"
        await job.step(published, force=True)
