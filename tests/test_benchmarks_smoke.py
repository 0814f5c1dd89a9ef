"""The benchmarks keep working: the quickest one runs end to end."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_benchmark_quick() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/ingest.py", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PASS  global total" in result.stdout


def test_cache_benchmark_quick() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/cache.py", "--quick", "--keys", "500"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "staleness p99" in result.stdout and "get rate" in result.stdout


def test_metrics_benchmark_quick() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/metrics.py", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PASS  every window holds every address" in result.stdout
