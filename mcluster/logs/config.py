"""Which logs a node ships (``cluster { logs = [ mainlog = "/var/log/..." ] }``), where the
manager writes them (``log_dir``), and their keys in Redis.

A path may contain ``{node}`` (the node's name), so nodes sharing one config file on one
host ship different files.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcluster.config import ClusterConfig, ConfigError, ConfigIssue, DictValue
from mcluster.config.values import describe, scalar_text
from mcluster.store.keys import ClusterKeys, check_name

DEFAULT_LOG_DIR = "./cluster-logs"
DEFAULT_STREAM_MAX = 100_000
SUBCLUSTER = "default"


def log_files(config: ClusterConfig, node: str | None = None) -> dict[str, str]:
    """Log name -> path; ConfigError naming the place of every bad entry."""
    cluster = config.tree.scope("cluster")
    option = cluster.get("logs") if cluster is not None else None
    if option is None:
        return {}
    pos = option.pos
    if not isinstance(option.value, DictValue):
        why = f'logs must be a dictionary [ name = "path", ... ], got {describe(option.value)}'
        raise ConfigError.single(pos.file, pos.line, pos.col, why)
    found: dict[str, str] = {}
    issues = []
    for entry in option.value.entries:
        path = scalar_text(entry.value)
        where = entry.pos
        try:
            name = check_name("log", entry.key)
        except ValueError as exc:
            issues.append(ConfigIssue(where.file, where.line, where.col, f"logs: {exc}"))
            continue
        if not path:
            issues.append(ConfigIssue(where.file, where.line, where.col,
                                      f"logs: {name} needs a file path"))  # fmt: skip
            continue
        found[name] = path.replace("{node}", node) if node else path
    if issues:
        raise ConfigError(issues)
    return found


def log_dir(config: ClusterConfig | None) -> str:
    return config.get_str("log_dir", DEFAULT_LOG_DIR) if config is not None else DEFAULT_LOG_DIR


@dataclass(frozen=True)
class LogKeys:
    """Keys of one log of one node (one hash slot): the stream and the shipping position."""

    keys: ClusterKeys
    log: str
    node: str

    @property
    def base(self) -> str:
        return f"{self.keys.namespace}:{{log:{self.log}:{self.node}}}"

    @property
    def stream(self) -> str:
        return f"{self.base}:s"

    @property
    def position(self) -> str:
        return f"{self.base}:pos"


def registry(keys: ClusterKeys) -> str:
    """Hash ``LOG NODE`` -> path of every shipped log."""
    return f"{keys.base}:logs"


def stats(keys: ClusterKeys) -> str:
    """Hash LOG -> JSON written by the manager: bytes on disk, lines per subscriber."""
    return f"{keys.base}:log_stats"
