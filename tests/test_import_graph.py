"""The package's import graph has no cycle, counting imports inside functions too: a lazy import only hides a
cycle until the day it runs first in the wrong order."""

from __future__ import annotations

import ast
from pathlib import Path

import quiltmount

PACKAGE_DIR = Path(quiltmount.__file__).parent


def _modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of the package (a package is its `__init__.py`)."""
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source; `from X import Y` imports the
    module `X.Y` when there is one, else `X`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            candidates = [f"{base}.{alias.name}" for alias in node.names]
            candidates = [c if c in modules else base for c in candidates]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:  # `import a.b.c` also runs a.b
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            found = visit(target)
            if found:
                return found
        path.pop()
        done.add(module)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return None


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert "quiltmount.catalog" in graph["quiltmount.auth"]  # the graph is the package's
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_lazy_and_package_cycles(tmp_path):
    modules = {"p": tmp_path / "__init__.py", "p.a": tmp_path / "a.py", "p.b": tmp_path / "b.py"}
    modules["p"].write_text("def __getattr__(name):\n    from p import a\n    return a\n")
    modules["p.a"].write_text("from p.b import thing\n")
    modules["p.b"].write_text("def f():\n    from . import a\n")
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    assert graph == {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p.a"}}
    assert _cycle(graph) == ["p.a", "p.b", "p.a"]
