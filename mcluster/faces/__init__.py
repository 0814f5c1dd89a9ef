"""The faces: how the world talks to a node (HTTP API, Prometheus, Postfix policy service,
the ``mcluster agent`` entry point). A face calls ``Node``'s verbs and converts results to
its wire format; it holds no replication logic."""
