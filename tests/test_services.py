"""The Service protocol as the node drives it: start just before the join, on_rejoin
after every rejoin (here a ``cluster reset``), stop when the node stops, in that order."""

from __future__ import annotations

from mcluster import Node, parse_config
from mcluster.agent.service import Service, ServiceContext
from tests.redis_servers import RedisServer

CONFIG = 'cluster {\n  Replicate "inbound_cidr" {}\n}\n'


class Probe:
    """A service that writes down what the node asked of it, and what it saw then."""

    name = "probe"

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.seen: list[tuple[str, bool]] = []  # (call, joined at that moment)

    async def start(self) -> None:
        self.seen.append(("start", self.ctx.member() is not None))

    async def stop(self) -> None:
        self.seen.append(("stop", self.ctx.member() is not None))

    def on_rejoin(self) -> None:
        self.seen.append(("on_rejoin", self.ctx.member() is not None))


async def test_node_drives_its_services(redis_server: RedisServer, namespace: str) -> None:
    node = Node(parse_config(CONFIG, "t.conf"), "n1", redis_server.url, namespace=namespace)
    probe = Probe(node.service_context)
    services: list[Service] = node.services
    services.append(probe)
    async with node:
        assert probe.seen == [("start", False)]  # before the join
        await node.reset()
        assert probe.seen[-1] == ("on_rejoin", True)
    assert probe.seen == [("start", False), ("on_rejoin", True), ("stop", True)]
    # DuraVIP runs on every node (its record and ARP entries feed ``cluster arp show``)
    assert [s.name for s in node.services] == ["caches", "logs", "duravip", "probe"]


class HookProbe(Probe):
    """A service with every optional hook (``agent/service.py``), writing them down too."""

    async def after_join(self) -> None:
        self.seen.append(("after_join", self.ctx.member() is not None))

    async def before_stop(self) -> None:
        self.seen.append(("before_stop", self.ctx.member() is not None))

    async def before_leave(self) -> None:
        self.seen.append(("before_leave", self.ctx.member() is not None))

    async def on_reset(self, why: str) -> None:
        self.seen.append(("on_reset", self.ctx.member() is not None))

    def rejoined(self) -> None:
        self.seen.append(("rejoined", self.ctx.member() is not None))


async def test_node_calls_the_optional_hooks_in_order(
    redis_server: RedisServer, namespace: str
) -> None:
    node = Node(parse_config(CONFIG, "t.conf"), "n1", redis_server.url, namespace=namespace)
    probe = HookProbe(node.service_context)
    node.services.append(probe)
    async with node:
        assert probe.seen == [("start", False), ("after_join", True)]
        await node.reset()
    assert [call for call, _ in probe.seen] == [
        "start", "after_join", "on_rejoin", "on_reset", "rejoined",
        "before_stop", "stop", "before_leave",
    ]  # fmt: skip
    assert all(joined for call, joined in probe.seen if call != "start")


EVERY_FEATURE = """
Datasource "c1" {}
cluster {
  Replicate "outbound_binding_domains" {}
  Replicate "OBTM" {}
  Replicate "shared_named_throttles" {}
  Replicate "c1" { type = "cache" }
  Replicate "metrics" { parameters = "connect;delivery;gauge_cache" }
}
Shaping "slow_down" { domain = "slow.test"  match = "/^421/"  action = "rate"  factor = 0.1
                      duration = 30 }
"""


def test_every_feature_is_a_service_and_none_holds_the_node() -> None:
    node = Node(parse_config(EVERY_FEATURE, "t.conf"), "n1", "redis://127.0.0.1:1")
    assert [s.name for s in node.services] == [
        "connections", "throttles", "caches", "logs", "audit", "gauge_caches", "shaping",
        "duravip",
    ]  # fmt: skip
    for service in node.services:  # a narrow context, never the node itself
        held = [name for name, value in vars(service).items() if value is node]
        assert held == [], f"{service.name} holds the Node in {held}"
