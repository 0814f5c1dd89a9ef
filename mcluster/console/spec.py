"""The console's command table: Momentum's ``cluster ...`` commands, and which ones exist.

Help, dispatch and tab completion all read this one table, so they always agree.
"""

from __future__ import annotations

from dataclasses import dataclass


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


COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(("help",), "", "Display the available console commands."),
    CommandSpec(("abort",), "ID", "Abort the job with the specified id."),
    CommandSpec(("arp", "show"), "", "Show the MAC addresses of the cluster."),
    CommandSpec(("duravip", "show"), "[tables]", "Show DuraVIP bindings (or state tables)."),
    CommandSpec(("duravip", "move"), "FROM TO", "Move FROM's DuraVIP addresses to TO."),
    CommandSpec(("duravip", "announce", "view"), "", "Announce the local DuraVIP view."),
    CommandSpec(("duravip", "debug"), "on|off", "Turn DuraVIP debugging on or off."),
    CommandSpec(("membership",), "", "Display every live member of the cluster."),
    CommandSpec(("info",), "", "Display operating status and parameters."),
    CommandSpec(("nodename",), "", "Show the name of the local node."),
    CommandSpec(("nodeaddr",), "", "Show the node's cluster address."),
    CommandSpec(("reset",), "", "Leave and rejoin with a new epoch; re-publish the state."),
    CommandSpec(("shared", "list"), "", "Display the currently managed objects."),
    CommandSpec(
        ("shared", "show"),
        "OBJ [from NODE] [all | limit N]",
        "Display a shared object (global or from a node).",
    ),
    CommandSpec(("show", "logs"), "", "Show the cluster logs and their sizes."),
    CommandSpec(
        ("jobs",), "", "List jobs (re-syncs, reaping, broadcasts, DuraVIP moves) with progress."
    ),
    CommandSpec(
        ("broadcast",), "COMMAND", "Run a command on every node; print each answer.", top=True
    ),
    CommandSpec(("unicast",), "NODE COMMAND", "Run a command on one member.", top=True),
    CommandSpec(("config", "reload"), "", "Re-read the config file and apply it.", top=True),
)

#: Commands of Momentum's modules (``inbound_audit ...``, not ``cluster ...``): they run
#: like the others; ``cluster help`` lists the cluster module's commands only.
MODULE_COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec(
        ("inbound_audit", "show"),
        "ip ADDRESS_OR_CIDR",
        "Connections, receptions and rejections per monitor window.",
        top=True,
    ),
    CommandSpec(("audit_series", "list"), "", "List the named audit series.", top=True),
    CommandSpec(
        ("policy", "show"),
        "[QUOTA [KEY]] [from NODE]",
        "Postfix policy quotas: top keys by use against their limit, or one key.",
        top=True,
    ),
    CommandSpec(("policy", "reset"), "QUOTA KEY", "Clear one key of a policy quota.", top=True),
    CommandSpec(
        ("audit_series", "count"),
        "NAME KEY [START [END]] [from NODE]",
        "Sum a named audit series over windows START..END.",
        top=True,
    ),
    CommandSpec(
        ("shaping", "show"), "", "Shaping actions in force, AIMD rates, warm-up days.", top=True
    ),
    CommandSpec(
        ("shaping", "history"), "[NAME] [limit N]", "Recent shaping actions (audit).", top=True
    ),
    CommandSpec(("shaping", "clear"), "NAME DEST", "Lift a shaping action now.", top=True),
)

#: Words the REPL understands besides the commands.
REPL_WORDS: tuple[str, ...] = ("quit", "exit")
#: ``watch [SECONDS]`` in the REPL: the live dashboard until Ctrl-C (or SECONDS).
WATCH_WORD = "watch"


def match(words: list[str]) -> tuple[CommandSpec | None, list[str]]:
    """The command whose fixed words start ``words`` (lower-cased verbs), and the rest."""
    folded = [w.casefold() for w in words]
    best: CommandSpec | None = None
    for spec in (*COMMANDS, *MODULE_COMMANDS):
        n = len(spec.words)
        if tuple(folded[:n]) == spec.words and (best is None or n > len(best.words)):
            best = spec
    if best is None:
        return None, words
    return best, words[len(best.words) :]


def family(word: str) -> list[CommandSpec]:
    """The commands starting with ``word`` (for ``cluster duravip`` given alone)."""
    return [spec for spec in (*COMMANDS, *MODULE_COMMANDS) if spec.words[0] == word.casefold()]


def next_words(words: list[str]) -> list[str]:
    """Fixed command words that may follow ``words`` (already typed, complete)."""
    folded = tuple(w.casefold() for w in words)
    n = len(folded)
    found = {
        s.words[n]
        for s in (*COMMANDS, *MODULE_COMMANDS)
        if len(s.words) > n and s.words[:n] == folded
    }
    return sorted(found)
