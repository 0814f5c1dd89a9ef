"""The live dashboard (``mcluster console --watch``, ``watch`` in the console).

``render`` is a pure function from a Snapshot to a rich renderable that fits the screen
(readable at 80x24: the most useful panels first, each cropped to its region);
``render_plain`` is the same tables stacked in ASCII for a pipe or a log file.
``watch`` refreshes about once a second: a ``Live`` screen on a terminal, a plain frame
per refresh otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterable, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich import box
from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.live import Live
from rich.padding import Padding
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mcluster.console.snapshot import ObjectTop, Snapshot, SnapshotReader
from mcluster.store.keys import ClusterKeys

REFRESH = 1.0
NEAR_LIMIT = 0.5  # throttles at or above this share of their limit are shown
MAX_LINES = 4  # rows per small table (replication, throttles, anomalies, jobs)
NODE_COLUMN = 6  # characters a node's count column takes
KEY_AND_GLOBAL = 22  # the key and global columns of an object table, and the gutter
STALE_MS = 5_000  # a lag above this, or a node's report older than this, is yellow


def _ago(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{ms / 1000:.1f}s" if ms < 60_000 else f"{ms // 60_000}m"


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def short_names(nodes: Iterable[str]) -> list[str]:
    """Column labels: node names without the prefix they all share (relay-0-1 -> 1)."""
    names = list(nodes)
    if len(names) < 2:
        return names
    prefix = os.path.commonprefix(names)  # noqa: RUF071 (names, not paths)
    return [name[len(prefix) :] or name for name in names]


def _table(
    title: str, *columns: str, ascii_box: bool = False, left: int = 1, text: tuple[int, ...] = ()
) -> Table:
    """A compact table: borderless and as wide as its region on a screen (the first
    column takes the rest, cut with an ellipsis), boxed in ASCII for plain text. The first
    ``left`` columns and those numbered in ``text`` are text (left-justified), the others
    numbers."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.ASCII if ascii_box else None,
        show_edge=ascii_box,
        padding=(0, 1),
        pad_edge=False,
        expand=not ascii_box,
    )
    for i, name in enumerate(columns):
        first = i == 0
        table.add_column(
            name,
            justify="left" if i < left or i in text else "right",
            no_wrap=True,
            overflow="ellipsis",
            min_width=6 if first else None,
            ratio=1 if first else None,
            header_style="dim",
        )
    return table


def header(s: Snapshot) -> Text:
    when = time.strftime("%H:%M:%S", time.gmtime(s.server_time_ms / 1000))
    if s.error is not None:
        return Text(f"mcluster {s.namespace!r} {when}  {s.error}", style="red")
    leader = f"leader {s.leader} (epoch {s.epoch})" if s.leader else "no leader"
    text = Text(f"mcluster {s.namespace!r}  ", style="bold")
    text.append(f"{len(s.members)} live  {leader}  {when} UTC", style="")
    return text


def members_table(s: Snapshot, ascii_box: bool = False) -> Table:
    table = _table("Members", "node", "epoch", "lease", "", ascii_box=ascii_box)
    for m in s.members:
        role = "leader" if m.leader else "manager" if m.manager else ""
        table.add_row(m.node, str(m.epoch), _ago(m.heartbeat_ms_ago), role)
    if not s.members:
        table.add_row(Text("no live members", style="dim"), "", "", "")
    return table


def _ms(ms: float | None) -> str:
    """12ms, 3.4ms, 1.2s: a lag or staleness, short."""
    if ms is None:
        return "-"
    if ms >= 1000:
        return _ago(int(ms))
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def replication_table(s: Snapshot, ascii_box: bool = False) -> Table:
    """Per node, as it reported with its last heartbeat: its worst replication lag since
    the previous one (a delta recorded -> applied in Redis, visible in the global view)
    and the p99 staleness of its cache replicas (a set elsewhere -> visible here). With
    ``ascii_box`` (plain text) the object and cache they come from too."""
    wide = ("object", "stale", "cache") if ascii_box else ("stale",)
    columns = ("node", "lag", *wide)
    table = _table("Replication lag, staleness", *columns, ascii_box=ascii_box, text=(2, 4))
    for line in s.replication[:MAX_LINES]:
        old = line.reported_ms_ago is not None and line.reported_ms_ago > STALE_MS
        if line.lag_ms is None or old:
            # never reported, or its heartbeats stopped: its figures are unknown
            lag = Text(f"?{_ago(line.reported_ms_ago)}" if old else "-", style="yellow")
        else:
            lag = Text(_ms(line.lag_ms), style="yellow" if line.lag_ms > STALE_MS else "")
        stale = _ms(line.staleness_ms)
        extra = (line.lag_object or "-", stale, line.staleness_cache or "-") if ascii_box else ()
        table.add_row(line.node, lag, *(extra or (stale,)))
    if not s.replication:
        table.add_row(Text("no nodes", style="dim"), *["" for _ in columns[1:]])
    return table


def throttles_table(s: Snapshot, ascii_box: bool = False) -> Table:
    near = [t for t in s.throttles if t.fraction >= NEAR_LIMIT]
    table = _table("Throttles near limit", "throttle", "used", "rate", ascii_box=ascii_box)
    for t in near[:MAX_LINES]:
        style = "red" if t.fraction >= 0.9 else "yellow"
        table.add_row(t.name, Text(f"{t.fraction:.0%}", style=style), t.rate)
    if not near:
        table.add_row(Text(f"{len(s.throttles)} throttles, none near", style="dim"), "", "")
    return table


def anomalies_table(s: Snapshot, ascii_box: bool = False) -> Table | None:
    """Views where decrements below zero were clamped; None (no panel) when there are none."""
    rows = [(a.view, a.object, Text(f"{a.count:,}", style="yellow")) for a in s.anomalies]
    return _optional("Anomalies (clamped)", ("view", "object", "count"), rows, ascii_box)


def jobs_table(s: Snapshot, ascii_box: bool = False) -> Table | None:
    """Running jobs with progress bars; None (no panel) when nothing runs."""
    rows = [
        (
            job.what,
            ProgressBar(total=max(job.total, 1), completed=job.done, width=8),
            f"{job.done:,}/{job.total:,}",
        )
        for job in s.jobs
    ]
    return _optional("Jobs", ("job", "", "done"), rows, ascii_box)


def shaping_table(s: Snapshot, ascii_box: bool = False) -> Table | None:
    """Shaping actions in force with the seconds left; None (no panel) when none."""
    rows = [
        (a.rule, a.destination, f"{a.action} {a.value}".strip(),
         Text(f"{a.remaining_ms / 1000:.0f}s", style="yellow"))
        for a in s.shaping
    ]  # fmt: skip
    return _optional("Shaping", ("rule", "destination", "action", "left"), rows, ascii_box)


def quotas_table(s: Snapshot, ascii_box: bool = False) -> Table | None:
    """Policy quota keys nearest their limit; None (no panel) when no key is in use."""
    rows = [
        (
            f"{q.quota} {q.key or '<>'}",
            Text(f"{q.used:,}/{q.limit:,}", style="red" if q.fraction >= 0.9 else ""),
        )
        for q in s.quotas
    ]
    return _optional("Quotas nearest limit", ("quota key", "used"), rows, ascii_box)


def _optional(
    title: str, columns: tuple[str, ...], rows: Sequence[Sequence[RenderableType]], ascii_box: bool
) -> Table | None:
    if not rows:
        return None
    table = _table(title, *columns, ascii_box=ascii_box, left=len(columns) - 1)
    for row in rows[:MAX_LINES]:
        table.add_row(*row)
    return table


def object_table(top: ObjectTop, labels: list[str], ascii_box: bool = False) -> Table:
    """One object's top rows: the global count, then each node's, side by side."""
    title = f"{top.name} ({top.total_rows:,} rows)"
    table = _table(title, "key", "global", *labels, ascii_box=ascii_box)
    for row in top.rows:
        counts = [_n(c) for c in row.per_node[: len(labels)]]
        table.add_row(row.key, f"{row.global_count:,}", *counts)
    if not top.rows:
        table.add_row(Text("empty", style="dim"), "", *["" for _ in labels])
    return table


def _side_panels(s: Snapshot, ascii_box: bool = False) -> list[RenderableType]:
    tables = [
        members_table(s, ascii_box),
        jobs_table(s, ascii_box),
        shaping_table(s, ascii_box),
        quotas_table(s, ascii_box),
        throttles_table(s, ascii_box),
        replication_table(s, ascii_box),
        anomalies_table(s, ascii_box),
    ]
    return [t for t in tables if t is not None]


def render(s: Snapshot, width: int = 80) -> RenderableType:
    """The dashboard for a screen ``width`` columns wide: status on the left, the top of
    every object (global and per node) on the right; each side cropped to the screen."""
    left = max(30, min(48, width * 9 // 20))
    columns = max(0, (width - left - KEY_AND_GLOBAL) // NODE_COLUMN)
    labels = short_names(s.nodes)[:columns]
    layout = Layout()
    layout.split_column(Layout(header(s), size=1), Layout(name="body"))
    body = layout["body"]
    body.split_row(Layout(name="left", size=left), Layout(name="right"))
    body["left"].update(Group(*_side_panels(s)))
    objects: list[RenderableType] = [object_table(top, labels) for top in s.objects]
    if not objects:
        objects = [Text("no objects yet", style="dim")]
    body["right"].update(Padding(Group(*objects), (0, 0, 0, 2)))
    return layout


def render_plain(s: Snapshot) -> RenderableType:
    """The same tables one below the other in ASCII, for a pipe or a log file."""
    labels = short_names(s.nodes)
    parts: list[RenderableType] = [header(s), *_side_panels(s, ascii_box=True)]
    parts += [object_table(top, labels, ascii_box=True) for top in s.objects]
    return Group(*parts)


async def safe_snapshot(reader: SnapshotReader) -> Snapshot:
    """A snapshot, or an empty one saying why Redis could not be read (the watch goes on)."""
    try:
        return await reader.read()
    except (RedisError, OSError) as exc:
        namespace = reader.keys.namespace
        return Snapshot(namespace, int(time.time() * 1000), error=f"Redis error: {exc}")


async def watch(
    client: Redis,
    keys: ClusterKeys,
    console: Console,
    seconds: float | None = None,
    configured: Iterable[tuple[str, str]] = (),
    interval: float = REFRESH,
) -> int:
    """Refresh the dashboard every ``interval`` seconds for ``seconds`` (None: until
    cancelled); returns the number of frames shown."""
    reader = SnapshotReader(client, keys, list(configured))
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds if seconds is not None else float("inf")
    frames = 0
    live = Live(console=console, screen=True, auto_refresh=False) if console.is_terminal else None
    with live if live is not None else contextlib.nullcontext():
        while True:
            snap = await safe_snapshot(reader)
            frames += 1
            if live is not None:
                live.update(render(snap, console.size.width), refresh=True)
            else:
                console.print(Text(f"--- frame {frames}", style="dim"))
                console.print(render_plain(snap))
            pause = min(interval, end - loop.time())
            if pause <= 0:
                return frames
            await asyncio.sleep(pause)
