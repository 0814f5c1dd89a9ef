"""Connecting to Redis: URLs and their options, Sentinel, Cluster, the embedded server,
and the start-up access check."""
