"""The ``mcluster`` command's own flags."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import mcluster


def test_version_prints_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcluster", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"mcluster {version('mcluster')}"
    assert mcluster.__version__ == version("mcluster")
