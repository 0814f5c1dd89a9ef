"""Console commands of the policy service's quotas:

    policy show [QUOTA] [from NODE]       each quota's top keys by use against their limit
    policy show QUOTA KEY [from NODE]     one key: used, limit, retry_after_ms
    policy reset QUOTA KEY                clear one key (after fixing a compromised account)

Everything is read from Redis (the quotas the agents published), so a console needs no
config file. ``from NODE`` shows what that node admitted of each key.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mcluster.console.commands.base import (
    CommandSpec,
    ConsoleContext,
    Result,
    UsageError,
    command,
)
from mcluster.errors import InvalidValue
from mcluster.objects.policy import FAMILY
from mcluster.quotas import usage
from mcluster.quotas.usage import EMPTY_SHOWN, QuotaUse


def split_from(spec: CommandSpec, rest: list[str]) -> tuple[list[str], str | None]:
    """Arguments without a trailing ``from NODE``, and the node."""
    if len(rest) >= 2 and rest[-2].casefold() == "from":
        return rest[:-2], rest[-1]
    if rest and rest[-1].casefold() == "from":
        raise UsageError(f"'from' needs a node name; usage: {spec.usage}")
    return rest, None


def shown(key: str) -> str:
    return key if key else EMPTY_SHOWN


def retry_text(ms: int) -> str:
    return "now" if ms <= 0 else f"{-(-ms // 1000)} s"


def quota_table(quota: QuotaUse) -> Group:
    """A title line (the quota, its refusals), then its top keys."""
    info = quota.info
    tally = (
        f"would have refused {quota.would_refuse}"
        if info.action == "WARN"
        else f"refused {quota.refused}"
    )
    title = f'Quota "{info.name}": {info.key}, {info.limit} {info.count}, {info.action}; {tally}'
    table = Table(expand=False)
    for column in ("key", "used", "limit", "retry"):
        table.add_column(column, justify="left" if column == "key" else "right")
    for row in quota.top:
        table.add_row(shown(row.key), str(row.used), str(row.limit), retry_text(row.retry_after_ms))
    if not quota.top:
        table.add_row(Text("no key in use", style="dim"), "", "", "")
    return Group(Text(title, no_wrap=True, overflow="ellipsis"), table)


@command(
    "policy show",
    "[QUOTA [KEY]] [from NODE]",
    "Postfix policy quotas: top keys by use against their limit, or one key.",
    order=22,
    module=True,
)
async def show(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    args, node = split_from(spec, rest)
    if len(args) > 2:
        raise UsageError(f"unexpected {' '.join(args[2:])!r}; usage: {spec.usage}")
    okeys = ctx.keys.object(FAMILY)
    await usage.check_node(ctx.client, ctx.keys, node)
    if len(args) == 2:
        try:
            info, use = await usage.one_key(ctx.client, okeys, args[0], args[1], node)
        except InvalidValue as exc:
            raise UsageError(str(exc)) from None
        text = (
            f"{info.name} {shown(use.key)}: {use.used} of {use.limit} {use.count} per "
            f"{use.period:g} s{f' from {node}' if node else ''}; "
            f"retry {retry_text(use.retry_after_ms)}"
        )
        return Result(Text(text), {**use.to_json(), "action": info.action})
    quotas = await usage.overview(ctx.client, okeys, args[0] if args else None, node)
    tables: list[RenderableType] = [quota_table(q) for q in quotas]
    if not quotas:
        tables.append(Text("no quotas (no agent with Quota scopes has started)"))
    data = {"node": node, "quotas": [q.to_json() for q in quotas]}
    return Result(Group(*tables), data)


@command("policy reset", "QUOTA KEY", "Clear one key of a policy quota.", order=24, module=True)
async def reset(ctx: ConsoleContext, spec: CommandSpec, rest: list[str]) -> Result:
    if len(rest) != 2:
        raise UsageError(f"usage: {spec.usage}")
    okeys = ctx.keys.object(FAMILY)
    info = usage.find(await usage.load(ctx.client, okeys), rest[0])
    try:
        value = usage.key_value(info, rest[1])
    except InvalidValue as exc:
        raise UsageError(str(exc)) from None
    deleted = await usage.reset(ctx.client, okeys, info, value)
    return Result(
        Text(f"{info.name} {shown(value)}: cleared ({deleted} keys)"),
        {"quota": info.name, "key": value, "cleared": deleted},
    )
