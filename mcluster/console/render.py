"""Rich renderables printing what Momentum's console printed, line for line.

Row lines are plain text (no colour, no highlighting, never wrapped) so an operator can
copy them; only headers and footers carry a subtle style.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from mcluster.objects.cache_registry import CacheInfo
from mcluster.objects.views import Listing, ObjectInfo
from mcluster.store.cluster_view import ClusterInfo, MemberView

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


def listing_row(listing_type: str, key: str, count: int, limit: str | None = None) -> str:
    """One row as Momentum printed it: a CIDR tree's ``count  prefix`` or ``key:  count``;
    a throttle adds its rate: ``t1:  12 / 1000/10``."""
    if listing_type == "cidrtree":
        return f"{count:>7}{'':25}{key}"
    row = f"{key:>60}:{count:>13}"  # Momentum's "%60s:%13d"
    return f"{row} / {limit}" if limit else row


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
        out += [line(listing_row(listing.type, r.key, r.count, r.limit)) for r in listing.rows]
        if listing.omitted > 0:
            out.append(line(omitted_line(listing), FOOTER_STYLE))
        if listing.anomalies > 0:
            out.append(line(anomalies_line(listing.anomalies), WARNING_STYLE))
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.lines()


class ObjectListView:
    """``cluster shared list``: the managed objects and what they are."""

    def __init__(self, infos: Sequence[ObjectInfo | CacheInfo]) -> None:
        self.infos = list(infos)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield line("Currently managed objects:", HEADER_STYLE)
        for info in self.infos:
            yield line(f"{info.name:>30} [{info.description}]")


NO_ADDRESS = "0.0.0.0:0"
NULL = "(Null)"


def seconds_ago(ms: int | None) -> str:
    """``0.4 s ago`` (``never`` when there is no time)."""
    return "never" if ms is None else f"{ms / 1000:.1f} s ago"


def membership_block(member: MemberView) -> list[str]:
    """One member as Momentum printed it, plus its last heartbeat."""
    return [
        f"Private Name: {member.private_name}",
        f"Node Name: {member.node or NULL}",
        f"Subcluster: {member.subcluster or NULL}",
        f"Node Type: {member.type}",
        f"Version: {member.version}",
        f"Address: {member.address or NO_ADDRESS}",
        f"Groups: {', '.join(member.groups)}",
        f"Last Heartbeat: {seconds_ago(member.last_heartbeat_ms_ago)}",
    ]


def reaping_line(job: Mapping[str, Any]) -> str:
    """``Reaping: inbound_cidr view #e5-123#relay-0-2: 1,200/5,000 keys``."""
    return f"Reaping: {job['object']} view {job['view']}: {job['done']:,}/{job['total']:,} keys"


def info_lines(info: ClusterInfo) -> list[str]:
    """``cluster info``: Momentum's four lines, then epoch, lease, leader and reaping."""
    daemon = info.daemon or "-"
    whom = info.private_name or info.node or "console"
    leader = f"{info.leader} is leader" if info.leader is not None else "no leader"
    out = [
        f"Daemon: {daemon} [{whom}]",
        f"Control Group: {info.control_group}",
        f"Cluster Group: {info.cluster_group} ({leader})",
        f"Logger Group: {info.logger_group or 'none'}",
        f"Epoch: {info.epoch if info.epoch is not None else 'none'}",
    ]
    if info.node is not None:
        if info.lease_held is None:
            out.append(f"Lease: none ({info.node} is not a member)")
        else:
            state = "renewed" if info.lease_held else "expired, last renewed"
            out.append(f"Lease: {state} {seconds_ago(info.lease_renewed_ms_ago)}")
    token = info.leader_token
    out.append(f"Leader Token: {token if token is not None else 'none'}")
    out.append(f"Members: {info.members:,} live")
    out += [reaping_line(job) for job in info.reaping] or ["Reaping: none"]
    return out


class MembershipView:
    """``cluster membership``: one block per live member, a blank line between blocks."""

    def __init__(self, rows: Sequence[MemberView]) -> None:
        self.rows = list(rows)

    def lines(self) -> list[str]:
        out: list[str] = []
        for i, member in enumerate(self.rows):
            if i:
                out.append("")
            out += membership_block(member)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if not self.rows:
            yield line("no live members", FOOTER_STYLE)
        for text in self.lines():
            yield line(text)


class InfoView:
    """``cluster info``: the attached node, the groups, the leader, and reaping."""

    def __init__(self, info: ClusterInfo) -> None:
        self.info = info

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for text in info_lines(self.info):
            yield line(text)


class Message:
    """A single plain line (``cluster nodename``, ``cluster nodeaddr``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield line(self.text)
