"""The DuraVIP loop of one node: publish its config, elect, take, renew and give up.

Four times per heartbeat the node reads the cluster's DuraVIP state (``store.snapshot``)
and, for each address of its config:

* it owns: once per heartbeat it renews the ownership lease (``duravip_renew``, fenced by
  its token). Renewal refused -> it lost the address; a handoff asked (``duravip move``,
  or the preferred node came back) -> it unplumbs, then releases it to that node.
* nobody owns: the elected node (``state.elected``: the live preferred node, else the
  rendezvous winner among live candidates) claims it (``duravip_claim``); any candidate
  does once it has stayed unowned for a lease TTL (the elected one may be gone).
* another owns, and this node is its live, uncontested preferred node: once per join it
  asks for the address back (``duravip_move``).

Belief is local and bounded: an owner believes it owns an address only until
``sent + lease_ttl - margin`` of its last successful renewal (a watchdog drops it), and
the lease in Redis lives at least ``sent + lease_ttl``. So a node cut off from Redis
stops believing before anyone else can claim, and after the partition heals its renewal
(an old token) is refused: two nodes never both believe they own an address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcluster.agent.outbox import RETRY_ERRORS
from mcluster.agent.results import ReadsLikeADict
from mcluster.agent.service import ServiceContext
from mcluster.duravip import arp, store
from mcluster.duravip.command import Plumber
from mcluster.duravip.config import DuraVipConfig, duravip_config
from mcluster.duravip.state import VipState, elected, states, vip_record
from mcluster.duravip.store import Owner, Snapshot, VipKeys
from mcluster.store.members import server_time_ms

log = logging.getLogger("mcluster.duravip")

ARP_REFRESH = 5.0  # seconds between refreshes of the published ARP entries


@dataclass(frozen=True, eq=False)
class DuraVipStatus(ReadsLikeADict):
    """What one node believes about its DuraVIPs: its addresses, those it owns (with their
    lease token) and the last command run per address."""

    node: str
    addresses: tuple[str, ...]
    owned: Mapping[str, int]
    commands: Mapping[str, str]  # address -> "up ok", "down failed", ...

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "addresses": list(self.addresses), "owned": dict(self.owned),
                "commands": dict(self.commands)}  # fmt: skip


class DuraVipAgent:
    """Owns this node's share of the DuraVIPs; ``owned`` is what it believes it owns.

    A ``Service`` of the node (``agent/service.py``), on every node, DuraVIPs or none (it
    publishes the node's record and ARP entries for ``cluster arp show``): its loop starts
    once the node has joined; it gives everything up first thing when the node stops, and
    for re-election on ``cluster reset`` (``on_reset``) until the new epoch (``rejoined``).
    """

    name = "duravip"

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.cfg: DuraVipConfig = duravip_config(ctx.config())
        self.vk = VipKeys(ctx.keys)
        self.plumber = Plumber(self.cfg, ctx.node)
        self.owned: dict[str, Owner] = {}
        self.deadline: dict[str, float] = {}
        self.interval = ctx.heartbeat_interval / 4
        self.ttl_ms = int(ctx.lease_ttl * 1000)
        self.margin = min(ctx.heartbeat_interval / 2, ctx.lease_ttl / 4)
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._unowned_since: dict[str, float] = {}
        self._asserted: set[tuple[str, str]] = set()
        self._published = ""
        self._announced: str | None = None
        self._debug: str | None = None
        self._renewed = 0.0
        self._arp_at = 0.0
        self._arp_owned: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._resetting = False

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing before the join: the loop needs the member's private name."""

    async def after_join(self) -> None:
        self.ctx.spawn(self.run(), self.name)

    async def stop(self) -> None:
        """Nothing left: ``before_stop`` gave everything up, the loop is cancelled."""

    def on_rejoin(self) -> None:
        """Nothing: a lost lease or lost data does not give up the addresses (their own
        leases say who owns them); only ``cluster reset`` does (``on_reset``)."""

    async def on_reset(self, why: str) -> None:
        await self.leave(why)

    async def run(self) -> None:
        """The loop (a task of the node); unplumbs every address first, as Momentum does."""
        me = self._task = asyncio.current_task()
        assert me is not None
        for address in self.cfg.addresses:
            self._spawn(address, self.plumber.run("down", address, quiet=True))
        watchdog = asyncio.create_task(self._watchdog())
        try:
            while not self._stopping:
                if me.cancelling():  # a cancel swallowed by a timeout (Python 3.11) or a client
                    raise asyncio.CancelledError
                try:
                    async with asyncio.timeout(max(self.ctx.heartbeat_interval, 1.0)):
                        await self.tick()
                except (TimeoutError, *RETRY_ERRORS) as exc:
                    log.debug("DuraVIP tick interrupted: %r", exc)
                except Exception:  # never let the node stop managing its addresses
                    log.exception("DuraVIP tick failed; trying again")
                await asyncio.sleep(self.interval)
        finally:
            watchdog.cancel()

    async def before_stop(self) -> None:
        """Unplumb and release every owned address so others take them over at once."""
        self._stopping = True
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for address, owner in list(self.owned.items()):
            self._drop(address, "this node is stopping")
            await self.plumber.run("down", address)
            with contextlib.suppress(*RETRY_ERRORS):
                await store.release(self.ctx.scripts(), self.vk, address, owner, "", 0)
        for busy in list(self._busy.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await busy
        if self._published:  # it talked to Redis: take its ARP entries away
            with contextlib.suppress(*RETRY_ERRORS):
                await self.ctx.client.hdel(self.vk.arp, self.ctx.node)

    async def leave(self, why: str) -> list[str]:
        """``cluster reset``: stop being a candidate (the record goes), unplumb and release
        every owned address with no handoff, so the others elect new owners at once; the
        node takes part again after ``rejoined`` (its new epoch). Returns what it gave up."""
        self._resetting = True
        with contextlib.suppress(*RETRY_ERRORS):
            await self.ctx.client.hdel(self.vk.nodes, self.ctx.node)
        released = sorted(self.owned)
        for address, owner in list(self.owned.items()):
            self._give_up(address, owner, why)
        for busy in list(self._busy.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await busy
        self._asserted.clear()  # the preferred node asks for its own again after the reset
        self._published = ""
        if released:
            log.warning("DuraVIP: gave up %s for re-election (%s)", ", ".join(released), why)
        return released

    def rejoined(self) -> None:
        """After ``leave``: publish again (as the new epoch) and take part in elections."""
        if self._resetting:
            self._resetting = False
            log.info("DuraVIP: a candidate again after the reset")

    def _spawn(self, address: str, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work, name=f"duravip:{address}")
        self._busy[address] = task
        task.add_done_callback(lambda t: self._done(address, t))

    def _done(self, address: str, task: asyncio.Task[None]) -> None:
        if self._busy.get(address) is task:
            del self._busy[address]
        if not task.cancelled() and task.exception() is not None:
            log.error("DuraVIP %s: %r", address, task.exception())

    # -- belief ---------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Drop the belief in an address once its local lease deadline has passed."""
        while True:
            await asyncio.sleep(min(0.05, self.interval))
            now = time.monotonic()
            for address in [a for a, d in self.deadline.items() if d <= now]:
                owner = self.owned.get(address)
                if owner is not None:
                    self._give_up(address, owner, "its lease could not be renewed in time")

    def _drop(self, address: str, why: str) -> None:
        owner = self.owned.pop(address, None)
        self.deadline.pop(address, None)
        if owner is not None:
            log.warning("DuraVIP %s: giving it up (token %d): %s", address, owner.token, why)

    def _give_up(self, address: str, owner: Owner, why: str, to: str | None = None) -> None:
        """Stop believing now; unplumb; then release the lease (to ``to`` if given)."""
        self._drop(address, why)

        async def work() -> None:
            await self.plumber.run("down", address)
            reserve = 2 * self.ttl_ms + int(self.cfg.timeout * 1000)
            released = await store.release(
                self.ctx.scripts(), self.vk, address, owner, to or "", reserve
            )
            if released and to:
                log.info("DuraVIP %s: handed to %s", address, to)

        self._spawn(address, work())

    # -- one round --------------------------------------------------------------------------

    async def tick(self) -> None:
        member = self.ctx.member()
        if member is None or self._resetting:
            return
        if self._published != member.private_name:
            await self.publish()
        snap = await store.snapshot(self.ctx.client, self.vk)
        await self._control(snap)
        if time.monotonic() - self._renewed >= self.ctx.heartbeat_interval:
            self._renewed = time.monotonic()
            await self._renew_all()
        for state in states(snap):
            if state.address in self.cfg.addresses and not self._stopping:
                await self._decide(state, snap, member.private_name)
        await self._refresh_arp(snap.now_ms)

    async def publish(self) -> None:
        """Publish this node's DuraVIP config (``config_since`` kept for what is unchanged)."""
        member = self.ctx.member()
        if member is None:
            return
        client = self.ctx.client
        previous = await store.read_record(client, self.vk, self.ctx.node) or store.VipRecord()
        now = await server_time_ms(client)
        addresses = {a: vip_record(v) for a, v in self.cfg.addresses.items()}
        old, old_since = previous.addresses, previous.config_since
        since = {a: old_since.get(a, now) if old.get(a) == r else now for a, r in addresses.items()}
        record = store.VipRecord(
            private_name=member.private_name,
            addresses=addresses,
            config_since=since,
            interface=self.cfg.interface,
            lease_ttl_ms=self.ttl_ms,
            command_timeout_ms=int(self.cfg.timeout * 1000),
        )
        await store.publish_record(client, self.vk, self.ctx.node, record)
        self._published = member.private_name
        log.debug("DuraVIP: published %d addresses as %s", len(addresses), member.private_name)

    async def _control(self, snap: Snapshot) -> None:
        """Console requests: ``duravip debug on|off`` and ``duravip announce view``."""
        name = self.ctx.node
        debug = snap.control.get(f"debug:{name}", snap.control.get("debug:*", "0"))
        if debug != self._debug:
            log.setLevel(logging.DEBUG if debug == "1" else logging.NOTSET)
            if self._debug is not None:
                log.info("DuraVIP debugging %s", "on" if debug == "1" else "off")
            self._debug = debug
        announce = snap.control.get(f"announce:{name}", "0")
        if self._announced is None:
            self._announced = announce
        elif announce != self._announced:
            self._asserted.clear()  # a new view: the preferred node asks for its own again
            await self.publish()
            await self.ctx.client.hset(self.vk.control, f"ack:{name}", announce)
            self._announced = announce
            log.info("DuraVIP: announced this node's view")

    async def _renew_all(self) -> None:
        for address, owner in list(self.owned.items()):
            sent = time.monotonic()
            held, handoff = await store.renew(
                self.ctx.scripts(), self.vk, address, owner, self.ttl_ms
            )
            if self.owned.get(address) is not owner:
                continue  # dropped meanwhile (the watchdog): never re-adopt
            if not held:
                self._drop(address, "its lease is no longer this node's (a newer token holds it)")
                self._spawn(address, self.plumber.run("down", address))
            elif handoff and handoff != self.ctx.node:
                self._give_up(address, owner, f"handing it to {handoff}", handoff)
            else:
                self.deadline[address] = sent + self.ctx.lease_ttl - self.margin

    async def _decide(self, state: VipState, snap: Snapshot, private: str) -> None:
        address, me = state.address, self.ctx.node
        owner = self.owned.get(address)
        if owner is not None:
            if state.broken:
                self._give_up(address, owner, "BROKEN (a binding name is on two addresses)")
            return
        if address in self._busy:
            return
        current = state.owner
        if current is None:
            handoff = snap.handoff.get(address)
            since = self._unowned_since.setdefault(address, time.monotonic())
            if state.broken or me not in state.candidates:
                return
            dead = ""
            if handoff is not None and handoff[0] not in snap.records:
                dead, handoff = handoff[0], None  # handed to a node that died meanwhile
            if handoff is not None and handoff[0] != me:
                return
            waited = time.monotonic() - since > self.ctx.lease_ttl
            if handoff is not None or elected(state) == me or waited:
                await self._take(address, private, dead)
            return
        self._unowned_since.pop(address, None)
        if (
            state.preferred == me
            and current.node != me
            and (address, private) not in self._asserted
            and address not in snap.handoff
        ):
            self._asserted.add((address, private))
            reserve = 2 * self.ttl_ms + int(self.cfg.timeout * 1000)
            ok, why = await store.move(
                self.ctx.scripts(), self.vk, address, current.node, me, private, reserve
            )
            log.info("DuraVIP %s: preferred node asks it back from %s: %s",
                     address, current.node, "ok" if ok else why)  # fmt: skip

    async def _take(self, address: str, private: str, dead_reservation: str) -> None:
        if self._resetting:  # a tick that began before the reset
            return
        sent = time.monotonic()
        token, why = await store.claim(
            self.ctx.scripts(), self.vk, address, self.ctx.node, private, self.ttl_ms,
            dead_reservation,
        )  # fmt: skip
        if not token:
            log.debug("DuraVIP %s: claim refused: %s", address, why)
            return
        owner = Owner(self.ctx.node, private, token)
        self.owned[address] = owner
        self.deadline[address] = sent + self.ctx.lease_ttl - self.margin
        self._unowned_since.pop(address, None)
        self._asserted.add((address, private))
        log.info("DuraVIP %s: taken (token %d)", address, token)
        self._spawn(address, self.plumber.run("up", address))

    async def _refresh_arp(self, now_ms: int) -> None:
        """Publish this node's cluster addresses and owned DuraVIPs with their MACs."""
        owned = sorted(self.owned)
        if owned == self._arp_owned and time.monotonic() - self._arp_at < ARP_REFRESH:
            return
        entries = arp.cluster_entries(self.ctx.address)
        vip_mac = arp.mac_of(self.cfg.interface)
        entries += [(address, vip_mac) for address in owned]
        self._arp_owned = owned
        await store.publish_arp(self.ctx.client, self.vk, self.ctx.node, entries, now_ms)
        self._arp_at = time.monotonic()

    def status(self) -> DuraVipStatus:
        """``GET /v1/duravip``: what this node believes it owns, and its last commands."""
        return DuraVipStatus(
            self.ctx.node,
            tuple(sorted(self.cfg.addresses)),
            {a: o.token for a, o in sorted(self.owned.items())},
            dict(sorted(self.plumber.last.items())),
        )
