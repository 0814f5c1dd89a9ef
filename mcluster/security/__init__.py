"""The guards on the agent's own faces (issue 18, "Nobody gets in").

Redis is guarded elsewhere (ACL user, TLS, password file: ``mcluster.store``); this package
guards what the agent itself serves, so nobody on a shared network can write through it:

* ``token``: the HTTP API's bearer token (read from a file, compared in constant time,
  re-read on SIGHUP);
* ``listen``: which addresses count as loopback (the agent refuses to serve anything else
  without a guard);
* ``http_guard``: the aiohttp middleware and protocol wrapper that enforce the token and
  the bounds on requests (body size, batch size, header and body read timeouts, a cap on
  connections);
* ``clients``: the policy service's client allow-list and its own bounds;
* ``refusals``: every refusal of every guard, counted for ``/metrics``.

See ``docs/security.md`` for the threat model.
"""
