"""Quota keys and window names, re-exported: they live in ``mcluster/objects/quota_keys.py``,
below the features, because the ``Policy`` scope's rules (``mcluster/objects/policy.py``)
name the quota windows and an object may not import a feature (docs/architecture.md)."""

from mcluster.objects.quota_keys import (
    ADDRESS_ATTRIBUTES,
    DOMAIN_KEYS,
    MAX_NAME,
    PREFIX,
    KeySpec,
    normalize,
    parse_key,
    split_window,
    window_name,
)

__all__ = [
    "ADDRESS_ATTRIBUTES",
    "DOMAIN_KEYS",
    "MAX_NAME",
    "PREFIX",
    "KeySpec",
    "normalize",
    "parse_key",
    "split_window",
    "window_name",
]
