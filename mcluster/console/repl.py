"""The interactive console: ``mcluster(relay-0-1)> cluster shared show inbound_cidr``.

Line editing, history (``<state dir>/console_history``) and tab completion come from the
stdlib ``readline``; completion of command words, object names and node names is the
pure function ``completions`` so it can be tested without a terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError
from rich.console import Console
from rich.text import Text

from mcluster.console.commands import (
    COMMANDS,
    MODULE_COMMANDS,
    CommandError,
    ConsoleContext,
    NotFound,
    run_command,
)
from mcluster.console.commands import audit as audit_commands
from mcluster.console.commands.base import match, next_words
from mcluster.console.dashboard import watch
from mcluster.objects import views
from mcluster.objects.audit_views import list_series
from mcluster.security.readonly import redis_error_line
from mcluster.store import members
from mcluster.store.connect.embedded import state_dir

try:
    import readline as _readline
except ImportError:  # pragma: no cover - platforms without GNU readline / libedit
    _readline = None  # type: ignore[assignment]

#: Words the REPL understands besides the commands.
REPL_WORDS: tuple[str, ...] = ("quit", "exit")
#: ``watch [SECONDS]`` in the REPL: the live dashboard until Ctrl-C (or SECONDS).
WATCH_WORD = "watch"
HISTORY_FILE = "console_history"
HISTORY_LENGTH = 1000
_SHOW_OPTIONS = ("from", "all", "limit")
#: Commands that run another command (completed as one after them).
_FORWARDING = {("broadcast",), ("unicast",)}


def completions(
    buffer: str, objects: Sequence[str], nodes: Sequence[str], series: Sequence[str] = ()
) -> list[str]:
    """Words that may complete the last (partial) word of ``buffer``, sorted.

    Command words match case-insensitively; object, node and audit series names exactly.
    """
    words = buffer.split()
    partial = "" if not buffer or buffer[-1].isspace() else words.pop()
    verbs, names = _candidates(words, objects, nodes, series)
    folded = partial.casefold()
    found = {w for w in verbs if w.casefold().startswith(folded)}
    found |= {n for n in names if n.startswith(partial)}
    return sorted(found)


def _module_words() -> set[str]:
    """``inbound_audit``, ``audit_series``: the first words of the modules' commands."""
    return {spec.words[0] for spec in MODULE_COMMANDS}


def _candidates(
    words: list[str], objects: Sequence[str], nodes: Sequence[str], series: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(command words, names) that may come after the complete ``words``."""
    first_words = sorted({spec.words[0] for spec in COMMANDS if not spec.top})
    top_words = sorted({spec.words[0] for spec in COMMANDS if spec.top} | _module_words())
    if not words:
        return sorted(["cluster", *first_words, *top_words, *REPL_WORDS, WATCH_WORD]), []
    if words[0].casefold() == "cluster":
        words = words[1:]
        if not words:
            return first_words, []
    spec, rest = match(words)
    if spec is not None and spec.words in _FORWARDING:  # broadcast COMMAND, unicast NODE ...
        if spec.words == ("unicast",):
            if not rest:
                return [], list(nodes)
            rest = rest[1:]
        if not rest:
            return sorted(["cluster", *first_words, *_module_words()]), []
        return _candidates(rest, objects, nodes, series)
    if spec is None:
        return next_words(words), []
    if spec in MODULE_COMMANDS:
        return audit_commands.candidates(spec.words, rest, series, nodes)
    if spec.words == ("help",):
        return (first_words if not rest else []), []
    if spec.words != ("shared", "show"):
        return [], []
    if not rest:
        return [], list(objects)
    options = [w.casefold() for w in rest[1:]]
    if options and options[-1] == "from":
        return [], list(nodes)
    if options and options[-1] == "limit":
        return [], []
    used = set(options)
    if used & {"all", "limit"}:
        used |= {"all", "limit"}
    return [w for w in _SHOW_OPTIONS if w not in used], []


#: Commands after which the names offered for completion are fetched again.
_REFRESHING = {("shared", "list"), ("membership",), ("audit_series", "list")}


def _refreshes_names(text: str) -> bool:
    words = text.split()
    if words and words[0].casefold() == "cluster":
        words = words[1:]
    spec, _ = match(words)
    return spec is not None and spec.words in _REFRESHING


def history_path() -> Path | None:
    """``<state dir>/console_history``, or None if the state dir cannot be determined."""
    try:
        return state_dir() / HISTORY_FILE
    except (OSError, RuntimeError):
        return None


class Repl:
    """One interactive session over a ConsoleContext, run on one event loop."""

    def __init__(
        self,
        ctx: ConsoleContext,
        runner: asyncio.Runner,
        console: Console | None = None,
        err: Console | None = None,
        json_mode: bool = False,
    ) -> None:
        self.ctx = ctx
        self.runner = runner
        self.console = console or Console(highlight=False)
        self.err = err or Console(stderr=True, highlight=False)
        self.json_mode = json_mode
        self.objects: list[str] = []
        self.nodes: list[str] = []
        self.series: list[str] = []  # audit series names (``audit_series count``)

    @property
    def prompt(self) -> str:
        return f"mcluster({self.ctx.node})> " if self.ctx.node else "mcluster> "

    def refresh(self) -> None:
        """Fetch object and node names for completion (keep the old ones on failure)."""
        with contextlib.suppress(RedisError, OSError):
            self.runner.run(self._refresh())

    async def _refresh(self) -> None:
        client, keys = self.ctx.client, self.ctx.keys
        infos = await views.list_objects(client, keys, self.ctx.configured)
        nodes = {m.node for m in await members.all_members(client, keys)}
        for info in infos:  # nodes that left but still have a view can be shown too
            for name in await client.hvals(keys.object(info.name).views):
                nodes.add(name.decode() if isinstance(name, bytes) else str(name))
        self.objects = [info.name for info in infos]
        self.nodes = sorted(nodes)
        self.series = [s.name for s in await list_series(client, keys)]

    def error(self, message: str) -> None:
        self.err.print(Text(f"mcluster: {message}", style="red"), soft_wrap=True)

    def handle(self, line: str) -> bool:
        """Run one line; False when the session should end (``quit``, ``exit``)."""
        text = line.strip()
        if not text:
            return True
        if text.casefold() in REPL_WORDS:
            return False
        if text.split()[0].casefold() == WATCH_WORD:
            self.watch(text.split()[1:])
            return True
        try:
            result = self.runner.run(run_command(self.ctx, text))
        except (CommandError, NotFound) as exc:
            self.error(str(exc))
            return True
        except RedisError as exc:
            self.error(redis_error_line(text, exc))  # names a permission a user lacks
            return True
        except KeyboardInterrupt:
            self.error("interrupted")
            return True
        except Exception as exc:  # the session outlives any one command's failure
            self.error(f"{type(exc).__name__}: {exc}")
            return True
        if self.json_mode:
            self.console.print_json(json.dumps(result.data))
        else:
            self.console.print(result.renderable, soft_wrap=True)
        if _refreshes_names(text):
            self.refresh()
        return True

    def watch(self, args: list[str]) -> None:
        """``watch [SECONDS]``: the live dashboard until Ctrl-C or SECONDS have passed."""
        seconds: float | None = None
        if args:
            try:
                seconds = float(args[0])
            except ValueError:
                seconds = -1.0
            if len(args) > 1 or not 0 < seconds < float("inf"):
                self.error(f"usage: {WATCH_WORD} [SECONDS] (a positive number), got {args!r}")
                return
        ctx = self.ctx
        with contextlib.suppress(KeyboardInterrupt):
            self.runner.run(watch(ctx.client, ctx.keys, self.console, seconds, ctx.configured))

    def loop(self, read: Callable[[str], str] | None = None) -> int:
        """Read and run lines until ``quit``, ``exit`` or end of input; returns 0."""
        read = read or input
        while True:
            try:
                line = read(self.prompt)
            except EOFError:
                self.console.print()
                return 0
            except KeyboardInterrupt:
                self.console.print()
                continue
            if not self.handle(line):
                return 0


class _Completer:
    """The readline completer: ``completions`` of the line up to the cursor."""

    def __init__(self, repl: Repl) -> None:
        self.repl = repl
        self.matches: list[str] = []

    def __call__(self, text: str, state: int) -> str | None:
        if _readline is None:
            return None
        if state == 0:
            buffer = _readline.get_line_buffer()[: _readline.get_endidx()]
            repl = self.repl
            found = completions(buffer, repl.objects, repl.nodes, repl.series)
            self.matches = [word + " " for word in found]
        return self.matches[state] if state < len(self.matches) else None


def _setup_readline(repl: Repl, history: Path | None) -> None:
    if _readline is None:
        return
    _readline.set_completer(_Completer(repl))
    _readline.set_completer_delims(" \t\n")
    doc = _readline.__doc__ or ""
    _readline.parse_and_bind("bind ^I rl_complete" if "libedit" in doc else "tab: complete")
    _readline.set_history_length(HISTORY_LENGTH)
    if history is not None:
        with contextlib.suppress(OSError):
            _readline.read_history_file(history)


def _save_history(history: Path | None) -> None:
    if _readline is None or history is None:
        return
    with contextlib.suppress(OSError):
        history.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _readline.write_history_file(history)


def run_repl(ctx: ConsoleContext, runner: asyncio.Runner, banner: str = "", **options: Any) -> int:
    """The interactive session with line editing, history and completion; returns 0."""
    repl = Repl(ctx, runner, **options)
    history = history_path()
    _setup_readline(repl, history)
    repl.refresh()
    if banner:
        repl.console.print(Text(banner, style="dim"), soft_wrap=True)
    try:
        return repl.loop()
    finally:
        _save_history(history)
