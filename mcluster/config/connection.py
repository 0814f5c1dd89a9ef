"""Where Redis is and which key namespace: a flag, else the environment, else the
cluster scope (``cluster { redis = "..."  namespace = "farm-a" }``), else the default."""

from __future__ import annotations

import os

from mcluster.config.models import ClusterConfig
from mcluster.store.keys import ClusterKeys

__all__ = ["DEFAULT_NAMESPACE", "ENV_NAMESPACE", "configured_redis_url", "resolve_namespace"]

ENV_NAMESPACE = "MCLUSTER_NAMESPACE"
DEFAULT_NAMESPACE = "mc"


def resolve_namespace(flag: str | None, config: ClusterConfig | None) -> str:
    """``flag`` > ``$MCLUSTER_NAMESPACE`` > the config's ``namespace`` > ``mc``; checked,
    with ValueError naming where a bad one came from."""
    env = os.environ.get(ENV_NAMESPACE, "").strip()
    if flag:
        namespace, source = flag, "--namespace"
    elif env:
        namespace, source = env, ENV_NAMESPACE
    elif config is not None and config.option_source("namespace") is not None:
        namespace = config.get_str("namespace", DEFAULT_NAMESPACE)
        source = str(config.option_source("namespace"))
    else:
        return DEFAULT_NAMESPACE
    try:
        ClusterKeys(namespace)
    except ValueError as exc:
        raise ValueError(f"{exc} (from {source})") from None
    return namespace


def configured_redis_url(config: ClusterConfig | None) -> str | None:
    """The cluster scope's ``redis`` option (a Redis URL), or None when it is not set."""
    if config is None or config.option_source("redis") is None:
        return None
    return config.get_str("redis", "").strip() or None
