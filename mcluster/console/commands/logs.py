"""``cluster show logs``: per shipped log, the bytes the manager wrote to disk and where
its subscriber ``master`` stands (lines delivered, in Momentum's ``%08x:%08x`` shape)."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text

from mcluster.console.commands.base import CommandSpec, ConsoleContext, Result, command, no_args
from mcluster.logs.collector import GROUP
from mcluster.logs.config import registry, stats
from mcluster.store.keys import text


def position(lines: int) -> str:
    return f"{0:08x}:{lines:08x}"


@command("show logs", "", "Show the cluster logs and their sizes.", order=150)
async def show_logs(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    no_args(spec, rest)
    names = {text(k).partition(" ")[0] for k in await ctx.client.hkeys(registry(ctx.keys))}
    raw = await ctx.client.hgetall(stats(ctx.keys))
    figures = {text(k): json.loads(v) for k, v in raw.items()}
    data: dict[str, Any] = {}
    lines = []
    for name in sorted(names | set(figures)):
        got = figures.get(name, {})
        on_disk, delivered = int(got.get("bytes_on_disk", 0)), int(got.get("lines", 0))
        data[name] = {"bytes_on_disk": on_disk, "subscribers": {GROUP: position(delivered)}}
        lines += [name, f"\t[on disk: {on_disk} bytes]",
                  f"\t[subscriber: '{GROUP}' @ {position(delivered)}]"]  # fmt: skip
    return Result(Text("\n".join(lines) or "(no logs shipped)"), data)
