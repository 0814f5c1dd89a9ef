"""The two fuzzing profiles (issue 18): a bounded, derandomized one in the normal suite
(seconds), and a deep one (``MCLUSTER_FUZZ=deep``, see benchmarks/fuzz.py and the
figures in benchmarks/README.md)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEEP = os.environ.get("MCLUSTER_FUZZ", "") == "deep"
DEEP_EXAMPLES = int(os.environ.get("MCLUSTER_FUZZ_EXAMPLES", "5000"))


def profile(quick: int) -> settings:
    """``quick`` examples, the same every run (derandomized), or many random ones
    (``MCLUSTER_FUZZ=deep``, ``MCLUSTER_FUZZ_EXAMPLES`` of them)."""
    return settings(
        max_examples=DEEP_EXAMPLES if DEEP else quick,
        derandomize=not DEEP,
        deadline=None,  # one slow example under load is not a finding
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
        database=None,
        print_blob=True,
    )
