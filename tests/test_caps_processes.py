"""Connection caps across agent processes: never over the cap; kill -9 frees the slots."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.agents import Farm, until

CAPS = 'Domain "hotmail.com" { cluster_max_outbound_connections = 10 }'


async def open_slot(farm: Farm, name: str) -> dict[str, Any]:
    url = f"{farm.agents[name].base}/v1/connections/open"
    async with farm.session.post(url, json={"binding": "b1", "domain": "hotmail.com"}) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body


async def close_slot(farm: Farm, name: str, slot: str) -> bool:
    url = f"{farm.agents[name].base}/v1/connections/close"
    async with farm.session.post(url, json={"slot": slot}) as r:
        return bool((await r.json())["closed"])


async def test_caps_race_and_kill(tmp_path: Path) -> None:
    farm = Farm(tmp_path, extra_cluster='  Replicate "outbound_binding_domains" {}\n', extra=CAPS)
    try:
        await farm.start("n1", "n2", "n3")
        names = ["n1", "n2", "n3"]
        # three nodes race to open 100 connections: never more than 10 held
        results = await asyncio.gather(*(open_slot(farm, names[i % 3]) for i in range(100)))
        held = [names[i % 3] for i, r in enumerate(results) if r["allowed"]]
        assert len(held) == 10
        assert all(r["reason"] and "cluster_max_outbound_connections" in r["reason"]
                   for r in results if not r["allowed"])  # fmt: skip
        # give every slot back, then n3 holds 4 and n1 the other 6
        for i, r in enumerate(results):
            if r["allowed"]:
                assert await close_slot(farm, names[i % 3], r["slot"]) is True
                assert await close_slot(farm, names[i % 3], r["slot"]) is False  # twice: no-op
        for name, n in (("n3", 4), ("n1", 6)):
            for _ in range(n):
                assert (await open_slot(farm, name))["allowed"]
        assert not (await open_slot(farm, "n2"))["allowed"]
        killed = time.monotonic()
        farm.kill("n3")

        async def four_free() -> bool:
            return await farm.count("outbound_slots", "max:b1::hotmail.com", via="n1") == 6

        await until(four_free, farm.lease_ttl + 1.0, what="the killed node's 4 slots are freed")
        took = time.monotonic() - killed
        opened = [await open_slot(farm, "n1" if i % 2 else "n2") for i in range(4)]
        assert all(o["allowed"] for o in opened)
        assert not (await open_slot(farm, "n1"))["allowed"]
        print(f"kill -9 -> 4 slots free again: {took:.2f} s (lease {farm.lease_ttl} s)")
    finally:
        await farm.close()


MX_CAPS = """
Host "mx1.example.net" { cluster_max_outbound_connections = 7 }
Provider "google" {
  mx_suffix = (".google.com")
  cluster_max_outbound_connections = 5
}
"""


async def test_host_and_provider_caps_across_agent_processes(tmp_path: Path) -> None:
    """100 concurrent opens over HTTP across 3 agents: the MX host's cap (7) and the
    provider's (5) hold exactly, each counting every binding and domain."""
    farm = Farm(tmp_path, extra_cluster='  Replicate "outbound_binding_domains" {}\n',
                extra=MX_CAPS)  # fmt: skip
    names = ["n1", "n2", "n3"]
    reports = [
        {"binding": "b1", "domain": "example.org", "host": "mx1.example.net"},
        {"binding": "b2", "domain": "example.com", "host": "MX1.example.net."},
        {"binding": "b1", "domain": "gmail.com", "host": "alt1.gmail-smtp-in.l.google.com"},
        {"binding": "b3", "domain": "customer.example", "host": "aspmx.l.google.com"},
    ]

    async def open_(i: int) -> dict[str, Any]:
        url = f"{farm.agents[names[i % 3]].base}/v1/connections/open"
        async with farm.session.post(url, json=reports[i % 4]) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body

    try:
        await farm.start(*names)
        results = await asyncio.gather(*(open_(i) for i in range(100)))
        to_host = [r for i, r in enumerate(results) if i % 4 < 2]
        to_google = [r for i, r in enumerate(results) if i % 4 >= 2]
        assert sum(r["allowed"] for r in to_host) == 7
        assert sum(r["allowed"] for r in to_google) == 5
        assert await farm.count("outbound_slots", "max:host:mx1.example.net") == 7
        assert await farm.count("outbound_slots", "max:provider:google") == 5
        refused = {r["reason"].split(":")[0] for r in results if not r["allowed"]}
        assert refused == {"cluster_max_outbound_connections (host)",
                           "cluster_max_outbound_connections (provider)"}  # fmt: skip
    finally:
        await farm.close()
