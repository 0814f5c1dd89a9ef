"""Cluster logs: nodes ship their MTA log files into Redis streams, the manager writes them."""
