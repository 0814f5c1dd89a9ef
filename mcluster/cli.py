"""The ``mcluster`` command: agent, console, config check, demo, and the embedded Redis."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from mcluster import __version__
from mcluster.config import ClusterConfig, ConfigError, check_command, load_config
from mcluster.config.connection import configured_redis_url, resolve_namespace
from mcluster.errors import Error
from mcluster.faces.loop import LOOPS, loop_factory
from mcluster.security import agent_flags
from mcluster.security.clients import policy_guard
from mcluster.security.errors import GuardError
from mcluster.security.token import ENV_TOKEN_FILE, ApiToken
from mcluster.store.connect.access import RedisAccessError, check_access
from mcluster.store.connect.embedded import (
    EmbeddedRedisError,
    ensure_embedded_redis,
    stop_embedded_redis,
)
from mcluster.store.connect.urls import RedisUrlError, redact_url, resolve_redis_url
from mcluster.store.keys import ClusterKeys

ENV_NODE = "MCLUSTER_NODE"
ENV_CONFIG = "MCLUSTER_CONFIG"
REDIS_HELP = "Redis URL (default: $MCLUSTER_REDIS_URL, else the config's redis, else embedded)"
NAMESPACE_HELP = "key namespace (default: $MCLUSTER_NAMESPACE, else the config's, else mc)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcluster",
        description="Cluster-wide data replication for mail servers, on Redis.",
    )
    parser.add_argument("--version", action="version", version=f"mcluster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = sub.add_parser("agent", help="run the node agent beside one MTA")
    agent.add_argument("--config", default=os.environ.get(ENV_CONFIG), help="cluster config")
    agent.add_argument("--node", default=os.environ.get(ENV_NODE), help="this node's name")
    agent.add_argument("--redis", help=REDIS_HELP)
    agent.add_argument("--namespace", help=NAMESPACE_HELP)
    agent.add_argument("--listen", default="127.0.0.1:4802", help="HTTP API address")
    agent.add_argument(
        "--policy",
        metavar="HOST:PORT|unix:PATH",
        help="serve Postfix's policy protocol on a TCP port or a Unix socket",
    )
    agent.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    agent.add_argument(
        "--loop",
        choices=LOOPS,
        default="auto",
        help="event loop: uvloop when installed (auto, the default), uvloop, or asyncio",
    )
    agent_flags.add_flags(agent)

    console = sub.add_parser("console", help="the operator console (Momentum's commands)")
    console.add_argument("--redis", help=REDIS_HELP)
    console.add_argument("--config", default=os.environ.get(ENV_CONFIG), help="cluster config")
    console.add_argument("--node", default=os.environ.get(ENV_NODE), help="node to attach to")
    console.add_argument("--namespace", help=NAMESPACE_HELP)
    console.add_argument("-c", dest="cmd", metavar="COMMAND", help="run one command and exit")
    console.add_argument("--json", action="store_true", help="machine-readable output")
    console.add_argument("--watch", action="store_true", help="the live dashboard")
    console.add_argument("--seconds", type=float, help="with --watch: stop after N seconds")
    console.add_argument(
        "--timeout", type=float, default=5.0, help="seconds broadcast/unicast wait (default 5)"
    )

    manager = sub.add_parser("manager", help="run the cluster manager (eccmgr) in the foreground")
    manager.add_argument("--config", default=os.environ.get(ENV_CONFIG), help="cluster config")
    manager.add_argument("--redis", help=REDIS_HELP)
    manager.add_argument("--namespace", help=NAMESPACE_HELP)
    manager.add_argument("--name", help="member name (default: manager-HOSTNAME)")
    manager.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")

    config = sub.add_parser("config", help="work with config files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="parse a config and list its objects")
    check.add_argument("file")

    demo = sub.add_parser("demo", help="run a small farm of agents on one machine")
    demo.add_argument("--nodes", type=int, default=3, help="number of node agents (default 3)")
    demo.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--no-dashboard", action="store_true", help="plain progress output")
    demo.add_argument("--redis", help="Redis URL (default: the embedded one)")
    demo.add_argument(
        "--keep-redis",
        action="store_true",
        help="leave the embedded Redis running if the demo started it (default: stop it)",
    )

    smtp = sub.add_parser("smtp", help="the demo SMTP server (aiosmtpd) beside an agent")
    smtp.add_argument("--agent", default="http://127.0.0.1:4802", help="its agent's HTTP API")
    smtp.add_argument("--listen", default="127.0.0.1:2525", help="SMTP address")
    smtp.add_argument("--max-connections", type=int, default=8, help="per /24, cluster-wide")
    smtp.add_argument("--throttle", default="demo_messages", help="shared throttle per message")
    smtp.add_argument("--rate", default="100/5", help="the throttle's rate (defined at start)")
    smtp.add_argument("--audit", action="store_true", help='inbound audit (Replicate "metrics")')
    smtp.add_argument(
        "--api-token-file",
        metavar="FILE",
        default=os.environ.get(ENV_TOKEN_FILE) or None,
        help=f"the agent's API token (default: ${ENV_TOKEN_FILE})",
    )

    redis_cmd = sub.add_parser("redis", help="the embedded Redis server")
    redis_cmd.add_argument("action", choices=["start", "stop", "url"])
    return parser


def _agent(args: argparse.Namespace) -> int:
    from mcluster.faces.listen import UnixAddress, claim, policy_address, split_listen
    from mcluster.faces.main import run_agent

    host, _ = split_listen(args.listen)
    agent_flags.check_listen(host, args.api_token_file)  # first: an open API never starts
    if not args.config:
        return _fail("agent needs --config FILE (or $MCLUSTER_CONFIG)", 2)
    if not args.node:
        return _fail("agent needs --node NAME (or $MCLUSTER_NODE)", 2)
    policy_at = policy_address(args.policy) if args.policy else None
    if isinstance(policy_at, UnixAddress):  # in use, or no folder: said before joining
        claim(policy_at.path)
    guard, tls = agent_flags.guard_from_args(args, host)  # refuses an open API: exit 1
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(args.config)
    if isinstance(policy_at, tuple):  # smtpd off this host needs Policy { clients }: exit 1
        policy_guard(config).check_listen(policy_at[0])
    url, namespace = _checked_redis(args, config)
    try:
        factory = loop_factory(args.loop)  # --loop uvloop without uvloop: exit 2, said why
    except Error as exc:
        return _fail(str(exc), 2)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                run_agent(config, args.node, url, args.listen, policy_at, namespace, guard, tls)
            )
    except (RedisConnectionError, OSError) as exc:
        return _fail(f"cannot reach Redis at {redact_url(url)}: {exc}")
    return 0


def _console(args: argparse.Namespace) -> int:
    from mcluster.console import console_main

    if args.seconds is not None and not (args.watch and 0 < args.seconds < float("inf")):
        return _fail(f"--seconds needs --watch and a positive number, got {args.seconds:g}", 2)
    return console_main(
        args.redis,
        args.config,
        args.node,
        args.cmd,
        args.json,
        args.namespace,
        args.timeout,
        watch=args.watch,
        seconds=args.seconds,
    )


def _manager(args: argparse.Namespace) -> int:
    from mcluster.manager.manager import run_manager

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(args.config) if args.config else None
    url, namespace = _checked_redis(args, config)
    try:
        asyncio.run(run_manager(config, url, args.name, namespace))
    except (RedisConnectionError, OSError) as exc:
        return _fail(f"cannot reach Redis at {redact_url(url)}: {exc}")
    return 0


def _checked_redis(args: argparse.Namespace, config: ClusterConfig | None) -> tuple[str, str]:
    """The Redis URL and namespace (flag > environment > config), once Redis was found
    usable (RedisAccessError, one line, when it is not)."""
    url = resolve_redis_url(args.redis, configured=configured_redis_url(config))
    namespace = resolve_namespace(args.namespace, config)
    check_access(url, ClusterKeys(namespace))
    return url, namespace


def _demo(args: argparse.Namespace) -> int:
    from mcluster.demo.run import run_demo

    return run_demo(args.nodes, args.seconds, not args.no_dashboard, args.redis, args.keep_redis)


def _smtp(args: argparse.Namespace) -> int:
    from mcluster.demo.smtp import Limits, serve
    from mcluster.faces.listen import split_listen

    split_listen(args.listen)
    if args.max_connections < 1:
        return _fail(f"--max-connections must be at least 1, got {args.max_connections}", 2)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(
        max_connections=args.max_connections,
        throttle=args.throttle,
        rate=args.rate,
        audit=args.audit,
    )
    token = ApiToken(args.api_token_file) if args.api_token_file else None
    asyncio.run(serve(args.agent, args.listen, limits, token))
    return 0


def _redis(args: argparse.Namespace) -> int:
    if args.action == "stop":
        print("stopped" if stop_embedded_redis() else "not running")
    else:
        print(ensure_embedded_redis())
    return 0


def _config_check(path: str) -> int:
    """The grammar and models, then what the objects read from the config (throttles,
    outbound caps): every problem as ``FILE:LINE:COL: message``, exit 1."""
    from mcluster.duravip.config import duravip_config
    from mcluster.logs.config import log_files
    from mcluster.objects.outbound import OutboundPolicy
    from mcluster.objects.policy import policy_config
    from mcluster.objects.throttle import config_throttles
    from mcluster.shaping.config import shaping_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    issues = []
    checks = (config_throttles, OutboundPolicy, policy_config, duravip_config, log_files,
              shaping_config, policy_guard)  # fmt: skip
    for check in checks:
        try:
            check(config)
        except ConfigError as exc:
            issues += exc.issues
    if issues:
        print(str(ConfigError(issues)), file=sys.stderr)
        return 1
    code = check_command(path)
    policy = policy_config(config)
    if policy.source:
        print(policy.describe())
    return code


def _fail(message: str, code: int = 1) -> int:
    print(f"mcluster: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "agent":
            return _agent(args)
        if args.command == "console":
            return _console(args)
        if args.command == "config":
            return _config_check(args.file)
        if args.command == "smtp":
            return _smtp(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "manager":
            return _manager(args)
        return _redis(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except (RedisAccessError, GuardError) as exc:
        return _fail(str(exc))
    except (ValueError, RedisUrlError, EmbeddedRedisError) as exc:
        return _fail(str(exc), 2 if isinstance(exc, ValueError) else 1)
    except RedisError as exc:
        return _fail(f"Redis error: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
