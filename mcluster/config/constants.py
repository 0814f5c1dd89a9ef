"""Names from Momentum that users write in the cluster scope."""

from __future__ import annotations

REPLICATION_TYPES: tuple[str, ...] = (
    "cache",
    "inbound_cidr",
    "outbound_cidr",
    "outbound_domains",
    "outbound_binding_domains",
    "OBTM",
    "OBTC",
    "shared_named_throttles",
    "metrics",
    "eccmgr_metrics",
)
"""Momentum's replication types, spelled as Momentum writes them."""

DEFAULT_OBJECT_TYPES = REPLICATION_TYPES
"""Alias of REPLICATION_TYPES."""

REPLICATION_PARAMETERS: tuple[str, ...] = (
    "snapshot",
    "connect",
    "delivery",
    "transfail",
    "permfail",
    "reception",
    "rejection",
    "audit_series",
    "gauge_cache",
)
"""Values allowed in a stanza's ``parameters = "a;b"``."""

REPLICATE_OPTIONS: tuple[str, ...] = (
    "parameters",
    "type",
    "max_delay",
    "max_pending",
    "max_size",
    "binding_group",
    "class",
    "shards",
)
"""Options valid inside ``Replicate "name" { ... }``."""
#: The types that may be split into shards (``shards = N``): gauge tables and CIDR trees.
SHARDABLE_TYPES: tuple[str, ...] = (
    "outbound_domains",
    "outbound_binding_domains",
    "inbound_cidr",
    "outbound_cidr",
)
