"""The wheel carries the Lua scripts: build it, install it in a fresh venv, run a script."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("mcluster-*.whl")
    return built


def test_wheel_contains_scripts(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for script in (ROOT / "lua_scripts").glob("*.lua"):
        assert f"mcluster/lua_scripts/{script.name}" in names
    assert "mcluster/py.typed" in names


def test_installed_wheel_runs_a_script(
    wheel: Path, tmp_path: Path, redis_server: RedisServer, namespace: str
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    # The dependencies come from this environment's site-packages, not the package itself:
    # a .pth path line adds the folder without running its .pth files (no editable hook).
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    program = textwrap.dedent(
        f"""
        import asyncio, mcluster, pathlib
        from mcluster.store.scripts import scripts_dir
        assert str(scripts_dir()).startswith({str(venv)!r}), scripts_dir()
        assert pathlib.Path(mcluster.__file__).is_relative_to({str(venv)!r})
        from mcluster.agent.node import Node
        from mcluster.config import parse_config

        async def main():
            cfg = parse_config('cluster {{ Replicate "outbound_domains" {{}} }}')
            async with Node(cfg, "wheel-1", {redis_server.url!r}, namespace={namespace!r}) as n:
                n.record("outbound_domains", "aol.com", 4)
                await n.flush()
                print(await n.count("outbound_domains", "aol.com"))

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [str(python), "-c", program], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
    check = subprocess.run(
        [str(venv / "bin" / "mcluster"), "config", "check", str(ROOT / "config/mcluster.conf")],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "inbound_cidr" in check.stdout
