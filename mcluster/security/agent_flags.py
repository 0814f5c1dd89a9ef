"""The agent's guard flags (``--api-token-file``, ``--api-tls-*``, ``--api-max-*``, ...):
the argparse options, and the guard and TLS context they make.

The refusal to start lives here: an agent asked to serve its HTTP API on an address other
than loopback without a token exits before it serves anything, with one line naming
``--api-token-file``. A farm on a shared network must never get an open write API by
forgetting a flag.
"""

from __future__ import annotations

import argparse
import os
import ssl

from mcluster.security.errors import GuardError
from mcluster.security.http_guard import MIB, HttpGuard, HttpLimits
from mcluster.security.listen import is_loopback
from mcluster.security.refusals import Refusals
from mcluster.security.token import ENV_TOKEN_FILE, ApiToken

DEFAULTS = HttpLimits()
#: The limit flags: ``HttpLimits`` field, type, metavar, what it bounds.
LIMIT_FLAGS: tuple[tuple[str, type, str, str], ...] = (
    ("max_body", int, "BYTES", "largest request body; larger: 413"),
    ("max_events", int, "N", "most events in one batch; more: 413"),
    ("max_connections", int, "N", "connections open at once; more: 503"),
    ("header_timeout", float, "SECONDS", "time to send a request's headers"),
    ("body_timeout", float, "SECONDS", "time to send a request's body; longer: 408"),
)


def add_flags(agent: argparse.ArgumentParser) -> None:
    """The guard options of ``mcluster agent``."""
    agent.add_argument(
        "--api-token-file",
        metavar="FILE",
        default=os.environ.get(ENV_TOKEN_FILE) or None,
        help="bearer token every API call but GET /healthz must carry (default: "
        f"${ENV_TOKEN_FILE}); required when --listen is not loopback; re-read on SIGHUP",
    )
    agent.add_argument(
        "--metrics-public", action="store_true", help="GET /metrics without the token"
    )
    agent.add_argument("--api-tls-cert", metavar="FILE", help="serve the API over TLS (PEM)")
    agent.add_argument("--api-tls-key", metavar="FILE", help="the TLS certificate's key (PEM)")
    for name, kind, metavar, what in LIMIT_FLAGS:
        default = getattr(DEFAULTS, name)
        shown = f"{default // MIB} MiB" if name == "max_body" else f"{default:g}"
        agent.add_argument(
            f"--api-{name.replace('_', '-')}",
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{what} (default {shown})",
        )


def check_listen(host: str, token_file: str | None) -> None:
    """Refuse to serve a non-loopback address without a token (GuardError, one line)."""
    if token_file is None and not is_loopback(host):
        raise GuardError(
            f"refusing to serve the HTTP API on {host or 'every address'} (not loopback) "
            f"without a token: give --api-token-file FILE (or ${ENV_TOKEN_FILE}), "
            "or --listen 127.0.0.1:PORT"
        )


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server TLS context of ``--api-tls-cert``/``--api-tls-key`` (None without)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise GuardError("--api-tls-cert and --api-tls-key go together: give both")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise GuardError(
            f"--api-tls-cert {cert} / --api-tls-key {key}: cannot load: {exc}"
        ) from None
    return context


def guard_from_args(
    args: argparse.Namespace, host: str, refusals: Refusals | None = None
) -> tuple[HttpGuard, ssl.SSLContext | None]:
    """The guard and TLS context the flags ask for; GuardError (one line) when the agent
    must not start: an open non-loopback API, an unusable token or TLS file, a bad limit."""
    check_listen(host, args.api_token_file)
    token = ApiToken(args.api_token_file) if args.api_token_file else None
    limits = HttpLimits(**{name: getattr(args, f"api_{name}") for name, *_ in LIMIT_FLAGS})
    guard = HttpGuard(token, limits, refusals or Refusals(), args.metrics_public)
    return guard, tls_context(args.api_tls_cert, args.api_tls_key)
