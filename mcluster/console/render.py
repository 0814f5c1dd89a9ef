"""Rich renderables printing what Momentum's console printed, line for line.

Row lines are plain text (no colour, no highlighting, never wrapped) so an operator can
copy them; only headers and footers carry a subtle style.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from mcluster.console.spec import COMMANDS, CommandSpec
from mcluster.objects.views import Listing, ObjectInfo

HEADER_STYLE = "bold"
FOOTER_STYLE = "dim"
WARNING_STYLE = "yellow"


def line(text: str, style: str = "") -> Text:
    """One output line that rich never wraps, folds or highlights."""
    return Text(text, style=style, no_wrap=True, overflow="ignore", end="\n")


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def listing_header(listing: Listing) -> str:
    """``lazy, snapped cidrtree 'inbound_cidr', view 'global'``."""
    return f"lazy, snapped {listing.type} '{listing.object}', view '{listing.view}'"


def listing_row(listing_type: str, key: str, count: int) -> str:
    """One row as Momentum printed it: a CIDR tree's ``count  prefix`` or ``key:  count``."""
    if listing_type == "cidrtree":
        return f"{count:>7}{'':25}{key}"
    return f"{key:>60}:{count:>13}"  # Momentum's "%60s:%13d"


def show_command(listing: Listing, suffix: str) -> str:
    """The console command that shows ``listing`` again, with ``suffix`` (``all``)."""
    source = f" from {listing.node}" if listing.node is not None else ""
    return f"cluster shared show {listing.object}{source} {suffix}"


def omitted_line(listing: Listing) -> str:
    """``… 1,999,000 more rows not shown (1,000,000 addresses); use '...' to list them``."""
    unit = ("address", "addresses") if listing.type == "cidrtree" else ("key", "keys")
    return (
        f"… {plural(listing.omitted, 'more row', 'more rows')} not shown "
        f"({plural(listing.distinct_keys, *unit)}); "
        f"use '{show_command(listing, 'all')}' to list them"
    )


def anomalies_line(anomalies: int) -> str:
    were = "was" if anomalies == 1 else "were"
    return f"anomalies: {plural(anomalies, 'decrement')} below zero {were} clamped in this view"


class ListingView:
    """``cluster shared show OBJ [from NODE]``: header, rows, then what was left out."""

    def __init__(self, listing: Listing) -> None:
        self.listing = listing

    def lines(self) -> list[Text]:
        listing = self.listing
        out = [line(listing_header(listing), HEADER_STYLE)]
        out += [line(listing_row(listing.type, r.key, r.count)) for r in listing.rows]
        if listing.omitted > 0:
            out.append(line(omitted_line(listing), FOOTER_STYLE))
        if listing.anomalies > 0:
            out.append(line(anomalies_line(listing.anomalies), WARNING_STYLE))
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.lines()


class ObjectListView:
    """``cluster shared list``: the managed objects and what they are."""

    def __init__(self, infos: Sequence[ObjectInfo]) -> None:
        self.infos = list(infos)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield line("Currently managed objects:", HEADER_STYLE)
        for info in self.infos:
            yield line(f"{info.name:>30} [{info.kind.description}]")


class HelpView:
    """``cluster help``: every command of Momentum's console, marking those not built yet."""

    NOT_HERE = "(not in this release)"

    def __init__(self, commands: Iterable[CommandSpec] = COMMANDS) -> None:
        self.commands = list(commands)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield line("Available commands (the leading 'cluster' is optional):", HEADER_STYLE)
        width = max(len(c.usage) for c in self.commands) if self.commands else 0
        for spec in self.commands:
            text = Text(f"  {spec.usage:<{width}}  {spec.summary}", no_wrap=True, end="\n")
            if not spec.implemented:
                text.append(f" {self.NOT_HERE}", style=FOOTER_STYLE)
            yield text


class Message:
    """A single plain line (``cluster nodename``, ``cluster nodeaddr``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield line(self.text)
