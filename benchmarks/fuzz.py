"""The deep fuzzing profile (issue 18): the fuzz tests of the normal suite
(tests/test_fuzz_faces.py, tests/test_fuzz_inputs.py) with many random examples instead
of a few fixed ones, and a table of what each tried and found.

    python benchmarks/fuzz.py [--quick] [--strict] [--examples 5000] [--seed N]

Each property runs ``--examples`` examples (``MCLUSTER_FUZZ=deep``; ``--quick``: 200),
random unless ``--seed`` fixes hypothesis's seed. A failure prints the shrunk example
and its ``@reproduce_failure`` line: add it to a test, fix the bug, keep the test. The
figures of the last run go in benchmarks/README.md ("Fuzzing"). Exit 0 whatever was
found (1 with ``--strict`` when a property failed).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_fuzz_faces.py", "tests/test_fuzz_inputs.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 examples per property")
    parser.add_argument("--strict", action="store_true", help="exit 1 when one failed")
    parser.add_argument("--examples", type=int, default=5000, help="examples per property")
    parser.add_argument("--seed", type=int, help="hypothesis's seed (default: random)")
    args = parser.parse_args()
    examples = 200 if args.quick else args.examples
    env = {**os.environ, "MCLUSTER_FUZZ": "deep", "MCLUSTER_FUZZ_EXAMPLES": str(examples)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "--hypothesis-show-statistics", *TESTS]  # fmt: skip
    if args.seed is not None:
        cmd.append(f"--hypothesis-seed={args.seed}")
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.monotonic() - start
    out = done.stdout + done.stderr
    rows = re.findall(
        r"^(tests/\S+)::(\w+):\n\n(?:.*\n)*?\s+- (\d+) passing, (\d+) failing, and (\d+) invalid",
        out,
        re.M,
    )
    print(f"{'property':<62} {'passing':>8} {'failing':>8} {'invalid':>8}")
    for _path, name, passing, failing, invalid in rows:
        print(f"{name:<62} {passing:>8} {failing:>8} {invalid:>8}")
    failed = re.findall(r"^FAILED (\S+)", out, re.M)
    print(f"\n{len(rows)} properties, {examples} examples each asked, {took:.0f} s")
    for name in failed:
        print(f"FAIL  {name}")
    if failed:
        print(out[-6000:])
    print("PASS  no property failed" if not failed and done.returncode == 0 else
          "FAIL  a property failed (see above)")  # fmt: skip
    return 1 if args.strict and (failed or done.returncode) else 0


if __name__ == "__main__":
    sys.exit(main())
