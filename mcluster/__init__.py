"""mcluster: cluster-wide data replication for mail servers, on Redis."""

__version__ = "0.1.0"
