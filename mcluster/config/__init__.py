"""The cluster config: Momentum's ecelerity.conf grammar and the frozen models built from it."""

from mcluster.config.check import check_command
from mcluster.config.constants import (
    DEFAULT_OBJECT_TYPES,
    REPLICATE_OPTIONS,
    REPLICATION_PARAMETERS,
    REPLICATION_TYPES,
)
from mcluster.config.errors import ConfigError, ConfigIssue
from mcluster.config.grammar import parse, tokenize
from mcluster.config.models import (
    ClusterConfig,
    ReplicateObject,
    build_config,
    load_config,
    parse_config,
)
from mcluster.config.tree import (
    DictValue,
    ListValue,
    Option,
    Pos,
    Scope,
    String,
    Value,
    Word,
    format_tree,
    format_value,
)
from mcluster.config.values import OptionMap, to_python

__all__ = [
    "DEFAULT_OBJECT_TYPES",
    "REPLICATE_OPTIONS",
    "REPLICATION_PARAMETERS",
    "REPLICATION_TYPES",
    "ClusterConfig",
    "ConfigError",
    "ConfigIssue",
    "DictValue",
    "ListValue",
    "Option",
    "OptionMap",
    "Pos",
    "ReplicateObject",
    "Scope",
    "String",
    "Value",
    "Word",
    "build_config",
    "check_command",
    "format_tree",
    "format_value",
    "load_config",
    "parse",
    "parse_config",
    "to_python",
    "tokenize",
]
