"""The console's renderables, printed into a string: Momentum's output, line for line."""

from __future__ import annotations

import io

from rich.console import Console, RenderableType

from mcluster.console.commands import COMMANDS
from mcluster.console.commands.core import HelpView
from mcluster.console.render import ListingView, Message, ObjectListView
from mcluster.objects.cidrtree import Row
from mcluster.objects.kinds import CIDRTREE, GAUGE_TABLE
from mcluster.objects.views import Listing, ObjectInfo


def render(renderable: RenderableType, width: int = 120) -> list[str]:
    buffer = io.StringIO()
    Console(file=buffer, width=width).print(renderable)
    return buffer.getvalue().splitlines()


def listing(
    rows: list[Row],
    *,
    type_: str = "cidrtree",
    obj: str = "inbound_cidr",
    view: str = "global",
    node: str | None = None,
    total: int | None = None,
    distinct: int = 0,
    anomalies: int = 0,
) -> Listing:
    return Listing(
        object=obj,
        type=type_,
        view=view,
        node=node,
        rows=rows,
        total_rows=len(rows) if total is None else total,
        distinct_keys=distinct,
        anomalies=anomalies,
    )


MOMENTUM_CIDR = [
    Row("10.0.0.0/8", 31),
    Row("10.0.0.0/24", 31),
    Row("10.0.0.103/32", 4),
    Row("10.0.0.180/31", 27),
    Row("10.0.0.180/32", 14),
    Row("10.0.0.181/32", 13),
]


def test_cidrtree_listing_matches_momentum() -> None:
    assert render(ListingView(listing(MOMENTUM_CIDR, distinct=3))) == [
        "lazy, snapped cidrtree 'inbound_cidr', view 'global'",
        "     31                         10.0.0.0/8",
        "     31                         10.0.0.0/24",
        "      4                         10.0.0.103/32",
        "     27                         10.0.0.180/31",
        "     14                         10.0.0.180/32",
        "     13                         10.0.0.181/32",
    ]


def test_node_view_header_names_the_private_name() -> None:
    view = listing([], view="#e7-41235#relay-0-1", node="relay-0-1")
    assert render(ListingView(view)) == [
        "lazy, snapped cidrtree 'inbound_cidr', view '#e7-41235#relay-0-1'"
    ]


def test_gauge_table_listing_matches_momentum() -> None:
    rows = [Row("aol.com", 10), Row("bellsouth.net", 23), Row("hotmail.com", 246)]
    lines = render(ListingView(listing(rows, type_="gauge table", obj="outbound_domain")))
    assert lines == [
        "lazy, snapped gauge table 'outbound_domain', view 'global'",
        # copied from the reference (7.7.1.3)
        "                                                     aol.com:           10",
        "                                               bellsouth.net:           23",
        "                                                 hotmail.com:          246",
    ]


def test_omitted_rows_footer_tells_how_to_list_them() -> None:
    rows = [Row(f"10.0.{i // 256}.{i % 256}/32", 1) for i in range(1000)]
    view = listing(rows, total=2_000_000, distinct=1_000_000)
    assert view.omitted == 1_999_000
    assert render(ListingView(view))[-1] == (
        "… 1,999,000 more rows not shown (1,000,000 addresses); "
        "use 'cluster shared show inbound_cidr all' to list them"
    )


def test_omitted_footer_of_a_node_view_keeps_from_node() -> None:
    view = listing(
        [Row("a.com", 1)],
        type_="gauge table",
        obj="outbound_domains",
        view="#e2-1#relay-0-2",
        node="relay-0-2",
        total=2,
        distinct=2,
    )
    assert render(ListingView(view))[-1] == (
        "… 1 more row not shown (2 keys); "
        "use 'cluster shared show outbound_domains from relay-0-2 all' to list them"
    )


def test_anomalies_line() -> None:
    assert render(ListingView(listing(MOMENTUM_CIDR, anomalies=3)))[-1] == (
        "anomalies: 3 decrements below zero were clamped in this view"
    )
    assert render(ListingView(listing([], anomalies=1)))[-1] == (
        "anomalies: 1 decrement below zero was clamped in this view"
    )


def test_rows_are_never_wrapped_or_coloured() -> None:
    key = "binding-" + "x" * 100 + "::example.com"
    buffer = io.StringIO()
    console = Console(file=buffer, width=60, force_terminal=True, color_system="truecolor")
    console.print(ListingView(listing([Row(key, 5)], type_="gauge table")), soft_wrap=True)
    header, row = buffer.getvalue().splitlines()
    assert "\x1b[" in header  # the header is styled...
    assert row == f"{key}:{5:>13}"  # ...the row is plain and on one line


def test_object_list_matches_momentum() -> None:
    infos = [
        ObjectInfo("inbound_cidr", "inbound_cidr", CIDRTREE),
        ObjectInfo("outbound_cidr", "outbound_cidr", CIDRTREE),
        ObjectInfo("outbound_domains", "outbound_domains", GAUGE_TABLE),
    ]
    assert render(ObjectListView(infos)) == [
        "Currently managed objects:",
        "                  inbound_cidr [lazy, cidrtree w/ snapshots]",
        "                 outbound_cidr [lazy, cidrtree w/ snapshots]",
        "              outbound_domains [lazy, gauge table w/ snapshots]",
    ]


def test_help_lists_every_command_of_the_reference() -> None:
    text = "\n".join(render(HelpView()))
    for usage in (
        "cluster help",
        "cluster abort ID",
        "cluster arp show",
        "cluster duravip show [tables]",
        "cluster duravip move FROM TO",
        "cluster duravip announce view",
        "cluster duravip debug on|off",
        "cluster membership",
        "cluster info",
        "cluster nodename",
        "cluster nodeaddr",
        "cluster reset",
        "cluster shared list",
        "cluster shared show OBJ [from NODE] [all | limit N]",
        "cluster show logs",
        "broadcast COMMAND",
        "unicast NODE COMMAND",
        "cluster jobs",
        "config reload",
    ):
        assert f"  {usage}  " in text, usage
    assert len(COMMANDS) == 19


def test_help_marks_what_this_release_lacks() -> None:
    lines = render(HelpView())[1:]
    marked = {ln.split("  ")[1].strip() for ln in lines if ln.endswith("(not in this release)")}
    assert "cluster membership" not in marked
    assert "cluster reset" not in marked
    assert "cluster duravip move FROM TO" not in marked
    available = [ln for ln in lines if not ln.endswith("(not in this release)")]
    words = [ln.split() for ln in available]
    assert [w[1] if w[0] == "cluster" else w[0] for w in words] == [
        "help",
        "abort",
        "arp",
        "duravip",
        "duravip",
        "duravip",
        "duravip",
        "membership",
        "info",
        "nodename",
        "nodeaddr",
        "reset",
        "shared",
        "shared",
        "show",
        "jobs",
        "broadcast",
        "unicast",
        "config",
    ]
    assert max(len(ln) for ln in lines) <= 120


def test_message_is_one_plain_line() -> None:
    assert render(Message("127.0.0.1:4802")) == ["127.0.0.1:4802"]
