"""Outbound connections as an MTA reports them: which views a connection counts in
(``views.py``), per-MX and per-provider limits (``providers.py``). The throttle buckets and
caps themselves are resolved in ``mcluster/objects/outbound.py``; the slots are taken in
``mcluster/agent/slots.py``."""
