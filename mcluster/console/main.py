"""``mcluster console``: run one command (``-c``) or an interactive session.

Exit status: 0 ok, 1 error, 2 unknown object or node. Errors are one line on stderr,
``mcluster: <message>``, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys

from redis.asyncio import Redis
from redis.exceptions import RedisError
from rich.console import Console
from rich.text import Text

from mcluster.config import ClusterConfig, ConfigError, load_config
from mcluster.config.connection import configured_redis_url, resolve_namespace
from mcluster.console.commands import (
    EXIT_ERROR,
    CommandError,
    ConsoleContext,
    NotFound,
    exit_code,
    run_command,
)
from mcluster.console.dashboard import watch as watch_dashboard
from mcluster.console.repl import run_repl
from mcluster.security.readonly import missing_permission, redis_error_line
from mcluster.store.connect.access import RedisAccessError, check_access
from mcluster.store.connect.embedded import EmbeddedRedisError
from mcluster.store.connect.urls import (
    RedisUrlError,
    make_async_client,
    redact_url,
    resolve_redis_url,
)
from mcluster.store.keys import ClusterKeys, check_name

__all__ = ["EXIT_INTERRUPTED", "console_main"]

EXIT_INTERRUPTED = 130


def _fail(message: str) -> None:
    err = Console(stderr=True, highlight=False)
    err.print(Text(f"mcluster: {message}", style="red"), soft_wrap=True)


def console_main(
    redis_url: str | None,
    config_path: str | None,
    node: str | None,
    command: str | None,
    json_mode: bool,
    namespace: str | None = None,
    timeout: float = 5.0,
    *,
    watch: bool = False,
    seconds: float | None = None,
) -> int:
    """Run ``command`` once, the live dashboard (``watch``, for ``seconds`` or until
    Ctrl-C), or the interactive console; returns the exit code."""
    config: ClusterConfig | None = None
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            for issue in exc.issues:
                _fail(str(issue))
            return EXIT_ERROR
    if not 0 < timeout <= 3600:
        _fail(f"--timeout must be between 0 and 3600 seconds, got {timeout:g}")
        return EXIT_ERROR
    try:
        keys = ClusterKeys(resolve_namespace(namespace, config))
        if node is not None:
            check_name("node", node)
        url = resolve_redis_url(redis_url, configured=configured_redis_url(config))
        writable = check_access(url, keys, read_only_ok=True)  # False: a read-only user
    except (RedisUrlError, EmbeddedRedisError, ValueError, RedisAccessError) as exc:
        _fail(str(exc))
        return EXIT_ERROR
    configured = [(o.name, o.type) for o in config.objects] if config is not None else []
    try:
        with asyncio.Runner() as runner:
            client = make_async_client(url)
            ctx = ConsoleContext(client, keys, node, configured, timeout, config=config)
            try:
                if watch:
                    return _watch(runner, ctx, seconds)
                if command is not None:
                    return _run_once(runner, ctx, command, json_mode, url)
                banner = (
                    f"mcluster console on {redact_url(url)}, namespace {keys.namespace!r}"
                    f"{'' if writable else ' (read-only Redis user)'}; "
                    "'cluster help' lists the commands, 'quit' leaves"
                )
                return run_repl(ctx, runner, banner, json_mode=json_mode)
            finally:
                runner.run(_close(client))
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED


async def _close(client: Redis) -> None:
    with contextlib.suppress(RedisError, OSError):
        await client.aclose()


def _watch(runner: asyncio.Runner, ctx: ConsoleContext, seconds: float | None) -> int:
    """The dashboard until ``seconds`` pass or Ctrl-C (which ends it normally: exit 0)."""
    console = Console(highlight=False)
    with contextlib.suppress(KeyboardInterrupt):
        runner.run(watch_dashboard(ctx.client, ctx.keys, console, seconds, ctx.configured))
    return 0


def _run_once(
    runner: asyncio.Runner, ctx: ConsoleContext, command: str, json_mode: bool, url: str
) -> int:
    try:
        result = runner.run(run_command(ctx, command))
    except (CommandError, NotFound) as exc:
        _fail(str(exc))
        return exit_code(exc)
    except RedisError as exc:
        if missing_permission(exc) is not None:  # a read-only user: say which permission
            _fail(redis_error_line(command, exc))
        else:
            _fail(f"Redis error at {redact_url(url)}: {exc}")
        return EXIT_ERROR
    except OSError as exc:
        _fail(f"Redis error at {redact_url(url)}: {exc}")
        return EXIT_ERROR
    if json_mode:
        sys.stdout.write(json.dumps(result.data) + "\n")
        sys.stdout.flush()
    else:
        Console(highlight=False).print(result.renderable, soft_wrap=True)
    return 0
