"""Outbound connections as an MTA reports them: which views a connection counts in
(``views.py``). The ``Provider`` scopes (``mcluster/objects/providers.py``), the throttle
buckets and the caps are resolved in ``mcluster/objects/``, beside the other replicated
rules; the slots are taken in ``mcluster/agent/slots.py``."""
