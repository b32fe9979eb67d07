"""The house stays straight: no import cycles inside the package, no module over 400 lines,
SQL only in the store package, the wire formats only in wire/, and the simulator imports only wire/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchrunner"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _runtime_imports(name: str, path: Path) -> set[str]:
    """Modules of the package that `name` imports when it runs (TYPE_CHECKING blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            subs = {f"{module}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(subs or ({module} & MODULES.keys()))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


GRAPH = {name: _runtime_imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycles_inside_the_package() -> None:
    assert _cycles() == []


def test_no_module_is_over_400_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_only_the_store_package_writes_sql() -> None:
    sql = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b[^\n]*\b(FROM|INTO|SET)\b")
    writers = {name for name, path in MODULES.items() if sql.search(path.read_text(encoding="utf-8"))}
    assert {w for w in writers if not w.startswith(("batchrunner.simulator", "batchrunner.store"))} == set()


def test_the_simulator_imports_only_the_wire_package() -> None:
    outside = {
        dep
        for name, deps in GRAPH.items()
        if name.startswith("batchrunner.simulator")
        for dep in deps
        if not dep.startswith(("batchrunner.simulator", "batchrunner.wire"))
    }
    assert outside == set()


def test_only_wire_knows_the_service_paths() -> None:
    paths = ("/services/aigc/", "/chat/completions", "compatible-mode")
    knowing = {
        name
        for name, path in MODULES.items()
        if any(p in path.read_text(encoding="utf-8") for p in paths)
        and not name.startswith(("batchrunner.wire", "batchrunner.simulator"))
    }
    assert knowing == set()
