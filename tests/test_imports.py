"""Each module of the package imports on its own: no import cycle at import time.

One fresh interpreter imports every module of ``mcluster`` first, one after another,
forgetting every ``mcluster`` module between two (third-party modules stay loaded, so the
walk takes seconds, not a minute). A module that only imports when some other module of
the package was loaded before it (the symptom of a cycle) fails here with its name.
"""

from __future__ import annotations

import ast
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


def module_imports(path: Path) -> set[str]:
    """The mcluster modules a file imports when it is imported (module level, outside
    ``if TYPE_CHECKING``; imports inside functions run later and are left out)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))

    visit(ast.parse(path.read_text()).body)
    return found


def test_no_import_cycle() -> None:
    """The module-level imports between mcluster's modules form no cycle (a package's
    ``__init__`` importing its own modules counts; ``from mcluster import __version__``
    is left out: every module may read the top package's constants)."""
    package = ROOT / "mcluster"
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {
        name: {m for m in module_imports(path) if m in modules and m not in (name, "mcluster")}
        for name, path in modules.items()
    }
    done: set[str] = set()

    def walk(name: str, stack: list[str]) -> None:
        if name in stack:
            cycle = " -> ".join([*stack[stack.index(name) :], name])
            raise AssertionError(f"import cycle: {cycle}")
        if name in done:
            return
        for dep in sorted(graph[name]):
            walk(dep, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])
    assert len(graph) > 90


def layer_of(module: str) -> str:
    """``mcluster.store.keys`` -> ``store``; ``store/connect`` is a layer of its own."""
    parts = module.split(".")
    if parts[1:3] == ["store", "connect"]:
        return "store.connect"
    return parts[1] if len(parts) > 1 else "mcluster"


def layer_imports() -> dict[str, set[str]]:
    """Top folder (``store``, ``agent``, ``errors``, ...) -> the top folders it imports."""
    package = ROOT / "mcluster"
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    found: dict[str, set[str]] = {}
    for name, path in modules.items():
        layer = layer_of(name)
        deps = {layer_of(m) for m in module_imports(path) if m in modules and "." in m}
        found.setdefault(layer, set()).update(deps - {layer})
    return found


def test_layers_import_downwards() -> None:
    """The directions docs/architecture.md marks as tested."""
    found = layer_imports()
    assert found["errors"] == set()
    assert found["store"] <= {"errors"}, found["store"]
    assert found["store.connect"] <= {"errors", "store", "security"}, found["store.connect"]
    upper = {"agent", "faces", "console", "manager", "demo", "cli"}
    assert not found["objects"] & upper, found["objects"]
    assert not found["agent"] & (upper - {"agent"}), found["agent"]
    importing_demo = {layer for layer, deps in found.items() if "demo" in deps} - {"demo"}
    assert importing_demo <= {"cli"}, importing_demo
