"""The script registry: Lua files from ``lua_scripts/``, loaded by name, run by EVALSHA.

Scripts live beside the package (``mcluster/lua_scripts`` in a wheel, ``lua_scripts/`` at
the top of a source checkout). A line ``--!include NAME.lua`` pulls in a shared fragment.
redis-py's ``Script`` objects run EVALSHA and reload the script on NOSCRIPT, so a
``SCRIPT FLUSH`` on the server never breaks a caller.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from mcluster.errors import script_error

_INCLUDE = re.compile(r"^--!include\s+(\S+)\s*$", re.MULTILINE)


def scripts_dir() -> Path:
    """Where the Lua scripts are: inside the installed package, else the source tree."""
    packaged = resources.files("mcluster") / "lua_scripts"
    if packaged.is_dir():
        return Path(str(packaged))
    source = Path(__file__).resolve().parents[2] / "lua_scripts"
    if source.is_dir():
        return source
    raise FileNotFoundError("mcluster's lua_scripts folder is missing from this installation")


@functools.cache
def script_source(name: str) -> str:
    """The text of script ``name`` (without ``.lua``), with its includes expanded."""
    path = scripts_dir() / f"{name}.lua"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in scripts_dir().glob("*.lua")))
        raise KeyError(f"no Lua script named {name!r}; known: {known}")
    text = path.read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: script_source(m.group(1).removesuffix(".lua")), text)


class Scripts:
    """The scripts bound to one Redis client; ``await scripts.run(name, keys, args)``."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._bound: dict[str, AsyncScript] = {}

    def get(self, name: str) -> AsyncScript:
        script = self._bound.get(name)
        if script is None:
            script = self._bound[name] = self.client.register_script(script_source(name))
        return script

    async def run(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        """Run script ``name``; a Lua error reply is raised as its ``LUA_ERRORS`` class."""
        try:
            return await self.get(name)(keys=keys, args=args)
        except ResponseError as exc:
            mapped = script_error(exc)
            if mapped is exc:
                raise
            raise mapped from None
