"""The ``Quota`` scopes, re-exported: they live in ``mcluster/objects/quota_config.py``,
below the features, because they are part of the ``Policy`` scope
(``mcluster/objects/policy.py``) and an object may not import a feature
(docs/architecture.md)."""

from mcluster.objects.quota_config import (
    ACTIONS,
    COUNTS,
    OPTIONS,
    Count,
    Exempt,
    Quota,
    parse_limit,
    parse_quota,
    parse_quotas,
)

__all__ = [
    "ACTIONS",
    "COUNTS",
    "OPTIONS",
    "Count",
    "Exempt",
    "Quota",
    "parse_limit",
    "parse_quota",
    "parse_quotas",
]
