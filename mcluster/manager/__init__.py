"""``mcluster manager``: the cluster member that reaps dead nodes, runs console jobs and
collects logs; it holds no replicated data."""
