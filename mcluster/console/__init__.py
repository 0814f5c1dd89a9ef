"""The operator console: Momentum's ``cluster ...`` commands over the views in Redis."""

from mcluster.console.commands import ConsoleContext, run_command
from mcluster.console.main import console_main

__all__ = ["ConsoleContext", "console_main", "run_command"]
