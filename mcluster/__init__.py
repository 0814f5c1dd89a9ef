"""mcluster: cluster-wide data replication for mail servers, on Redis.

async with mcluster.Node("mcluster.conf", name="relay-0-1", redis_url=url) as node:
    node.record("inbound_cidr", "10.0.0.180", +1)
    await node.flush()
    await node.count("inbound_cidr", "10.0.0.0/24", view="global")
"""

__version__ = "0.1.0"

from mcluster.agent.node import Node, UnknownObject
from mcluster.config import (
    ClusterConfig,
    ConfigError,
    ReplicateObject,
    load_config,
    parse_config,
)
from mcluster.objects.cidrtree import Row
from mcluster.objects.outbound import Route
from mcluster.objects.throttle import Decision, ThrottleDef, ThrottleError
from mcluster.objects.views import Listing, NotFound, ObjectInfo

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "Decision",
    "Listing",
    "Node",
    "NotFound",
    "ObjectInfo",
    "ReplicateObject",
    "Route",
    "Row",
    "ThrottleDef",
    "ThrottleError",
    "UnknownObject",
    "__version__",
    "load_config",
    "parse_config",
]
