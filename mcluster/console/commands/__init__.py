"""The console's commands: Momentum's ``cluster ...`` commands, one module per family.

    base.py     the context, the result, the errors, the registry and ``run_command``
    core.py     help, shared list/show, nodename, nodeaddr, membership, info
    ops.py      broadcast, unicast, jobs, abort, reset, config reload
    duravip.py  duravip show/move/announce view/debug, arp show
    logs.py     show logs
    audit.py    inbound_audit show, audit_series list/count (Momentum's modules)
    quotas.py   policy show/reset (the policy service's quotas)
    shaping.py  shaping show/history/clear

A new command is one ``@command(...)``-decorated handler in its family's module (copy
``logs.py``); a new family is a new module, imported below so that it registers.
"""

from __future__ import annotations

# Importing a family registers its commands; base imports none of them (no cycle).
from mcluster.console.commands import (  # noqa: F401
    audit,
    core,
    duravip,
    logs,
    ops,
    quotas,
    shaping,
)
from mcluster.console.commands.base import (
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_OK,
    CommandError,
    CommandSpec,
    ConsoleContext,
    Handler,
    NotFound,
    NotInRelease,
    Result,
    UnknownCommand,
    UsageError,
    cluster_commands,
    exit_code,
    handlers,
    module_commands,
    run_command,
)
from mcluster.console.commands.core import parse_show_args

#: Every command of the cluster module, in ``cluster help``'s order.
COMMANDS: tuple[CommandSpec, ...] = cluster_commands()
#: Commands of Momentum's modules (``inbound_audit ...``, not ``cluster ...``).
MODULE_COMMANDS: tuple[CommandSpec, ...] = module_commands()
#: The handlers of COMMANDS, by their words.
HANDLERS: dict[tuple[str, ...], Handler] = handlers()

__all__ = [
    "COMMANDS",
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "HANDLERS",
    "MODULE_COMMANDS",
    "CommandError",
    "CommandSpec",
    "ConsoleContext",
    "NotFound",
    "NotInRelease",
    "Result",
    "UnknownCommand",
    "UsageError",
    "exit_code",
    "parse_show_args",
    "run_command",
]
