"""Cluster-wide quotas of the Postfix policy service (``Quota "NAME" { ... }`` scopes).

- ``keys``: what a quota counts by, derived from a policy request; window names;
- ``config``: the ``Quota`` scopes, checked with every problem's place;
- ``engine``: which windows each request counts in, and the answer Postfix gets;
- ``usage``: reading and resetting what the windows hold (console, HTTP API);
- ``metrics``: the Prometheus counters ``mcluster/faces/prometheus.py`` serves.

``keys`` and ``config`` re-export ``mcluster/objects/quota_keys.py`` and
``quota_config.py``: the ``Policy`` scope (``mcluster/objects/policy.py``) holds the
quotas, and an object imports no feature. The HTTP routes are
``mcluster/faces/http/quotas.py``.
"""
