"""Shaping across agent processes whose clocks disagree by hours: a reply reported to n1
suspends the destination on n2 and n3 within 1 s; kill -9 of n1 neither lifts nor extends
it; it ends on time; every node counts the same warm-up day (judged by Redis TIME)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.agents import Farm, until

SHAPING = """
Shaping "yahoo_ts" { domain = "yahoo.test"  match = "/\\[TS0[1-4]\\]/"  action = "suspend"
                     duration = 4 }
Warmup "new_ip" { binding = "b1"  schedule = ("1:1000/86400" "2:2000/86400") }
"""
TS03 = "4.7.0 [TS03] Messages from 192.0.2.1 temporarily deferred"
#: sitecustomize for a skewed agent: its time.time() is off by $SKEW_SECONDS.
SKEW = """
import os, time
_skew = float(os.environ.get("SKEW_SECONDS", "0"))
if _skew:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + _skew
    time.time_ns = lambda: _time_ns() + int(_skew * 1e9)
"""


async def post(farm: Farm, name: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with farm.session.post(farm.agents[name].base + path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        got: dict[str, Any] = await resp.json()
        return got


async def get(farm: Farm, name: str, path: str) -> dict[str, Any]:
    async with farm.session.get(farm.agents[name].base + path) as resp:
        assert resp.status == 200, await resp.text()
        got: dict[str, Any] = await resp.json()
        return got


async def redis_ms(farm: Farm) -> int:
    seconds, micros = await farm.client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_suspension_and_warmup_across_processes_with_skewed_clocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "skew"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SKEW)
    farm = Farm(
        tmp_path,
        heartbeat=0.2,
        lease_ttl=0.6,
        extra_cluster='  Replicate "OBTM" {}\n  shaping_deadline_ms = 2000\n',
        extra=SHAPING,
    )
    try:
        await farm.start("n1")
        monkeypatch.setenv("PYTHONPATH", f"{site}")
        for name, skew in (("n2", 10 * 3600), ("n3", -10 * 3600)):  # 20 hours apart
            monkeypatch.setenv("SKEW_SECONDS", str(skew))
            farm.spawn(name)
        monkeypatch.delenv("SKEW_SECONDS")
        await asyncio.gather(farm.wait_healthy("n2"), farm.wait_healthy("n3"))
        message = {"binding": "b1", "domain": "yahoo.test"}
        assert (await post(farm, "n2", "/v1/outbound/message", message))["allowed"]

        # the warm-up began with that message, by Redis TIME: day 1 everywhere
        days = [(await get(farm, n, "/v1/shaping"))["warmups"][0]["day"] for n in farm.agents]
        assert days == [1, 1, 1]

        report = {"binding": "b1", "domain": "yahoo.test", "host": "mx.yahoo.test",
                  "code": 421, "text": TS03}  # fmt: skip
        fired = await post(farm, "n1", "/v1/outbound/outcome", report)
        [rule] = fired["rules"]
        assert (rule["rule"], rule["status"]) == ("yahoo_ts", "fired")
        expires = rule["expires_ms"]

        async def refused(name: str) -> bool:
            left = expires - await redis_ms(farm)
            got = await post(farm, name, "/v1/outbound/message", message)
            if got["allowed"]:
                return False
            assert "yahoo_ts" in got["reason"] and 0 < got["retry_after_ms"] <= left, got
            return True

        await asyncio.gather(
            until(lambda: refused("n2"), 1.0, what="suspended on n2"),
            until(lambda: refused("n3"), 1.0, what="suspended on n3"),
        )
        farm.kill("n1", signal.SIGKILL)  # the reporter dies
        assert await refused("n2")
        shown = (await get(farm, "n3", "/v1/shaping"))["actions"]
        assert [(a["rule"], a["destination"], a["expires_ms"]) for a in shown] == [
            ("yahoo_ts", "domain:yahoo.test", expires)
        ]

        async def lifted() -> bool:
            got = await post(farm, "n3", "/v1/outbound/message", message)
            return bool(got["allowed"]) and not got["degraded"]

        await until(lifted, 6.0, what="the suspension ends", pids=farm.pids())
        assert await redis_ms(farm) >= expires, "lifted before its end"

        # 1.5 days after the warm-up began (moved in Redis): day 2 on both skewed nodes
        key = f"{farm.namespace}:{{shaping}}:warmup:new_ip"
        start = int(await farm.client.get(key) or 0)
        await farm.client.set(key, start - 36 * 3600 * 1000)
        for name in ("n2", "n3"):
            [warm] = (await get(farm, name, "/v1/shaping"))["warmups"]
            assert (warm["day"], warm["rate"]) == (2, "2000/86400"), name
    except BaseException:
        print(farm.logs())
        raise
    finally:
        await farm.close()
