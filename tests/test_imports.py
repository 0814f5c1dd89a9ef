"""The package's imports: no import cycle at import time, and every layer of
docs/architecture.md's table imports only what its row allows.

The cycle check runs in one fresh interpreter that imports every module of ``mcluster``
once, recording each import statement an ``mcluster`` module runs while it is being
imported (at module level, or in a function it calls then), the modules already loaded
included. An acyclic graph of those means that whichever module is imported first, every
module it needs is complete before it runs, so each module imports on its own. (The walk
this replaces forgot every ``mcluster`` module between two and imported each from
nothing: the same guarantee in about 35 s instead of one on the shared CI machine. It
also caught a module that uses another it never imports, which this does not.)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WALK = textwrap.dedent(
    """
    import builtins, importlib, importlib.util, json, pathlib, sys, traceback

    root = pathlib.Path("mcluster")
    names = sorted(
        ".".join(p.with_suffix("").parts).removesuffix(".__init__") for p in root.rglob("*.py")
    )
    names = [n for n in names if not n.endswith(".__main__")]  # that one runs the CLI
    known = set(names)
    edges = {name: set() for name in names}

    def importer():
        # The module being executed: the innermost frame that runs a module's body.
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_name != "<module>":
            frame = frame.f_back
        return None if frame is None else frame.f_globals.get("__name__")

    def record(name, fromlist=()):
        source = importer()
        if source not in known or name == "mcluster" and tuple(fromlist) == ("__version__",):
            return  # every module may read the top package's constants, set first
        targets = [f"{name}.{f}" for f in fromlist or () if f"{name}.{f}" in known]
        for target in targets or [name]:
            if target in known and target != source:
                edges[source].add(target)

    real_import, real_import_module = builtins.__import__, importlib.import_module

    def traced_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            name = importlib.util.resolve_name("." * level + name, globals["__package__"])
            module = real_import(name, globals, locals, fromlist, 0)
        else:
            module = real_import(name, globals, locals, fromlist, level)
        if name.startswith("mcluster"):
            record(name, fromlist)
        return module

    def traced_import_module(name, package=None):
        module = real_import_module(name, package)
        record(module.__name__)
        return module

    builtins.__import__ = traced_import
    importlib.import_module = traced_import_module
    failed = []
    for name in names:
        try:
            real_import_module(name)
        except Exception:
            failed.append(name + ":\\n" + traceback.format_exc())
    builtins.__import__, importlib.import_module = real_import, real_import_module
    print(json.dumps({"names": names, "failed": failed,
                      "edges": {k: sorted(v) for k, v in edges.items()}}))
    """
)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in order, the first again at the end), or None."""
    done: set[str] = set()

    def walk(name: str, stack: list[str]) -> list[str] | None:
        if name in stack:
            return [*stack[stack.index(name) :], name]
        if name in done:
            return None
        for dep in sorted(graph.get(name, ())):
            if cycle := walk(dep, [*stack, name]):
                return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        if cycle := walk(name, []):
            return cycle
    return None


def test_no_import_cycle_at_import_time() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WALK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["failed"] == [], "\n".join(found["failed"])
    assert len(found["names"]) > 90
    graph = {name: set(deps) for name, deps in found["edges"].items()}
    assert sum(len(deps) for deps in graph.values()) > 300  # the tracing saw the imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle at import time: " + " -> ".join(cycle or [])


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


def all_imports(path: Path) -> set[str]:
    """Every mcluster module a file names in an import: at module level, in a function,
    under ``if TYPE_CHECKING`` (a lazy or a typing-only import still ties the layers)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: a relative import"
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def package_modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "mcluster").rglob("*.py")
    }


def test_no_import_cycle() -> None:
    """The module-level imports between mcluster's modules form no cycle (a package's
    ``__init__`` importing its own modules counts; ``from mcluster import __version__``
    is left out: every module may read the top package's constants)."""
    modules = package_modules()
    graph = {
        name: {m for m in module_imports(path) if m in modules and m not in (name, "mcluster")}
        for name, path in modules.items()
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert len(graph) > 90


FEATURES = ("outbound", "shaping", "quotas", "security", "duravip", "logs")

#: docs/architecture.md's layer table, top row first: each layer and what it may import.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "store": {"errors"},
    "store.connect": {"errors", "store"},
    "config": {"errors", "store"},
    "objects": {"errors", "store", "config"},
    "features": {"errors", "store", "store.connect", "config", "objects", "agent"},
    "agent": {"errors", "store", "store.connect", "config", "objects", "features"},
}
ALLOWED["console"] = ALLOWED["agent"] | {"agent"}
ALLOWED["faces"] = ALLOWED["console"] | {"console"}
ALLOWED["manager"] = ALLOWED["console"] | {"console"}  # not faces
ALLOWED["package"] = ALLOWED["console"]  # mcluster/__init__.py: the public API
ALLOWED["demo"] = ALLOWED["faces"] | {"faces", "manager", "package"}
ALLOWED["cli"] = ALLOWED["demo"] | {"demo"}
#: Single modules of a feature a lower layer may import (they import nothing above it).
EXCEPTIONS = {
    "store.connect": {"mcluster.security.readonly"},
    "config": {"mcluster.security.config_limits"},
}


def layer_of(module: str) -> str:
    """``mcluster.store.keys`` -> ``store``; ``store/connect`` is a layer of its own, the
    feature folders are one layer, ``mcluster/__init__.py`` is ``package``."""
    parts = module.split(".")
    if parts[1:3] == ["store", "connect"]:
        return "store.connect"
    if len(parts) == 1:
        return "package"
    if parts[1] in FEATURES:
        return "features"
    return "cli" if parts[1] == "__main__" else parts[1]


def test_layers_import_downwards() -> None:
    """Every import between two layers goes where the layer table allows, and a feature
    imports no other feature."""
    modules = package_modules()
    assert {layer_of(name) for name in modules} == set(ALLOWED)
    wrong = []
    for name, path in sorted(modules.items()):
        layer = layer_of(name)
        for dep in sorted(all_imports(path) & set(modules) - {"mcluster", name}):
            other = layer_of(dep)
            if other == layer == "features" and dep.split(".")[1] != name.split(".")[1]:
                wrong.append(f"{name} -> {dep}: a feature imports another feature")
            elif other not in ALLOWED[layer] | {layer} and dep not in EXCEPTIONS.get(layer, ()):
                wrong.append(f"{name} ({layer}) -> {dep} ({other})")
    table = "imports against docs/architecture.md's layer table:\n"
    assert wrong == [], table + "\n".join(wrong)
    for layer, names in EXCEPTIONS.items():
        for name in names:
            deps = all_imports(modules[name]) & set(modules) - names - {"mcluster"}
            assert {layer_of(d) for d in deps} <= ALLOWED[layer], (name, deps)
