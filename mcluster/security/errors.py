"""The guards' error: a setting that would leave a face open, or a guard that cannot work."""

from __future__ import annotations


class GuardError(Exception):
    """One line saying what is unsafe or unusable and how to fix it; the CLI exits 1."""
