"""DuraVIP with real agent processes: three nodes, four addresses, a recorder command.

Every address must be owned by exactly one live node (in Redis and in the nodes' own
belief, ``GET /v1/duravip``), move within lease TTL + 1 s when its owner is killed, go
back to its preferred node, move on request, and never be believed by two nodes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mcluster.duravip import store
from mcluster.duravip.store import VipKeys
from mcluster.store import jobs
from tests.agents import Farm, RedisProxy, until

ADDRESSES = ["10.80.116.50", "10.80.116.53", "10.80.116.54", "2001:db8::25"]
PREFERRED = {"10.80.116.53": "n2"}

RECORDER = """#!/bin/sh
echo "$(date +%s.%N) $MCLUSTER_NODE $*" >> {out}
"""


def bindings() -> str:
    out = []
    for i, address in enumerate(ADDRESSES):
        pref = f'Duravip_Preference = "{PREFERRED[address]}"' if address in PREFERRED else ""
        out.append(
            f'Binding "b{i}" {{ Bind_Address = "{address}"  Enable_Duravip = true  {pref} }}'
        )
    out.append('ESMTP_Listener { Listen "10.80.116.50:25" { Enable_Duravip = true } }')
    return "\n".join(out)


def recorder(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "commands.log"
    script = tmp_path / "vip.sh"
    script.write_text(RECORDER.format(out=out))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, out


def vip_farm(tmp_path: Path) -> Farm:
    """A farm (its own redis-server) whose nodes have the four DuraVIPs and the recorder."""
    script, _ = recorder(tmp_path)
    return Farm(
        tmp_path,
        heartbeat=0.4,
        lease_ttl=1.2,
        extra_cluster=f'  duravip_command = "{script} {{action}} {{address}} {{interface}}"\n'
        '  duravip_interface = "vip0"\n',
        extra=bindings(),
    )


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    farm = vip_farm(tmp_path)
    try:
        yield farm
    finally:
        await farm.close()


def commands(tmp_path: Path) -> list[tuple[float, str, str, str]]:
    """(time, node, action, address) of every command run, in order."""
    path = tmp_path / "commands.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        t, node, action, address, interface = line.split()
        assert interface == "vip0"
        out.append((float(t), node, action, address))
    return out


def last_commands(tmp_path: Path) -> dict[tuple[str, str], str]:
    return {(node, address): action for _, node, action, address in commands(tmp_path)}


async def beliefs(farm: Farm) -> dict[str, dict[str, int]]:
    """node -> address -> token, as each running agent believes (GET /v1/duravip)."""
    out = {}
    for name in farm.running():
        async with farm.session.get(farm.agents[name].base + "/v1/duravip") as resp:
            assert resp.status == 200
            out[name] = (await resp.json())["owned"]
    return out


async def owners(farm: Farm) -> dict[str, str | None]:
    snap = await store.snapshot(farm.client, VipKeys(farm.keys))
    return {a: (o.node if o else None) for a, o in snap.owners.items()}


async def settled(farm: Farm) -> bool:
    """Each address owned in Redis by one running node, which alone believes it owns it."""
    found = await owners(farm)
    if sorted(found) != sorted(ADDRESSES):
        return False
    held = await beliefs(farm)
    for address, node in found.items():
        believers = [n for n, owned in held.items() if address in owned]
        if node is None or believers != [node]:
            return False
    return True


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def console(farm: Farm, command: str, node: str | None = None, *extra: str) -> Ran:
    """``mcluster console --json -c COMMAND`` as a process (the test's loop keeps running:
    the proxy lives in it)."""
    args = ["-m", "mcluster", "console", "--redis", farm.redis.url,
            "--namespace", farm.namespace, "--json", "-c", command]  # fmt: skip
    if node is not None:
        args += ["--node", node]
    args += extra
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def test_three_nodes_four_addresses(farm: Farm, tmp_path: Path) -> None:
    await farm.start("n1", "n2", "n3")
    # The preferred node gets its address even when another node started first.
    await until(lambda: _owner_is(farm, "10.80.116.53", "n2"), 10, what="owned once, n2's by n2")
    found = await owners(farm)
    # Show: the exact JSON shape, the owner among the candidates.
    result = await console(farm, "cluster duravip show")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert [row["address"] for row in shown] == ADDRESSES
    for row in shown:
        assert set(row) == {"address", "bindings", "owner", "state", "candidates"}
        assert row["owner"] == found[row["address"]]
        assert row["candidates"] == ["n1", "n2", "n3"]
        assert row["state"] == ["owned", "safe"]
    assert shown[0]["bindings"] == ["10.80.116.50:25", "b0"]
    # Each node's last command for an address: "up" on its owner, "down" elsewhere
    # (every node unplumbs every address at startup).
    want = {
        (node, address): "up" if found[address] == node else "down"
        for node in ("n1", "n2", "n3")
        for address in ADDRESSES
    }
    await until(lambda: last_commands(tmp_path) == want, 5, what="commands run")

    # kill -9 the owner of the first address: its addresses move within lease TTL + 1 s.
    victim = str(found[ADDRESSES[0]])
    lost = [a for a, n in found.items() if n == victim]
    killed = farm.kill(victim)
    took = await until(
        lambda: settled(farm), farm.lease_ttl + 1, what=f"{victim}'s addresses re-elected"
    )
    assert took <= farm.lease_ttl + 1
    ttl = farm.lease_ttl
    print(f"re-elected {len(lost)} address(es) {took:.2f} s after kill -9 (lease TTL {ttl} s)")
    assert time.monotonic() - killed < farm.lease_ttl + 1.5
    moved = await owners(farm)
    assert all(moved[a] not in (None, victim) for a in lost)

    # The preferred node: once dead its address moves; restarted, it takes it back.
    if victim != "n2":
        farm.kill("n2")
        await until(lambda: settled(farm), farm.lease_ttl + 1, what="n2's addresses re-elected")
    assert (await owners(farm))["10.80.116.53"] != "n2"
    farm.agents.pop("n2")
    await farm.start("n2")
    await until(
        lambda: _owner_is(farm, "10.80.116.53", "n2"), farm.lease_ttl + 3, what="preferred back"
    )


async def _owner_is(farm: Farm, address: str, node: str) -> bool:
    return (await owners(farm)).get(address) == node and await settled(farm)


async def test_move_and_refusals(farm: Farm, tmp_path: Path) -> None:
    await farm.start("n1", "n2", "n3")
    await until(lambda: _owner_is(farm, "10.80.116.53", "n2"), 10, what="owned once, settled")
    found = await owners(farm)
    src = found["10.80.116.50"]
    dst = next(n for n in ("n1", "n2", "n3") if n != src)
    mine = sorted(a for a, n in found.items() if n == src)
    result = await console(farm, f"cluster duravip move {src} {dst}")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert sorted(body["moved"]) == mine
    after = await owners(farm)
    assert all(after[a] == dst for a in mine)
    await until(lambda: settled(farm), 5, what="settled after the move")
    # The old owner unplumbed before the new one plumbed.
    log = commands(tmp_path)
    for address in mine:
        down = max(t for t, n, a, x in log if (n, a, x) == (src, "down", address))
        up = max(t for t, n, a, x in log if (n, a, x) == (dst, "up", address))
        assert down < up
    # Refused: FROM owns nothing; TO is dead.
    result = await console(farm, f"cluster duravip move {src} {dst}")
    assert result.returncode == 1
    assert f"{src} owns no DuraVIP" in result.stderr
    other = next(n for n in ("n1", "n2", "n3") if n not in (src, dst))
    farm.kill(other)
    await until(lambda: _gone(farm, other), farm.lease_ttl + 1, what=f"{other} gone")
    await until(lambda: settled(farm), farm.lease_ttl + 1, what="re-elected")
    result = await console(farm, f"cluster duravip move {dst} {other}")
    assert result.returncode == 1
    assert f"{other} is not a live cluster member" in result.stderr


async def test_partitioned_owner_gives_up(tmp_path: Path) -> None:
    """An owner cut off from Redis stops believing before anyone else can claim; its
    renewals, held by the partition, arrive late under an old token and are refused."""
    farm = vip_farm(tmp_path)
    proxy = RedisProxy(farm.redis.port)
    await proxy.start()
    try:
        await farm.start("n1", "n2")
        await farm.start("n3", redis_url=proxy.url)
        await until(lambda: settled(farm), 10, what="every address owned once")
        found = await owners(farm)
        if "n3" not in found.values():
            await _move(farm, str(found[ADDRESSES[0]]), "n3")
        held = sorted(a for a, n in (await owners(farm)).items() if n == "n3")
        assert held, (await owners(farm), farm.logs())
        proxy.delay_command[b""] = 3 * farm.lease_ttl  # every request of n3 is held
        cut = time.time()
        samples: list[dict[str, dict[str, int]]] = []

        async def moved_off() -> bool:
            samples.append(await beliefs(farm))
            return await _moved_off(farm, held, "n3")

        await until(moved_off, farm.lease_ttl + 2, what="taken over from n3")
        proxy.delay_command.clear()
        await until(lambda: settled(farm), 8 * farm.lease_ttl, what="settled after healing")
        for sample in samples:  # never two believers of one address
            for address in ADDRESSES:
                assert sum(address in owned for owned in sample.values()) <= 1, sample

        def plumbed_elsewhere() -> bool:
            log = [entry for entry in commands(tmp_path) if entry[0] > cut]
            return all(any((a, x) == ("up", address) and n != "n3" for _, n, a, x in log)
                       for address in held)  # fmt: skip

        await until(plumbed_elsewhere, 5, what="taken over addresses plumbed")
        log = [entry for entry in commands(tmp_path) if entry[0] > cut]
        for address in held:
            n3_down = min(t for t, n, a, x in log if (n, a, x) == ("n3", "down", address))
            others_up = min(t for t, n, a, x in log if (a, x) == ("up", address) and n != "n3")
            assert n3_down < others_up, f"{address}: two nodes had it plumbed at once"
        assert "its lease could not be renewed in time" in farm.agents["n3"].log()
    finally:
        await farm.close()
        await proxy.stop()


async def _gone(farm: Farm, node: str) -> bool:
    return node not in await farm.membership()


async def _moved_off(farm: Farm, addresses: list[str], node: str) -> bool:
    found = await owners(farm)
    return all(found[a] not in (None, node) for a in addresses)


async def _move(farm: Farm, src: str, dst: str) -> Any:
    result = await console(farm, f"cluster duravip move {src} {dst}")
    assert result.returncode == 0, result.stderr
    await until(lambda: settled(farm), 5, what="settled after the move")
    return json.loads(result.stdout)


_ = signal


SLOW_RECORDER = """#!/bin/sh
if [ "$1" = down ] && [ -e {slow} ]; then sleep 1; fi
echo "$(date +%s.%N) $MCLUSTER_NODE $*" >> {out}
"""


async def _running_move(farm: Farm) -> jobs.JobRecord | None:
    for job in await jobs.list_jobs(farm.client, farm.keys):
        if job.kind == "vip-move" and job.state == "running" and job.done >= 1:
            return job
    return None


async def test_move_is_a_job_and_abort_stops_it_cleanly(farm: Farm, tmp_path: Path) -> None:
    """``duravip move`` runs as a ``vip-move`` job, one address at a time; aborted, the
    address in flight lands on TO and the rest stay with FROM: none is half-moved, and
    every moved address has a newer fencing token."""
    slow = tmp_path / "slow"
    script, out = recorder(tmp_path)
    script.write_text(SLOW_RECORDER.format(slow=slow, out=out))
    await farm.start("n1", "n2", "n3")
    await until(lambda: _owner_is(farm, "10.80.116.53", "n2"), 10, what="owned once, settled")
    for src in ("n2", "n3"):  # everything on n1 first (a manual move away sticks)
        if src in (await owners(farm)).values():
            await _move(farm, src, "n1")
    snap = await store.snapshot(farm.client, VipKeys(farm.keys))
    before = {a: o.token for a, o in snap.owners.items() if o is not None and o.node == "n1"}
    assert sorted(before) == sorted(ADDRESSES)
    slow.touch()  # every unplumbing now takes 1 s: the job is caught mid-way
    moving = asyncio.create_task(console(farm, "cluster duravip move n1 n3"))
    job = None
    while job is None:
        assert not moving.done(), moving.result()
        job = await _running_move(farm)
        await asyncio.sleep(0.02)
    assert job.total == len(ADDRESSES) and job.what.startswith("n1 -> n3: ")
    await jobs.request_abort(farm.client, farm.keys, job.id)
    result = await moving
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["job"] == job.id and not body["pending"] and not body["refused"]
    assert 1 <= len(body["moved"]) < len(ADDRESSES), body
    assert sorted(body["moved"] + body["kept"]) == sorted(ADDRESSES)
    record = await jobs.get(farm.client, farm.keys, job.id)
    assert record.state == "aborted" and record.detail.endswith("the rest kept by n1"), record
    await until(lambda: settled(farm), 5, what="settled after the aborted move")
    snap = await store.snapshot(farm.client, VipKeys(farm.keys))
    for address, owner in snap.owners.items():
        assert owner is not None
        if address in body["moved"]:
            assert owner.node == "n3" and owner.token > before[address]
        else:
            assert (owner.node, owner.token) == ("n1", before[address])
    listed = await console(farm, "cluster jobs")
    assert any(
        j["id"] == job.id and j["kind"] == "vip-move" for j in json.loads(listed.stdout)["jobs"]
    )


async def _tokens(farm: Farm) -> dict[str, tuple[str, int]]:
    snap = await store.snapshot(farm.client, VipKeys(farm.keys))
    return {a: (o.node, o.token) for a, o in snap.owners.items() if o is not None}


async def test_reset_renegotiates_ownership(farm: Farm, tmp_path: Path) -> None:
    """``cluster reset`` forces a new negotiation, as in Momentum: the node gives its
    addresses up (unplumbed, released), they are elected again under newer tokens, the
    preferred node takes its own back; the other nodes' addresses are left alone."""
    await farm.start("n1", "n2", "n3")
    await until(lambda: _owner_is(farm, "10.80.116.53", "n2"), 10, what="owned once, settled")
    if sorted(a for a, n in (await owners(farm)).items() if n == "n2") == ["10.80.116.53"]:
        other = next(a for a, n in (await owners(farm)).items() if n != "n2")
        await _move(farm, str((await owners(farm))[other]), "n2")  # n2 owns two, one preferred
    before = await _tokens(farm)
    given = sorted(a for a, (n, _) in before.items() if n == "n2")
    assert "10.80.116.53" in given and len(given) >= 2
    cut = time.time()
    result = await console(farm, "cluster reset", "n2", "--timeout", "30")  # slow when loaded
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"].startswith("reset: rejoined as #e")
    await until(lambda: _owner_is(farm, "10.80.116.53", "n2"), farm.lease_ttl + 3,
                what="the preferred node has its address back")  # fmt: skip
    after = await _tokens(farm)
    for address, (node, token) in before.items():
        if address in given:  # elected again: a newer token, whoever won
            assert after[address][1] > token, (address, before, after)
        else:  # untouched
            assert after[address] == (node, token), (address, before, after)
    # n2 unplumbed each address it gave up before it (or another node) plumbed it again.
    log = [entry for entry in commands(tmp_path) if entry[0] > cut]
    for address in given:
        down = min(t for t, n, a, x in log if (n, a, x) == ("n2", "down", address))
        assert all(t > down for t, _, a, x in log if (a, x) == ("up", address)), address
    assert "gave up" in farm.agents["n2"].log() and "for re-election" in farm.agents["n2"].log()
