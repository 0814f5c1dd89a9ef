"""Configuration problems, each tied to a place in a file (defined in mcluster/errors.py)."""

from __future__ import annotations

from mcluster.errors import ConfigError, ConfigIssue

__all__ = ["ConfigError", "ConfigIssue"]
