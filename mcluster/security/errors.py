"""The guards' error: a setting that would leave a face open, or a guard that cannot work."""

from __future__ import annotations

from mcluster.errors import Error


class GuardError(Error):
    """One line saying what is unsafe or unusable and how to fix it; the CLI exits 1."""
