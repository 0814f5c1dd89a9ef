"""Adaptive shaping: response rules, AIMD rates and warm-up schedules, cluster-wide.

``config`` reads the ``Shaping``/``Adaptive``/``Warmup`` scopes, ``service`` applies them on
a node (hooked into OBTM and connection admission), ``metrics`` counts for Prometheus; the
HTTP routes (``mcluster/faces/http/shaping.py``) serve them and the console commands
(``mcluster/console/commands/shaping.py``) read them straight from Redis. See docs/shaping.md.
"""
