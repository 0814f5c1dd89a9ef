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

#: Top-level scope kinds that some part of mcluster reads. ``mcluster config check`` lists
#: these as used and every other top-level scope as kept but not used. A feature that reads a
#: new top-level kind adds it here (tests/test_config.py checks that every kind the code
#: asks a config tree for is listed).
USED_SCOPES: tuple[str, ...] = (
    "cluster",
    "Policy",
    "inbound_audit",
    "Datasource",
    "Domain",
    "Host",
    "Binding",
    "Binding_Group",
    "Listen",
    "Shaping",
    "Adaptive",
    "Warmup",
)

#: Scopes read wherever they are nested, when they hold one of these options (DuraVIP's
#: ``Listen``/``Binding`` inside an ``ESMTP_Listener``): their top-level ancestor is used.
NESTED_USED_OPTIONS: tuple[str, ...] = ("Enable_Duravip",)
