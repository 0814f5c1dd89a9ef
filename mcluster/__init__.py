"""mcluster: cluster-wide data replication for mail servers, on Redis.

async with mcluster.Node("mcluster.conf", name="relay-0-1", redis_url=url) as node:
    node.record("inbound_cidr", "10.0.0.180", +1)
    await node.flush()
    await node.count("inbound_cidr", "10.0.0.0/24", view="global")

Everything mcluster raises on purpose is an ``mcluster.Error`` (the tree is in
mcluster/errors.py); every class a caller may catch is exported here.
"""

__version__ = "0.1.0"

from mcluster.agent.caches import UnknownCache
from mcluster.agent.gauge_caches import GaugeCacheError, UnknownGaugeCache
from mcluster.agent.node import Node
from mcluster.agent.results import NodeStats, OutboxStats, ReloadResult, ResetResult
from mcluster.config import (
    ClusterConfig,
    ReplicateObject,
    load_config,
    parse_config,
)
from mcluster.errors import (
    AuditError,
    CacheError,
    ConfigError,
    ConfigIssue,
    ConflictReply,
    Error,
    InvalidType,
    InvalidValue,
    JobError,
    NotEmptyReply,
    NotFound,
    NotJoined,
    RedisUnavailable,
    RedisUrlError,
    ScriptReply,
    StaleReply,
    ThrottleError,
    UnknownObject,
)
from mcluster.objects.cidrtree import Row
from mcluster.objects.outbound import Route
from mcluster.objects.throttle import Decision, ThrottleConflict, ThrottleDef
from mcluster.objects.views import Listing, ObjectInfo
from mcluster.security.config_limits import ConfigLimitError
from mcluster.shaping.model import Outcome, OutcomeResult, ShapingError
from mcluster.store.connect.access import RedisAccessError
from mcluster.store.connect.embedded import EmbeddedRedisError

__all__ = [
    "AuditError",
    "CacheError",
    "ClusterConfig",
    "ConfigError",
    "ConfigIssue",
    "ConfigLimitError",
    "ConflictReply",
    "Decision",
    "EmbeddedRedisError",
    "Error",
    "GaugeCacheError",
    "InvalidType",
    "InvalidValue",
    "JobError",
    "Listing",
    "Node",
    "NodeStats",
    "NotEmptyReply",
    "NotFound",
    "NotJoined",
    "ObjectInfo",
    "OutboxStats",
    "Outcome",
    "OutcomeResult",
    "RedisAccessError",
    "RedisUnavailable",
    "RedisUrlError",
    "ReloadResult",
    "ReplicateObject",
    "ResetResult",
    "Route",
    "Row",
    "ScriptReply",
    "ShapingError",
    "StaleReply",
    "ThrottleConflict",
    "ThrottleDef",
    "ThrottleError",
    "UnknownCache",
    "UnknownGaugeCache",
    "UnknownObject",
    "__version__",
    "load_config",
    "parse_config",
]
