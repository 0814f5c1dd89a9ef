"""DuraVIP pieces without agent processes: config, the four scripts on real Redis (7 and
6.2), the states, the console's shapes, the command runner and ARP discovery."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from redis.asyncio import Redis

from mcluster.cli import main
from mcluster.config import ConfigError, parse_config
from mcluster.console.commands.duravip import arp_rows, show_text, tables_xml
from mcluster.duravip import arp, store
from mcluster.duravip.command import Plumber
from mcluster.duravip.config import DuraVipConfig, command_line, duravip_config
from mcluster.duravip.state import elected, states
from mcluster.duravip.store import Owner, Snapshot, VipAddress, VipKeys, VipRecord
from mcluster.store.keys import ClusterKeys
from mcluster.store.scripts import Scripts
from tests.redis_servers import RedisServer

CONF = """
Binding "hotmail-50" { Bind_Address = "10.80.116.50"  Enable_Duravip = true }
Binding_Group "g" {
  Binding "hotmail-51" { Bind_Address = "10.80.116.50"  Enable_Duravip = true
                         Duravip_Preference = "labrat-4" }
  Binding "plain" { Bind_Address = "10.80.116.99" }
}
ESMTP_Listener { Listen "[2001:db8::0025]:25" { Enable_Duravip = yes }
                 Listen ":26" { Enable_Duravip = true } }
cluster { duravip_interface = "bond0" }
"""


def test_config_reads_bindings_and_listeners() -> None:
    cfg = duravip_config(parse_config(CONF, "t.conf"))
    assert sorted(cfg.addresses) == ["10.80.116.50", "2001:db8::25"]
    vip = cfg.addresses["10.80.116.50"]
    assert vip.bindings == ["hotmail-50", "hotmail-51"]
    assert vip.preferences == ["labrat-4"]
    assert cfg.addresses["2001:db8::25"].bindings == ["[2001:db8::0025]:25"]
    assert cfg.interface == "bond0" and cfg.command is None
    assert command_line(cfg, "up", "10.80.116.50") == [
        ["ip", "addr", "add", "10.80.116.50/32", "dev", "bond0"],
        ["arping", "-U", "-c", "1", "-I", "bond0", "10.80.116.50"],
    ]
    assert command_line(cfg, "down", "2001:db8::25") == [
        ["ip", "addr", "del", "2001:db8::25/128", "dev", "bond0"]
    ]


def test_config_command_template() -> None:
    text = "cluster { duravip_command = \"/bin/vip --{action} '{address}' on={interface}\" }"
    cfg = duravip_config(parse_config(text, "t.conf"))
    assert command_line(cfg, "down", "10.0.0.1") == [["/bin/vip", "--down", "10.0.0.1", "on=eth0"]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('Binding "b" { Enable_Duravip = true }', 't.conf:1:1: Binding "b": Enable_Duravip needs'),
        (
            'Binding "b" { Bind_Address = "10.0.0.300"  Enable_Duravip = true }',
            "t.conf:1:15: Binding \"b\": DuraVIP address '10.0.0.300' is not an IP address",
        ),
        ('Binding "b" { Enable_Duravip = maybe }', "Enable_Duravip must be true or false"),
        (
            'Binding "b" { Bind_Address = "10.0.0.1" Enable_Duravip = 1\n'
            'Duravip_Preference = "a b" }',
            "Duravip_Preference in Binding \"b\": bad node name 'a b'",
        ),
        (
            'X { Binding "b" { Bind_Address = "10.0.0.1" Enable_Duravip = 1 } }\n'
            'Binding "b" { Bind_Address = "10.0.0.2" Enable_Duravip = 1 }',
            't.conf:2:1: Binding "b" is a DuraVIP on 10.0.0.2, but also on 10.0.0.1 at 1:5',
        ),
        ('L { Listen "mail:25" { Enable_Duravip = true } }', "needs an IP address, e.g."),
        ('cluster { duravip_command = "vip {action} {addr}" }', "unknown placeholder {addr}"),
        ('cluster { duravip_command = "vip \'{action}" }', "duravip_command: No closing quotation"),
        ("cluster { duravip_command_timeout = 0 }", "duravip_command_timeout must be a number > 0"),
    ],
)
def test_config_errors_name_the_place(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        duravip_config(parse_config(text, "t.conf"))
    assert message in str(info.value)


def test_config_check_reports_duravip_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.conf"
    path.write_text('Binding "b" {\n  Enable_Duravip = true\n}\n')
    assert main(["config", "check", str(path)]) == 1
    assert f'{path}:1:1: Binding "b": Enable_Duravip needs Bind_Address' in capsys.readouterr().err


# -- scripts on real Redis ---------------------------------------------------------------------


class Cluster:
    """Membership leases set by hand, and the DuraVIP scripts, on one Redis."""

    def __init__(self, client: Redis, namespace: str) -> None:
        self.client = client
        self.scripts = Scripts(client)
        self.vk = VipKeys(ClusterKeys(namespace))

    async def live(self, node: str, private: str, ttl_ms: int = 60_000) -> None:
        await self.client.set(self.vk.keys.lease(node), private, px=ttl_ms)

    async def claim(self, node: str, private: str, ttl_ms: int = 60_000, dead: str = "") -> Any:
        return await store.claim(self.scripts, self.vk, "10.0.0.1", node, private, ttl_ms, dead)


@pytest.fixture
async def vip(any_redis: RedisServer, namespace: str) -> Any:
    client = Redis.from_url(any_redis.url)
    yield Cluster(client, namespace)
    await client.aclose()


async def test_claim_is_exclusive_and_fenced(vip: Cluster) -> None:
    assert await vip.claim("a", "#e1-1#a") == (0, "member")  # not a live member
    await vip.live("a", "#e1-1#a")
    await vip.live("b", "#e2-1#b")
    token, why = await vip.claim("a", "#e1-1#a", ttl_ms=300)
    assert token > 0 and why == ""
    assert await vip.claim("b", "#e2-1#b") == (0, f"owned a #e1-1#a {token}")
    a = Owner("a", "#e1-1#a", token)
    assert await store.renew(vip.scripts, vip.vk, "10.0.0.1", a, 300) == (True, "")
    await asyncio.sleep(0.4)  # a's lease runs out; b takes the address with a newer token
    token_b, _ = await vip.claim("b", "#e2-1#b")
    assert token_b > token
    # a's renewal and release arrive late: refused, nothing changes.
    assert await store.renew(vip.scripts, vip.vk, "10.0.0.1", a, 300) == (False, "")
    assert not await store.release(vip.scripts, vip.vk, "10.0.0.1", a, "", 1000)
    assert Owner.parse(await vip.client.get(vip.vk.lease("10.0.0.1"))) == Owner(
        "b", "#e2-1#b", token_b
    )
    # An owner whose membership lease is gone (a newer epoch) cannot renew either.
    await vip.live("b", "#e3-1#b")
    b = Owner("b", "#e2-1#b", token_b)
    assert await store.renew(vip.scripts, vip.vk, "10.0.0.1", b, 60_000) == (False, "")


async def test_move_hands_over_through_a_reservation(vip: Cluster) -> None:
    for node, private in (("a", "#e1-1#a"), ("b", "#e2-1#b"), ("c", "#e3-1#c")):
        await vip.live(node, private)
    token, _ = await vip.claim("a", "#e1-1#a")
    a = Owner("a", "#e1-1#a", token)
    move = store.move
    assert await move(vip.scripts, vip.vk, "10.0.0.1", "b", "c", "#e3-1#c", 5000) == (
        False,
        "owner a",
    )
    assert await move(vip.scripts, vip.vk, "10.0.0.1", "a", "c", "#e9-1#c", 5000) == (
        False,
        "target",
    )
    assert await move(vip.scripts, vip.vk, "10.0.0.2", "a", "c", "#e3-1#c", 5000) == (
        False,
        "unowned",
    )
    assert await move(vip.scripts, vip.vk, "10.0.0.1", "a", "c", "#e3-1#c", 5000) == (True, "")
    # The owner learns it at its renewal, unplumbs, releases to c: only c may claim.
    assert await store.renew(vip.scripts, vip.vk, "10.0.0.1", a, 60_000) == (True, "c")
    assert await store.release(vip.scripts, vip.vk, "10.0.0.1", a, "c", 5000)
    assert await vip.claim("b", "#e2-1#b") == (0, "reserved c")
    token_c, _ = await vip.claim("c", "#e3-1#c")
    assert token_c > token
    assert await vip.client.hget(vip.vk.handoff, "10.0.0.1") is None
    since = await vip.client.hget(vip.vk.since, "10.0.0.1")
    assert since is not None and abs(int(since) - time.time() * 1000) < 5000


async def test_reservation_of_a_dead_node_can_be_ignored(vip: Cluster) -> None:
    await vip.live("b", "#e2-1#b")
    await vip.client.hset(vip.vk.handoff, "10.0.0.1", f"c {int(time.time() * 1000) + 60_000}")
    assert await vip.claim("b", "#e2-1#b") == (0, "reserved c")
    token, why = await vip.claim("b", "#e2-1#b", dead="c")
    assert token > 0 and why == ""
    # An expired reservation binds nobody.
    await vip.client.delete(vip.vk.lease("10.0.0.1"))
    await vip.client.hset(vip.vk.handoff, "10.0.0.1", "c 1")
    assert (await vip.claim("b", "#e2-1#b"))[0] > token


# -- states and the console's shapes -----------------------------------------------------------


def record(private: str, addresses: dict[str, tuple[list[str], list[str]]]) -> VipRecord:
    return VipRecord(
        private_name=private,
        addresses={a: VipAddress(tuple(s), tuple(p)) for a, (s, p) in addresses.items()},
        config_since={a: 1_000 for a in addresses},
        lease_ttl_ms=3000,
    )


def test_a_record_reads_back_as_stored_and_an_older_ones_gaps_get_defaults() -> None:
    published = record("#e1-1#n1", {"10.0.0.1": (["binding:b1"], ["n1"])})
    stored = json.dumps(published.to_json(), sort_keys=True)
    assert json.loads(stored)["addresses"] == {
        "10.0.0.1": {"services": ["binding:b1"], "preferences": ["n1"]}
    }
    assert VipRecord.parse(stored) == published
    older = VipRecord.parse('{"private_name": "#e1-1#n1", "addresses": {"10.0.0.1": {}}}')
    assert older.addresses["10.0.0.1"] == VipAddress((), ())
    assert (older.lease_ttl_ms, older.command_timeout_ms, older.config_since) == (3000, 10000, {})


def snapshot() -> Snapshot:
    b = ["binding:b1", "binding:b2"]
    records = {
        "n1": record(
            "#e1-1#n1",
            {
                "10.0.0.1": (b, []),
                "10.0.0.2": (["binding:x"], ["n1"]),
                "10.0.0.3": (["binding:y"], []),
            },
        ),
        "n2": record(
            "#e2-1#n2",
            {
                "10.0.0.1": (b, []),
                "10.0.0.2": (["binding:x"], ["n2"]),
                "10.0.0.4": (["binding:y"], []),
            },
        ),
        "n3": record("#e3-1#n3", {"10.0.0.1": (["binding:b1"], ["n3"])}),
    }
    owners = {
        "10.0.0.1": Owner("n2", "#e2-1#n2", 7),
        "10.0.0.2": None,
        "10.0.0.3": None,
        "10.0.0.4": None,
    }
    return Snapshot(61_000, records, owners, {"10.0.0.1": 31_000}, {})


def test_states_safe_unsafe_broken_conflict() -> None:
    found = {s.address: s for s in states(snapshot())}
    one = found["10.0.0.1"]
    assert one.to_json() == {
        "address": "10.0.0.1",
        "bindings": ["b1", "b2"],
        "owner": "n2",
        "state": ["owned", "UNSAFE"],  # n3 serves b1 only
        "candidates": ["n1", "n2", "n3"],
    }
    assert one.preferred == "n3" and elected(one) == "n3"
    two = found["10.0.0.2"]
    assert two.states == ["unowned", "safe", "conflict"] and two.preferred is None
    assert elected(two) in ("n1", "n2")
    assert found["10.0.0.3"].states == ["unowned", "safe", "BROKEN"]  # y on .3 and on .4
    assert elected(found["10.0.0.3"]) is None  # unmanaged


def test_election_spreads_addresses() -> None:
    nodes = ["n1", "n2", "n3"]
    owners: dict[str, int] = {}
    snap = Snapshot(
        0,
        {
            n: record(f"#e1-1#{n}", {f"10.0.1.{i}": ([f"binding:b{i}"], []) for i in range(60)})
            for n in nodes
        },
        {f"10.0.1.{i}": None for i in range(60)},
        {},
        {},
    )
    for state in states(snap):
        winner = elected(state)
        assert winner is not None
        owners[winner] = owners.get(winner, 0) + 1
    assert sorted(owners) == nodes and min(owners.values()) >= 10


def test_show_text_has_the_reference_shape() -> None:
    snap = snapshot()
    lines = show_text(snap, states(snap)).plain.splitlines()  # type: ignore[union-attr]
    assert lines[:7] == [
        "DuraVIP State:",
        "10.0.0.1/b1/b2: (owned,UNSAFE) multivip",
        "\t[view stable for 30 seconds]",
        "\t[configuration stable for 60 seconds]",
        "    \tn1 multivip",
        " *  \tn2 multivip",
        "    \tn3 multivip",
    ]
    xml = ET.fromstring(tables_xml(snap, states(snap)))
    first = xml.find("address")
    assert first is not None and first.get("owner") == "n2" and first.get("token") == "7"
    owner = [c.get("node") for c in first.iter("candidate") if c.get("owner") == "true"]
    assert owner == ["n2"]


def test_arp_rows_show_live_nodes_and_current_owners() -> None:
    snap = snapshot()
    published = {
        "n1": {
            "entries": [["10.1.0.1", "aa:01"], ["10.0.0.1", "aa:00"]],
            "refreshed_ms": 58_000,
        },
        "n2": {
            "entries": [["10.1.0.2", "aa:02"], ["10.0.0.1", "bb:00"]],
            "refreshed_ms": 60_500,
        },
        "gone": {"entries": [["10.1.0.9", "ff"]], "refreshed_ms": 1},
    }
    rows = arp_rows(snap, published)
    assert [(r["address"], r["mac"], r["age"]) for r in rows] == [
        ("10.0.0.1", "bb:00", 0),  # the owner's entry only
        ("10.1.0.2", "aa:02", 0),
        ("10.1.0.1", "aa:01", 3),
    ]


def test_host_addresses_and_macs() -> None:
    found = arp.interface_addresses()
    assert found.get("127.0.0.1") == "lo"
    assert arp.mac_of("lo") == "00:00:00:00:00:00"
    assert arp.mac_of("no-such-if") == arp.UNKNOWN_MAC
    assert arp.cluster_entries("127.0.0.1:4802") == [("127.0.0.1", "00:00:00:00:00:00")]
    assert arp.cluster_entries("192.0.2.77:1") == [("192.0.2.77", arp.UNKNOWN_MAC)]
    assert all(not a.startswith("127.") for a, _ in arp.cluster_entries("0.0.0.0:4802"))


# -- the command runner ---------------------------------------------------------------------


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "vip.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


async def test_plumber_runs_in_order_and_reports_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    path = script(tmp_path, f'echo "$MCLUSTER_NODE $*" >> {out}\n[ "$1" = up ] || exit 3\n')
    cfg = DuraVipConfig(command=(str(path), "{action}", "{address}", "{interface}"), timeout=5)
    plumber = Plumber(cfg, "n1")
    caplog.set_level(logging.INFO, "mcluster.duravip")
    results = await asyncio.gather(plumber.run("up", "10.0.0.1"), plumber.run("down", "10.0.0.1"))
    assert results == [True, False]
    assert out.read_text().splitlines() == ["n1 up 10.0.0.1 eth0", "n1 down 10.0.0.1 eth0"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "DuraVIP down 10.0.0.1 failed" in errors[0].getMessage()
    assert "exit status 3" in errors[0].getMessage()
    assert plumber.last == {"10.0.0.1": "down failed"}


async def test_plumber_kills_a_command_that_hangs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = script(tmp_path, "sleep 30\n")
    plumber = Plumber(DuraVipConfig(command=(str(path),), timeout=0.3), "n1")
    started = time.monotonic()
    assert not await plumber.run("up", "10.0.0.1")
    assert time.monotonic() - started < 5
    assert "no answer within 0.3 s (duravip_command_timeout); killed" in caplog.text
    missing = Plumber(DuraVipConfig(command=(str(tmp_path / "nope"),)), "n1")
    assert not await missing.run("down", "10.0.0.1")
    assert "cannot run it" in caplog.text
