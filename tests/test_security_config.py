"""Config caps (issue 18): a file over the size cap or with scopes nested too deep is
refused whole, with its place; a reload refused so is counted in /metrics."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcluster import Node
from mcluster.config import ConfigError, load_config, parse
from mcluster.security.config_limits import MAX_CONFIG_BYTES, MAX_SCOPE_DEPTH, ConfigLimitError
from tests.helpers import CONFIG_TEXT


def nested(depth: int) -> str:
    return "".join(f"s{i} {{\n" for i in range(depth)) + "x = 1\n" + "}\n" * depth


def test_a_file_over_the_size_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.conf"
    path.write_text(CONFIG_TEXT + "#" * (MAX_CONFIG_BYTES - len(CONFIG_TEXT)))
    load_config(path)  # at the cap: read
    path.write_text(CONFIG_TEXT + "#" * (MAX_CONFIG_BYTES + 1 - len(CONFIG_TEXT)))
    with pytest.raises(ConfigLimitError) as err:
        load_config(path)
    assert err.value.reason == "too_large"
    assert str(err.value) == f"{path}: the file is larger than {MAX_CONFIG_BYTES} bytes " \
        "(a config is a few kilobytes)"  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "mcluster", "config", "check", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "larger than" in done.stderr, done


def test_scopes_nested_too_deep_are_refused_at_their_place() -> None:
    parse(nested(MAX_SCOPE_DEPTH))
    with pytest.raises(ConfigLimitError) as err:
        parse(nested(MAX_SCOPE_DEPTH + 1), "deep.conf")
    assert err.value.reason == "too_deep"
    assert str(err.value) == (
        f"deep.conf:{MAX_SCOPE_DEPTH + 1}:1: scopes nest deeper than {MAX_SCOPE_DEPTH} levels"
    )
    start = time.monotonic()
    with pytest.raises(ConfigError):  # no RecursionError, and at once
        parse("a {" * 200_000)
    with pytest.raises(ConfigError, match="nested lists"):
        parse("a = " + "(" * 200_000)
    assert time.monotonic() - start < 5


async def test_a_reload_over_a_cap_is_counted_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mcluster.conf"
    path.write_text(CONFIG_TEXT)
    node = Node(path, "relay-0-1", "redis://127.0.0.1:1/0")  # never started: no Redis
    before = node.config
    path.write_text(CONFIG_TEXT + nested(MAX_SCOPE_DEPTH + 1))
    with pytest.raises(ConfigLimitError):
        await node.reload()
    path.write_text(CONFIG_TEXT + " " * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigLimitError):
        await node.reload()
    assert node.config is before
    assert node.refusals.get("config", "too_deep") == 1
    assert node.refusals.get("config", "too_large") == 1
