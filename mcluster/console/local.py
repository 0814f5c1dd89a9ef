"""What a console command may ask of the member process it runs in.

A console attached to a node runs most commands itself, against Redis. A few need the
node's process (``cluster reset``, ``config reload``): the console sends them to the node
as a request over Redis, and the node runs them with ``ConsoleContext.local`` set to
itself.
"""

from __future__ import annotations

from typing import Protocol

from mcluster.agent.results import ReloadResult, ResetResult

__all__ = ["LocalMember"]


class LocalMember(Protocol):
    """The agent or manager process a command runs in."""

    @property
    def name(self) -> str: ...

    async def reset(self) -> ResetResult:
        """Leave and rejoin with a new epoch; re-publish the state (``cluster reset``)."""
        ...

    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply it (``config reload``)."""
        ...
