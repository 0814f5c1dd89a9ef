"""``mcluster config check FILE``: show what a config defines, or every problem in it."""

from __future__ import annotations

import sys
from collections import Counter

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mcluster.config.constants import NESTED_USED_OPTIONS, USED_SCOPES
from mcluster.config.errors import ConfigError
from mcluster.config.models import ClusterConfig, load_config
from mcluster.config.tree import Scope


def _objects_table(config: ClusterConfig) -> Table:
    table = Table(title=Text(f"{config.source}: {len(config.objects)} replicated object(s)"))
    for column in ("name", "type", "parameters", "max_delay", "max_pending", "max_size"):
        table.add_column(column, no_wrap=column in ("name", "type"))
    table.add_column("binding_group")
    for obj in config.objects:
        cells = (
            obj.name,
            obj.type if obj.class_ in (None, obj.type) else f"{obj.type} (class {obj.class_})",
            ";".join(obj.parameters) or "-",
            f"{obj.max_delay:g}",
            str(obj.max_pending),
            str(obj.max_size),
            obj.binding_group or "-",
        )
        table.add_row(*(Text(cell) for cell in cells))
    return table


def _is_used(scope: Scope) -> bool:
    """Whether some part of mcluster reads this top-level scope or a scope inside it."""
    if any(scope.is_(kind) for kind in USED_SCOPES):
        return True
    return any(
        inner.get(option) is not None for _, inner in scope.walk() for option in NESTED_USED_OPTIONS
    )


def _count(scopes: list[Scope]) -> str:
    counts: Counter[str] = Counter()
    spelling: dict[str, str] = {}
    for scope in scopes:
        spelling.setdefault(scope.kind.casefold(), scope.kind)
        counts[scope.kind.casefold()] += 1
    return ", ".join(f"{spelling[k]} x{n}" for k, n in sorted(counts.items()))


def _scope_lines(config: ClusterConfig) -> list[str]:
    """``scopes used: ...`` and ``other scopes kept (not used by mcluster): ...``: top-level
    scopes besides ``cluster``, each kind counted once per line, every scope in one of them."""
    top = [scope for scope in config.tree.scopes() if not scope.is_("cluster")]
    used = [scope for scope in top if _is_used(scope)]
    kept = [scope for scope in top if not _is_used(scope)]
    lines = [f"scopes used: {_count(used)}"] if used else []
    if not kept:
        return [*lines, "other scopes kept: none"]
    return [*lines, f"other scopes kept (not used by mcluster): {len(kept)} ({_count(kept)})"]


def check_command(path: str) -> int:
    """Print the objects of the config at ``path`` and return 0, or its problems on stderr and 1."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = 160  # pipes and files get the whole table, not an 80-column squeeze
    if config.objects:
        console.print(_objects_table(config))
    else:
        console.print(Text(f"{config.source}: no Replicate stanzas in a cluster scope"))
    if config.options:
        keys = ", ".join(config.options)
        console.print(Text(f"cluster options: {keys}"))
    if config.audit_monitors:
        monitors = " ".join(f"{w}s x{n}" for w, n in config.audit_monitors)
        console.print(Text(f"inbound_audit monitors: {monitors}"))
    if config.datasources:
        console.print(Text(f"datasources: {', '.join(config.datasources)}"))
    for line in _scope_lines(config):
        console.print(Text(line))
    return 0
