"""Each module of the package imports on its own: no import cycle at import time.

One fresh interpreter imports every module of ``mcluster`` first, one after another,
forgetting every ``mcluster`` module between two (third-party modules stay loaded, so the
walk takes seconds, not a minute). A module that only imports when some other module of
the package was loaded before it (the symptom of a cycle) fails here with its name.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WALK = textwrap.dedent(
    """
    import importlib, pkgutil, sys, traceback
    import mcluster
    names = sorted(
        ["mcluster"]
        + [m.name for m in pkgutil.walk_packages(mcluster.__path__, prefix="mcluster.")]
    )
    names = [n for n in names if not n.endswith(".__main__")]  # that one runs the CLI
    failed = []
    for name in names:
        for loaded in [m for m in sys.modules if m == "mcluster" or m.startswith("mcluster.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name + ":\\n" + traceback.format_exc())
    print(len(names))
    print("\\n".join(failed))
    sys.exit(1 if failed else 0)
    """
)


def test_each_module_imports_alone() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WALK], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert int(result.stdout.split()[0]) > 90
