"""What every console command shares: the context, the result, the errors and the registry.

A command is registered once, where its handler is, by the :func:`command` decorator:
its words, its arguments, its one-line help and its handler. Help, dispatch and tab
completion all read the registry, so they always agree. Every handler has one shape::

    @command("shared show", "OBJ [from NODE] [all | limit N]", "Display ...", order=140)
    async def shared_show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:

Problems are exceptions: CommandError (exit 1), NotFound (exit 2). This module imports
no command family; ``mcluster/console/commands/__init__.py`` imports them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from rich.console import RenderableType

from mcluster.config import ClusterConfig
from mcluster.console.local import LocalMember
from mcluster.errors import Error, NotFound
from mcluster.store.keys import ClusterKeys

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "Command",
    "CommandError",
    "CommandSpec",
    "ConsoleContext",
    "Handler",
    "NotFound",
    "NotInRelease",
    "Result",
    "UnknownCommand",
    "UsageError",
    "attached_node",
    "cluster_commands",
    "command",
    "exit_code",
    "family",
    "match",
    "module_commands",
    "next_words",
    "no_args",
    "run_command",
    "usage_errors",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_FOUND = 2


class CommandError(Error):
    """A command that cannot run as typed (exit status 1); the message says why."""

    exit_code = EXIT_ERROR

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "command failed"


class UnknownCommand(CommandError):
    """No such console command."""


class UsageError(CommandError):
    """A known command with wrong or missing arguments."""


class NotInRelease(CommandError):
    """A command of Momentum's console that this release does not implement yet."""


def exit_code(exc: BaseException) -> int:
    """The process exit status for an error: 2 for an unknown object or node, else 1."""
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, CommandError):
        return exc.exit_code
    return EXIT_ERROR


@dataclass
class ConsoleContext:
    """What a console is attached to: a Redis, a namespace, maybe a node and a config.

    ``local`` is the member process itself when the command runs inside it (a request
    over Redis); commands that need the process (``cluster reset``) go there.
    ``timeout`` bounds how long ``broadcast`` and ``unicast`` wait for answers.
    """

    client: Redis
    keys: ClusterKeys
    node: str | None = None
    configured: list[tuple[str, str]] = field(default_factory=list)
    timeout: float = 5.0
    local: LocalMember | None = None
    config: ClusterConfig | None = None


@dataclass(frozen=True)
class Result:
    """A command's answer: ``renderable`` for text mode, ``data`` for ``--json``.

    ``data`` is a JSON object, or a list of them for ``cluster membership``.
    """

    renderable: RenderableType
    data: dict[str, Any] | list[dict[str, Any]]


@dataclass(frozen=True)
class CommandSpec:
    """One console command: its fixed words, its arguments and a one-line description."""

    words: tuple[str, ...]
    args: str
    summary: str
    coming_with: str | None = None
    """None when this release implements it; else the feature it will arrive with."""
    top: bool = False
    """A command of the manager's console (``broadcast``), not a ``cluster`` one."""

    @property
    def implemented(self) -> bool:
        return self.coming_with is None

    @property
    def name(self) -> str:
        """``cluster shared show`` (the fixed words only)."""
        return " ".join(self.words if self.top else ("cluster", *self.words))

    @property
    def usage(self) -> str:
        """``cluster shared show OBJ [from NODE] [all | limit N]``."""
        return f"{self.name} {self.args}" if self.args else self.name


Handler = Callable[[ConsoleContext, CommandSpec, list[str]], Awaitable[Result]]


@dataclass(frozen=True)
class Command:
    """A registered command: its spec, its handler, and its place in ``cluster help``."""

    spec: CommandSpec
    handler: Handler
    order: int
    module: bool
    """A command of Momentum's modules (``inbound_audit ...``): it runs like the others;
    ``cluster help`` lists the cluster module's commands only."""


_REGISTRY: dict[tuple[str, ...], Command] = {}


def command(
    words: str,
    args: str = "",
    summary: str = "",
    *,
    order: int,
    top: bool = False,
    module: bool = False,
    coming_with: str | None = None,
) -> Callable[[Handler], Handler]:
    """Register the decorated handler as the command ``words`` (``"shared show"``).

    ``order`` places it in ``cluster help`` (Momentum's order, not the alphabet); ``top``
    marks a manager console command (``broadcast``), ``module`` a module's command
    (``inbound_audit show``). A second registration of the same words is an error."""
    spec = CommandSpec(tuple(words.split()), args, summary, coming_with, top or module)

    def register(handler: Handler) -> Handler:
        if spec.words in _REGISTRY:
            raise ValueError(f"console command {words!r} is registered twice")
        _REGISTRY[spec.words] = Command(spec, handler, order, module)
        return handler

    return register


def _registered(module: bool) -> tuple[CommandSpec, ...]:
    found = [c for c in _REGISTRY.values() if c.module == module]
    return tuple(c.spec for c in sorted(found, key=lambda c: c.order))


def cluster_commands() -> tuple[CommandSpec, ...]:
    """Every command of the cluster module, in ``cluster help``'s order."""
    return _registered(module=False)


def module_commands() -> tuple[CommandSpec, ...]:
    """The commands of Momentum's other modules (``inbound_audit``, ``audit_series``)."""
    return _registered(module=True)


def handlers(module: bool = False) -> dict[tuple[str, ...], Handler]:
    """The handlers of the cluster module's commands (``module``: the modules'), by words."""
    return {c.spec.words: c.handler for c in _REGISTRY.values() if c.module == module}


def match(words: list[str]) -> tuple[CommandSpec | None, list[str]]:
    """The command whose fixed words start ``words`` (lower-cased verbs), and the rest."""
    folded = [w.casefold() for w in words]
    best: CommandSpec | None = None
    for spec in (*cluster_commands(), *module_commands()):
        n = len(spec.words)
        if tuple(folded[:n]) == spec.words and (best is None or n > len(best.words)):
            best = spec
    if best is None:
        return None, words
    return best, words[len(best.words) :]


def family(word: str) -> list[CommandSpec]:
    """The commands starting with ``word`` (for ``cluster duravip`` given alone)."""
    every = (*cluster_commands(), *module_commands())
    return [spec for spec in every if spec.words[0] == word.casefold()]


def next_words(words: list[str]) -> list[str]:
    """Fixed command words that may follow ``words`` (already typed, complete)."""
    folded = tuple(w.casefold() for w in words)
    n = len(folded)
    found = {
        s.words[n]
        for s in (*cluster_commands(), *module_commands())
        if len(s.words) > n and s.words[:n] == folded
    }
    return sorted(found)


async def run_command(ctx: ConsoleContext, line: str) -> Result:
    """Run one command line (the leading ``cluster`` is optional, verbs ignore case)."""
    words = line.split()
    if words and words[0].casefold() == "cluster":
        words = words[1:]
    if not words:
        raise UsageError("empty command; type 'cluster help' for the list of commands")
    spec, rest = match(words)
    if spec is None:
        siblings = family(words[0])
        typed = " ".join(("cluster", *words))
        if siblings:
            choices = " | ".join(s.usage for s in siblings)
            raise UsageError(f"incomplete command {typed!r}; one of: {choices}")
        raise UnknownCommand(f"unknown command {typed!r}; type 'cluster help' for the list")
    if spec.coming_with is not None:
        raise NotInRelease(f"{spec.name}: not in this release (coming with {spec.coming_with})")
    return await _REGISTRY[spec.words].handler(ctx, spec, rest)


def no_args(spec: CommandSpec, rest: list[str]) -> None:
    """A UsageError when a command that takes no arguments got some."""
    if rest:
        raise UsageError(f"{spec.name} takes no arguments, got {' '.join(rest)!r}")


def attached_node(ctx: ConsoleContext, spec: CommandSpec) -> str:
    """The node this console is attached to (``--node``); a CommandError without one."""
    if ctx.node is None:
        raise CommandError(f"{spec.name} needs --node NAME (the node this console is attached to)")
    return ctx.node


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """A ValueError inside (a bad argument found by the code below) is a UsageError."""
    try:
        yield
    except ValueError as exc:
        raise UsageError(str(exc)) from None
