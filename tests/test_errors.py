"""The error model: everything mcluster raises on purpose is an ``mcluster.Error``.

Three walks: the classes ``mcluster`` exports, every exception class defined in any module
of the package, and every ``raise`` statement of the modules behind the public API (which
must raise mcluster's classes, not bare builtins). Then the Lua error-reply table, against
a real Redis: a ``STALE`` or ``CONFLICT`` reply comes back as its class, and is still a
``ResponseError`` with the same message.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

import mcluster
from mcluster.errors import (
    LUA_ERRORS,
    ConflictReply,
    Error,
    script_error,
)
from mcluster.store.script_link import ScriptLink
from mcluster.store.scripts import Scripts
from tests.redis_servers import RedisServer

PACKAGE = Path(mcluster.__file__).parent

#: Modules a program embedding mcluster calls (Node and what its verbs run): a bad
#: argument or a refusal there is an mcluster.Error, never a bare builtin.
PUBLIC_MODULES = ("mcluster/agent/node.py", "mcluster/objects/", "mcluster/errors.py")
#: Builtin raises that are protocol, not errors of mcluster: a Mapping's __getitem__.
PROTOCOL_RAISES = {("mcluster/objects/policy.py", "KeyError")}


def all_modules() -> list[str]:
    names = ["mcluster"]
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="mcluster."):
        if not info.name.endswith(".__main__"):  # runs the CLI when imported
            names.append(info.name)
    return sorted(names)


def test_exports_are_errors() -> None:
    exported = [getattr(mcluster, name) for name in mcluster.__all__]
    classes = [obj for obj in exported if inspect.isclass(obj) and issubclass(obj, BaseException)]
    assert mcluster.Error in classes and len(classes) > 10
    for cls in classes:
        assert issubclass(cls, mcluster.Error), f"mcluster.{cls.__name__} is not an mcluster.Error"


def test_issue_interfaces_keep_their_bases() -> None:
    assert issubclass(mcluster.ConfigError, mcluster.Error)
    assert issubclass(mcluster.UnknownObject, mcluster.Error)
    assert issubclass(mcluster.UnknownObject, KeyError)
    assert issubclass(mcluster.ThrottleError, mcluster.Error)
    assert issubclass(mcluster.ThrottleError, ValueError)
    assert issubclass(mcluster.NotFound, mcluster.Error)
    assert issubclass(mcluster.NotFound, LookupError)
    assert issubclass(mcluster.NotJoined, RuntimeError)
    assert str(mcluster.UnknownObject("no object 'x'")) == "no object 'x'"  # not KeyError's repr


def test_every_exception_class_of_the_package_is_an_error() -> None:
    found = []
    for name in all_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found.append(obj)
                assert issubclass(obj, Error), f"{name}.{obj.__name__} is not an mcluster.Error"
    assert len(found) > 20


def raised_names(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every ``raise Name(...)`` / ``raise Name`` in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name):
                out.append((node.lineno, target.id))
    return out


def test_public_modules_raise_no_bare_builtin() -> None:
    root = PACKAGE.parent
    checked = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if not rel.startswith(PUBLIC_MODULES):
            continue
        for line, name in raised_names(path):
            builtin = getattr(builtins, name, None)
            if not (inspect.isclass(builtin) and issubclass(builtin, Exception)):
                continue  # an mcluster class (checked above), or a re-raised variable
            if (rel, name) in PROTOCOL_RAISES or name in ("StopIteration", "TimeoutError"):
                continue
            pytest.fail(f"{rel}:{line}: raise {name}: raise an mcluster.Error subclass instead")
        checked += 1
    assert checked > 10


def test_lua_table_maps_prefixes() -> None:
    assert set(LUA_ERRORS) == {"STALE", "CONFLICT", "NOTEMPTY"}
    for prefix, cls in LUA_ERRORS.items():
        mapped = script_error(ResponseError(f"{prefix} view v1 is not registered"))
        assert type(mapped) is cls
        assert isinstance(mapped, ResponseError) and isinstance(mapped, Error)
        assert str(mapped) == f"{prefix} view v1 is not registered"
    plain = ResponseError("ERR something else")
    assert script_error(plain) is plain
    staleish = ResponseError("STALEMATE is not a prefix")
    assert script_error(staleish) is staleish
    noscript = NoScriptError("STALE but redis-py's own class")
    assert script_error(noscript) is noscript


async def test_lua_replies_raise_their_class(redis_server: RedisServer, namespace: str) -> None:
    """On a real server, through both script runners: CONFLICT arrives as ConflictReply."""
    client = Redis.from_url(redis_server.url)
    try:
        scripts = Scripts(client)
        key = f"{namespace}:defs"
        assert await scripts.run("throttle_define", [key], ["t", '{"rate": "10/1"}', "10/1"]) == 1
        with pytest.raises(ConflictReply, match=r"^CONFLICT 10/1$"):
            await scripts.run("throttle_define", [key], ["t", '{"rate": "10/1"}', "20/1"])
        link = ScriptLink(scripts)
        with pytest.raises(ConflictReply, match=r"^CONFLICT 10/1$"):
            await link.run("throttle_define", [key], ["t", '{"rate": "10/1"}', "20/1"])
        assert await link.run("throttle_define", [key], ["t", '{"rate": "10/1"}', "10/1"]) == 0
        await client.delete(key)
    finally:
        await client.aclose()
