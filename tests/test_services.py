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
    assert [s.name for s in node.services] == ["caches", "logs", "probe"]
