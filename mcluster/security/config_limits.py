"""Caps on a config file: its size, and how deep its scopes nest.

The config grammar has no include directive, so the only ways a file can make the parser
or anything that walks its tree work without bound are its length and its nesting. A
config is a few kilobytes and a few levels deep; the caps are far above that and far
below what would hurt (a recursive walk of 10,000 nested scopes overflows Python's stack).
A file over a cap is refused whole, at start-up (exit 1) or at a reload (the running
config stays, and the refusal is counted in ``mcluster_refusals_total{face="config"}``).
"""

from __future__ import annotations

from mcluster.errors import ConfigError, ConfigIssue

#: Bytes of one config file.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: Scopes inside scopes (``cluster { Replicate "x" { ... } }`` is 2).
MAX_SCOPE_DEPTH = 32


class ConfigLimitError(ConfigError):
    """A config over a cap; ``reason`` (``too_large``, ``too_deep``) labels the refusal."""

    def __init__(self, reason: str, issue: ConfigIssue) -> None:
        self.reason = reason
        super().__init__([issue])


def too_large(filename: str) -> ConfigLimitError:
    return ConfigLimitError("too_large", ConfigIssue(filename, 0, 0, (
        f"the file is larger than {MAX_CONFIG_BYTES} bytes (a config is a few kilobytes)"
    )))  # fmt: skip


def too_deep(filename: str, line: int, col: int) -> ConfigLimitError:
    return ConfigLimitError("too_deep", ConfigIssue(filename, line, col, (
        f"scopes nest deeper than {MAX_SCOPE_DEPTH} levels"
    )))  # fmt: skip
