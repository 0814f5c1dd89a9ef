"""Console commands of DuraVIP and ARP: ``cluster duravip show [tables] | move FROM TO |
announce view | debug on|off`` and ``cluster arp show``.

The console is not a node: it reads the DuraVIP state from Redis and leaves requests
there (a handoff, an announce counter, a debug flag) that the nodes act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any
from xml.etree import ElementTree as ET

from rich.console import RenderableType
from rich.text import Text

from mcluster.console.commands.base import (
    CommandError,
    CommandSpec,
    ConsoleContext,
    Result,
    UsageError,
    command,
    no_args,
)
from mcluster.console.render import Message
from mcluster.duravip import store
from mcluster.duravip.state import VipState, states
from mcluster.duravip.store import Snapshot, VipKeys
from mcluster.store import jobs
from mcluster.store.scripts import Scripts

MODE = "multivip"  # Momentum's word for an address served by one node of several
WAIT_POLL = 0.05
ANNOUNCE_WAIT = 5.0


def _seconds(now_ms: int, since_ms: int | None) -> str:
    return "?" if since_ms is None else str(max(0, now_ms - since_ms) // 1000)


def show_text(snap: Snapshot, found: list[VipState]) -> RenderableType:
    """Momentum's ``cluster duravip show`` shape, one block per address."""
    lines = ["DuraVIP State:"]
    if not found:
        lines.append("(no DuraVIP address on any live node)")
    for state in found:
        head = "/".join([state.address, *state.bindings])
        lines.append(f"{head}: ({','.join(state.states)}) {MODE}")
        lines.append(f"\t[view stable for {_seconds(snap.now_ms, state.view_since_ms)} seconds]")
        config = _seconds(snap.now_ms, state.config_since_ms)
        lines.append(f"\t[configuration stable for {config} seconds]")
        owner = state.owner.node if state.owner else None
        for node in state.candidates:
            lines.append(f"{' *  ' if node == owner else '    '}\t{node} {MODE}")
    return Text("\n".join(lines))


def tables_xml(snap: Snapshot, found: list[VipState]) -> str:
    """The state tables as XML (``cluster duravip show tables``)."""
    root = ET.Element("duravip", now_ms=str(snap.now_ms))
    for state in found:
        attrs = {"ip": state.address, "state": ",".join(state.states)}
        if state.owner is not None:
            attrs |= {"owner": state.owner.node, "token": str(state.owner.token)}
        if state.view_since_ms is not None:
            attrs["view_since_ms"] = str(state.view_since_ms)
        if state.config_since_ms is not None:
            attrs["config_since_ms"] = str(state.config_since_ms)
        element = ET.SubElement(root, "address", attrs)
        for binding in state.bindings:
            ET.SubElement(element, "binding", name=binding)
        for node in state.candidates:
            vip = snap.records[node].addresses[state.address]
            cand = {"node": node, "services": " ".join(vip.services)}
            if vip.preferences:
                cand["preference"] = " ".join(vip.preferences)
            if state.owner is not None and state.owner.node == node:
                cand["owner"] = "true"
            ET.SubElement(element, "candidate", cand)
        handoff = snap.handoff.get(state.address)
        if handoff is not None:
            ET.SubElement(element, "handoff", to=handoff[0], deadline_ms=str(handoff[1]))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


async def _snapshot(ctx: ConsoleContext) -> tuple[Snapshot, list[VipState]]:
    snap = await store.snapshot(ctx.client, VipKeys(ctx.keys))
    return snap, states(snap)


@command("duravip show", "[tables]", "Show DuraVIP bindings (or state tables).", order=40)
async def duravip_show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    if [w.casefold() for w in rest] == ["tables"]:
        snap, found = await _snapshot(ctx)
        xml = tables_xml(snap, found)
        return Result(Text(xml), {"xml": xml})
    if rest:
        raise UsageError(f"unexpected {' '.join(rest)!r}; usage: {spec.usage}")
    snap, found = await _snapshot(ctx)
    return Result(show_text(snap, found), [state.to_json() for state in found])


def _reserve_ms(snap: Snapshot, node: str) -> int:
    """How long a handoff holds: two lease TTLs and a command timeout of the target."""
    record = snap.records[node]
    return 2 * record.lease_ttl_ms + record.command_timeout_ms


@command("duravip move", "FROM TO", "Move FROM's DuraVIP addresses to TO.", order=50)
async def duravip_move(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    """Hand every address FROM owns to TO, one address at a time, as a ``vip-move`` job.

    Progress is the addresses handled. ``cluster abort ID`` stops the job before the
    next address: the address in flight lands on TO (FROM already unplumbed and released
    it to TO), the rest stay with FROM. No address is ever half-moved: each handoff is
    one fenced transition (release to TO, claim by TO with a newer token)."""
    if len(rest) != 2:
        raise UsageError(f"{spec.name} needs two node names; usage: {spec.usage}")
    src, dst = rest
    snap, found = await _snapshot(ctx)
    if dst not in snap.records:
        live = ", ".join(sorted(snap.records)) or "none"
        raise CommandError(
            f"cannot move to {dst}: {dst} is not a live cluster member (live: {live})"
        )
    owned = [s for s in found if s.owner is not None and s.owner.node == src]
    if not owned:
        raise CommandError(f"{src} owns no DuraVIP address; nothing to move")
    if src == dst:
        raise CommandError(f"{src} already owns {', '.join(s.address for s in owned)}")
    refused: dict[str, str] = {}
    for state in owned:
        if dst not in state.candidates:
            refused[state.address] = f"{dst} is not a candidate (its config does not have it)"
        elif state.broken:
            refused[state.address] = "the address is BROKEN (unmanaged)"
    todo = [s.address for s in owned if s.address not in refused]
    if not todo:
        raise CommandError(f"cannot move from {src} to {dst}: {_reasons(refused)}")
    reserve = _reserve_ms(snap, dst)
    job = await jobs.Job.start(
        ctx.client, ctx.keys, "vip-move", f"{src} -> {dst}: {', '.join(todo)}",
        runner=jobs.console_runner(ctx.node), total=len(todo),
        deadline_ms=snap.now_ms + len(todo) * reserve,
    )  # fmt: skip
    private = snap.records[dst].private_name
    moved: list[str] = []
    pending: list[str] = []
    with contextlib.suppress(jobs.JobAborted):  # recorded as aborted; report what was done
        async with job:
            for done, address in enumerate(todo):
                job.record.detail = f"{len(moved)} moved to {dst}, the rest kept by {src}"
                await job.step(done, force=True)  # an abort leaves the rest with FROM
                ok, why = await store.move(
                    Scripts(ctx.client), VipKeys(ctx.keys), address, src, dst, private, reserve
                )
                if not ok:
                    refused[address] = _MOVE_REFUSED.get(why, f"now {why}").format(src=src, dst=dst)
                elif await _wait_owned(ctx, [address], dst, reserve / 1000):
                    pending.append(address)
                else:
                    moved.append(address)
            job.record.done = len(todo)
            job.record.detail = (
                f"{len(moved)} moved, {len(pending)} pending, {len(refused)} refused"
            )
    kept = [a for a in todo if a not in moved + pending and a not in refused]
    if not kept and not moved and not pending:
        raise CommandError(f"cannot move from {src} to {dst}: {_reasons(refused)}")
    lines = [f"{a}: moved from {src} to {dst}" for a in moved]
    lines += [f"{a}: asked, not yet owned by {dst}" for a in pending]
    lines += [f"{a}: kept by {src} (the move was aborted)" for a in kept]
    lines += [f"{a}: refused: {why}" for a, why in refused.items()]
    data = {"from": src, "to": dst, "moved": moved, "pending": pending, "refused": refused,
            "kept": kept, "job": job.id}  # fmt: skip
    return Result(Text("\n".join(lines)), data)


_MOVE_REFUSED = {
    "target": "{dst} is not a live cluster member",
    "unowned": "{src} no longer owns it",
}


def _reasons(refused: dict[str, str]) -> str:
    return "; ".join(f"{a}: {why}" for a, why in refused.items())


async def _wait_owned(
    ctx: ConsoleContext, addresses: list[str], node: str, timeout: float
) -> list[str]:
    """The addresses ``node`` does not own yet after waiting up to ``timeout`` seconds."""
    vk = VipKeys(ctx.keys)
    deadline = time.monotonic() + timeout
    while True:
        leases = await ctx.client.mget([vk.lease(a) for a in addresses])
        pending = [
            a for a, raw in zip(addresses, leases, strict=True)
            if (o := store.Owner.parse(raw)) is None or o.node != node
        ]  # fmt: skip
        if not pending or time.monotonic() >= deadline:
            return pending
        await asyncio.sleep(WAIT_POLL)


def _node(ctx: ConsoleContext, spec: CommandSpec) -> str:
    if ctx.node is None:
        raise CommandError(f"{spec.name} needs --node NAME (the node whose view to announce)")
    return ctx.node


@command("duravip announce view", "", "Announce the local DuraVIP view.", order=60)
async def duravip_announce(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    no_args(spec, rest)
    node = _node(ctx, spec)
    vk = VipKeys(ctx.keys)
    snap = await store.snapshot(ctx.client, vk)
    if node not in snap.records:
        raise CommandError(f"{node} is not a live cluster member; nothing to announce")
    count = int(await ctx.client.hincrby(vk.control, f"announce:{node}", 1))
    deadline = time.monotonic() + ANNOUNCE_WAIT
    while time.monotonic() < deadline:
        ack = await ctx.client.hget(vk.control, f"ack:{node}")
        if ack is not None and int(ack) >= count:
            return Result(Message(f"announced the DuraVIP view of {node}"), {"announced": node})
        await asyncio.sleep(WAIT_POLL)
    raise CommandError(f"{node} did not announce its view within {ANNOUNCE_WAIT:g} s")


@command("duravip debug", "on|off", "Turn DuraVIP debugging on or off.", order=70)
async def duravip_debug(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    words = [w.casefold() for w in rest]
    if words not in (["on"], ["off"]):
        raise UsageError(f"{spec.name} needs 'on' or 'off'; usage: {spec.usage}")
    target = ctx.node or "*"
    await ctx.client.hset(
        VipKeys(ctx.keys).control, f"debug:{target}", "1" if words == ["on"] else "0"
    )
    who = "every node" if target == "*" else target
    return Result(
        Message(f"DuraVIP debugging {words[0]} for {who}"),
        {"debug": words[0] == "on", "node": target},
    )


def arp_rows(snap: Snapshot, records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Live nodes' entries; a DuraVIP only from its current owner."""
    owners = {a: o.node for a, o in snap.owners.items() if o is not None}
    rows = []
    for node, record in sorted(records.items()):
        if node not in snap.records:
            continue
        age = max(0, snap.now_ms - int(record.get("refreshed_ms", snap.now_ms))) // 1000
        for address, mac in record.get("entries", []):
            if address in owners and owners[address] != node:
                continue
            rows.append({"address": address, "mac": mac, "node": node, "age": age})
    return sorted(rows, key=lambda r: (r["age"], r["address"]))


@command("arp show", "", "Show the MAC addresses of the cluster.", order=30)
async def arp_show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    no_args(spec, rest)
    vk = VipKeys(ctx.keys)
    snap = await store.snapshot(ctx.client, vk)
    rows = arp_rows(snap, await store.read_arp(ctx.client, vk))
    lines = [f"{r['address']:<16} [{r['mac']}]  {r['age']}s" for r in rows]
    return Result(Text("\n".join(lines) or "(no addresses published)"), rows)
