"""Config reload (SIGHUP on ``mcluster agent``, ``config reload`` on the console): re-read
the config file and apply what changed to the running node, losing no counts.

* a new ``Replicate`` object gets its outbox and this node's view at once;
* a removed object stops taking events, and this node's view of it is drained out of
  the global view (retired, then zeroed chunk by chunk), so the cluster no longer counts
  what this node had recorded there;
* changed ``max_delay`` / ``max_pending`` apply from the next batch; pending deltas stay
  where they are, so nothing recorded is lost;
* a removed sharded object (``shards = N``) is drained from every shard;
* a changed ``Policy`` scope (rules, quotas, on_error; not who may connect) is taken up
  by the policy service running beside the node (``Node.reload_hooks``), from its next
  request;
* the ``Shaping``/``Adaptive``/``Warmup`` rules apply from the next report or decision
  (actions in force stay until they end; shaping added to a node that had none, or all
  of it removed, needs a restart);
* new ``Shared_Throttle`` scopes are defined; the outbound caps and OBTM/OBTC rates
  (``Domain``/``Binding`` options) are read from the new file from the next decision.

What cannot change under a running node (the namespace, heartbeat and lease settings, an
object's type or ``shards``, a new object with ``shards`` > 1, the stanzas with
machinery of their own: OBTM/OBTC, named throttles, caches, audit metrics, and whether
connection slots exist) is left as it was and listed under ``needs_restart``. A config
with errors
changes nothing: the error names the file, line and column.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from mcluster.agent.results import ReloadResult
from mcluster.agent.slots import ConnectionSlots
from mcluster.config import ClusterConfig, Option, ReplicateObject, load_config
from mcluster.objects import throttle
from mcluster.objects.kinds import kind_for_type
from mcluster.objects.outbound import OutboundPolicy
from mcluster.objects.policy import GUARD_OPTIONS, policy_config
from mcluster.outbound.views import ConnectionViews
from mcluster.security.clients import policy_guard
from mcluster.shaping.config import shaping_config

if TYPE_CHECKING:
    from mcluster.agent.node import Node

__all__ = ["reload_config"]

log = logging.getLogger("mcluster.agent")

#: Cluster options a running node cannot take up.
_FIXED_OPTIONS = ("namespace", "heartbeat_interval", "lease_ttl", "max_buffered_keys")
#: A changed Policy scope: applied by a running policy service, else needs a restart.
POLICY_CHANGE = "Policy (the policy service's rules and quotas)"


def _replicated(config: ClusterConfig) -> dict[str, ReplicateObject]:
    """The objects a node ships through an outbox (reloadable one by one)."""
    return {o.name: o for o in config.objects if kind_for_type(o.type) is not None}


def _others(config: ClusterConfig) -> dict[str, ReplicateObject]:
    """The objects with machinery of their own (throttles, OBTM/OBTC, caches, audit)."""
    return {o.name: o for o in config.objects if kind_for_type(o.type) is None}


def _stanza(objects: dict[str, ReplicateObject], name: str) -> dict[str, object] | None:
    """What a stanza says, not where it is (a line added above it changes its source)."""
    obj = objects.get(name)
    return None if obj is None else obj.model_dump(exclude={"source"})


def _fixed_changes(old: ClusterConfig, new: ClusterConfig) -> list[str]:
    """What differs that a running node cannot apply."""
    changes = [
        f"cluster option {key}"
        for key in _FIXED_OPTIONS
        if old.options.get(key) != new.options.get(key)
    ]
    before, after = _others(old), _others(new)
    differ = sorted(
        n for n in before.keys() | after.keys() if _stanza(before, n) != _stanza(after, n)
    )
    if differ:
        changes.append(f"objects {', '.join(differ)}")
    slots = [ConnectionSlots.wanted(c) for c in (old, new)]
    if slots[0] != slots[1]:
        changes.append("outbound connection slots")
    rules, guard = zip(*(_policy_parts(c) for c in (old, new)), strict=True)
    if rules[0] != rules[1]:  # positions aside
        changes.append(POLICY_CHANGE)
    if guard[0] != guard[1]:  # a live change could shut out every smtpd: read at start
        changes.append("Policy clients and bounds (who may connect)")
    return changes


def _policy_parts(config: ClusterConfig) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The Policy scope's rules and quotas, and its guard options (mcluster.security)."""
    scopes = config.tree.scopes("Policy")
    items = scopes[0].items if scopes else ()
    guard = tuple(i for i in items if isinstance(i, Option) and i.key.casefold() in GUARD_OPTIONS)
    return tuple(i for i in items if i not in guard), guard


async def reload_config(node: Node) -> ReloadResult:
    """Re-read ``node.config.source`` and apply it; returns what changed."""
    path = node.config.source
    if not path or not os.path.isfile(path):
        raise ValueError(f"the config was not read from a file ({path!r}): nothing to reload")
    new = load_config(path)  # ConfigError (FILE:LINE:COL: ...) leaves everything as it was
    declared = throttle.config_throttles(new)
    policy = OutboundPolicy(new)
    policy_config(new)  # a bad Policy or Quota scope fails the reload like any error
    policy_guard(new)
    shaping = shaping_config(new)  # bad rules: ConfigError, nothing applied
    old_objects, new_objects = _replicated(node.config), _replicated(new)
    needs_restart = _fixed_changes(node.config, new)
    applied = []  # what the reload hooks take up (the policy service: its Policy scope)
    if node.reload_hooks and POLICY_CHANGE in needs_restart:
        needs_restart.remove(POLICY_CHANGE)
        applied.append("Policy")
    if (node.shaping is None) != (not shaping.enabled):
        needs_restart.append("shaping (Shaping, Adaptive or Warmup scopes added or all removed)")
    added, removed, changed = [], [], []
    for name, obj in new_objects.items():
        before = old_objects.get(name)
        if before is None and obj.shards > 1:  # its shards' outboxes are made at start
            needs_restart.append(f"object {name}: new, with shards = {obj.shards}")
        elif before is None:
            added.append(name)
        elif before.type != obj.type:
            needs_restart.append(f"object {name}: type {before.type} -> {obj.type}")
        elif before.shards != obj.shards:
            needs_restart.append(f"object {name}: shards {before.shards} -> {obj.shards}")
        elif (before.max_delay, before.max_pending) != (obj.max_delay, obj.max_pending):
            changed.append(name)
    removed = [name for name in old_objects if name not in new_objects]
    async with node.reconfiguring:
        for name in changed:
            obj = new_objects[name]
            node.replication.retune(name, obj.max_delay, obj.max_pending)
        for name in added:
            obj = new_objects[name]
            kind = kind_for_type(obj.type)
            assert kind is not None
            await node.add_object(name, obj.type, kind, obj.max_pending, obj.max_delay)
        for name in removed:
            await node.replication.remove_object(name)
        throttles = node.throttle_families().get(throttle.OBJECT)
        if throttles is not None:
            await throttles.load([d for d in declared if d.name not in throttles.defs])
        node.outbound.adopt(policy)
        if node.shaping is not None and shaping.enabled:
            node.shaping.reconfigure(shaping)  # actions in force stay until they expire
        node.connection_views.adopt(ConnectionViews(new))
        node.config = new
        for hook in node.reload_hooks:
            hook(new)
    result = ReloadResult(node.name, path, tuple(added), tuple(removed),
                          tuple(changed + applied), tuple(needs_restart))  # fmt: skip
    log.info("config reloaded: %s", result.to_json())
    return result


def reload_in_background(
    reload: Callable[[], Awaitable[ReloadResult]], logger: logging.Logger = log
) -> None:
    """SIGHUP (``mcluster agent``, ``mcluster manager``): reload without blocking the
    signal handler; the outcome goes to ``logger``."""

    async def run() -> None:
        try:
            logger.info("config reloaded: %s", (await reload()).to_json())
        except Exception as exc:  # a bad file: say where, keep running on the old config
            logger.error("config reload failed; keeping the running config: %s", exc)

    _background.add(task := asyncio.ensure_future(run()))
    task.add_done_callback(_background.discard)


_background: set[asyncio.Future[None]] = set()
