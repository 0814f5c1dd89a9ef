"""The read-only console (issue 18): the ACL line docs/redis.md and docs/security.md give,
applied on a real redis-server: ``console`` and ``--watch`` show everything, and each
command that writes fails with one line naming the permission Redis refused."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from mcluster.config import load_config
from mcluster.duravip import store
from mcluster.duravip.store import VipKeys
from mcluster.objects.policy import FAMILY as QUOTAS
from mcluster.objects.policy import policy_config
from mcluster.quotas import usage
from mcluster.security.readonly import READ_ONLY_ACL, missing_permission
from mcluster.store.jobs import Job
from tests.agents import Farm, until

MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")  # the farm lives in the module's loop
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "ro-Secret-7"


def documented(doc: str) -> list[str]:
    """The read-only user's ACL line in ``doc`` (exactly one), as tokens."""
    lines = [
        line.strip()
        for line in (ROOT / doc).read_text().splitlines()
        if line.strip().startswith("user mcluster-console on ")
    ]
    assert len(lines) == 1, f"{doc} should hold one 'user mcluster-console on' line: {lines}"
    return lines[0].split()


def test_the_docs_give_the_line_the_code_knows() -> None:
    assert documented("docs/redis.md") == documented("docs/security.md") == READ_ONLY_ACL.split()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def farm(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Farm]:
    """Two agents with a DuraVIP and a policy quota; the read-only user on their Redis."""
    tmp = tmp_path_factory.mktemp("ro")
    script = tmp / "vip.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    farm = Farm(
        tmp,
        heartbeat=1.0,  # slow leases: no owner change under load while the test runs
        lease_ttl=5.0,
        extra_cluster=f'  duravip_command = "{script} {{action}} {{address}} {{interface}}"\n'
        '  duravip_interface = "vip0"\n',
        extra='Binding "b0" { Bind_Address = "10.80.116.50"  Enable_Duravip = true }\n'
        'Policy { Quota "per_user" { key = "sasl_username"  limit = "3/3600" } }\n',
    )
    try:
        await farm.start("n1", "n2", timeout=60)
        ns = farm.namespace
        rules = [
            r.replace("~mc:", f"~{ns}:").replace("&mc:", f"&{ns}:") for r in READ_ONLY_ACL.split()
        ]
        rules = [f">{PASSWORD}" if r.startswith(">") else r for r in rules]
        await farm.client.execute_command("ACL", "SETUSER", rules[1], "reset", *rules[2:])
        quotas = policy_config(load_config(farm.config_path)).quotas
        await usage.publish(farm.client, farm.keys.object(QUOTAS), quotas)
        vk = VipKeys(farm.keys)

        async def owned() -> bool:
            snap = await store.snapshot(farm.client, vk)
            return all(o is not None for o in snap.owners.values()) and bool(snap.owners)

        await until(owned, 30, what="the DuraVIP owned")
        yield farm
    finally:
        await farm.close()


def console(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    url = f"redis://mcluster-console:{PASSWORD}@127.0.0.1:{farm.redis.port}/0"
    env = {**os.environ}
    env.pop("MCLUSTER_REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "mcluster", "console", "--redis", url, "--namespace",
         farm.namespace, "--timeout", "2", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


@MODULE_LOOP
async def test_console_and_watch_show_everything(farm: Farm) -> None:
    await farm.post("n1", farm.events("n1", 20))
    await farm.flush("n1")
    for command in ("cluster shared list", "cluster shared show inbound_cidr",
                    "cluster membership", "cluster jobs", "cluster duravip show",
                    "policy show", "policy show per_user alice"):  # fmt: skip
        done = await asyncio.to_thread(console, farm, "-c", command)
        assert done.returncode == 0 and done.stderr == "", (command, done)
    shown = await asyncio.to_thread(console, farm, "-c", "cluster shared show inbound_cidr")
    assert "10.0.0.0/8" in shown.stdout or "/" in shown.stdout, shown.stdout
    okeys = farm.keys.object(QUOTAS)
    await farm.client.zadd(usage.hot_key(okeys, "per_user"), {"alice": 1})  # a panel row
    watch = await asyncio.to_thread(console, farm, "--watch", "--seconds", "1.5")
    assert watch.returncode == 0, watch
    assert "n1" in watch.stdout and "n2" in watch.stdout, watch.stdout[-2000:]
    assert "Redis error" not in watch.stdout and "permission" not in watch.stdout


@MODULE_LOOP
async def test_writes_fail_with_one_line_naming_the_permission(farm: Farm) -> None:
    job = await Job.start(farm.client, farm.keys, "test", "a job to abort", runner="test")
    snap = await store.snapshot(farm.client, VipKeys(farm.keys))
    owner = next(o.node for o in snap.owners.values() if o is not None)
    other = "n2" if owner == "n1" else "n1"
    for args, missing in [
        (("--node", "n1", "-c", "cluster reset"), "RPUSH"),
        (("-c", "cluster abort " + str(job.id)), "SADD"),
        (("-c", f"cluster duravip move {owner} {other}"), ""),
        (("-c", "policy reset per_user alice"), ""),
        (("-c", "broadcast config reload"), "INCRBY"),
        (("-c", "unicast n2 cluster membership"), "RPUSH"),
    ]:
        done = await asyncio.to_thread(console, farm, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, (args, done)
        assert "the console's Redis user may not run" in lines[0], lines
        assert "read-only user" in lines[0]
        assert missing in lines[0], lines
        assert re.search(r"may not run (\w+|the writes of lua_scripts/\w+\.lua) ", lines[0])
    assert not await farm.client.sismember(farm.keys.jobs_abort, str(job.id))
    snap = await store.snapshot(farm.client, VipKeys(farm.keys))
    assert next(o.node for o in snap.owners.values() if o is not None) == owner  # not moved


def test_missing_permission_reads_both_forms() -> None:
    from redis.exceptions import NoPermissionError, ResponseError

    assert (
        missing_permission(
            NoPermissionError("this user has no permissions to run the 'xadd' command")
        )
        == "XADD"
    )
    script = ResponseError(
        "The user executing the script can't run this command or subcommand script: "
        + "0" * 40
        + ", on @user_script:1."
    )
    assert missing_permission(script) == "a write inside a script"
    assert missing_permission(ResponseError("WRONGTYPE Operation")) is None
