"""Namespaces: farms on one Redis never see each other, and mcluster never wipes Redis."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: A call of FLUSHALL/FLUSHDB: redis-py's methods, or the command named as a string
#: (execute_command, redis.call in Lua); a comment that mentions it is no call.
WIPE = re.compile(r"\.flush_?(all|db)\s*\(|['\"]flush_?(all|db)['\"]", re.IGNORECASE)


def test_mcluster_never_flushes_redis() -> None:
    samples = ["await c.flushall()", "c.flushdb(asynchronous=True)",
               "redis.call('FLUSHALL')", 'execute_command("FLUSHDB")']  # fmt: skip
    assert all(WIPE.search(s) for s in samples)
    files = [*(ROOT / "mcluster").rglob("*.py"), *(ROOT / "lua_scripts").glob("*.lua")]
    assert len(files) > 20
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if WIPE.search(line)
    ]
    assert not found, "\n".join(found)
