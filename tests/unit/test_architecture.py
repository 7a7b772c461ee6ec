"""The architecture's rules, checked on the source (no imports are executed):

- no import cycle among the modules of ``agent/``, ``controller/`` and ``shared/`` (every import statement at any
  nesting level counts, function-level ones included; those under ``if TYPE_CHECKING:`` do not);
- the edge machine's code (``agent/``, ``shared/``) never imports the training stack or the controller;
- no module is over ``MAX_LINES`` lines.

The generated gRPC stubs (``shared/pb/slmops``) are left out. A package's ``__init__`` importing its own
children is not an edge (a child importing from its package still is): Python imports the package first anyway.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "controller", "shared")
GENERATED = ("shared", "pb", "slmops")
EDGE_PACKAGES = ("agent", "shared")
FORBIDDEN_ON_EDGE = ("torch", "transformers", "peft", "olive", "controller")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[: len(GENERATED)] == GENERATED:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, with_type_checking: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth (``if TYPE_CHECKING:`` bodies only when asked)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and not with_type_checking:
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported_names(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute dotted names the statement imports (``from a import b`` gives ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _known(name: str) -> str | None:
    """The deepest module of the tree that ``name`` is or lies in (``None`` for third-party names)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        is_package = path.name == "__init__.py"
        deps = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), with_type_checking=False):
            for name in _imported_names(module, node):
                target = _known(name)
                if target is None or target == module:
                    continue
                if is_package and target.startswith(module + "."):
                    continue  # a package's __init__ importing its own child
                deps.add(target)
        graph[module] = deps
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module, each sorted (the tree is a few hundred
    modules, far below the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if child not in index:
                visit(child)
                low[node] = min(low[node], low[child])
            elif child in stack:
                low[node] = min(low[node], index[child])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1:
                found.append(sorted(component))

    for root in sorted(graph):
        if root not in index:
            visit(root)
    return found


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle through the component's first module, for the failure message."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node] & members):
            if child == start:
                return [*paths[node], start]
            if child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    return component


def test_cycle_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert _cycle_in(["a", "b", "c"], graph) == ["a", "b", "c", "a"]


def test_relative_imports_resolve() -> None:
    module = "controller.api.server"
    tree = ast.parse("from . import convert\nfrom ..store import db\nfrom .interceptors import X")
    names = {name for node in _imports(tree, False) for name in _imported_names(module, node)}
    assert names == {
        "controller.api",
        "controller.api.convert",
        "controller.store",
        "controller.store.db",
        "controller.api.interceptors",
        "controller.api.interceptors.X",
    }


def test_type_checking_imports_are_not_edges() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
        "def f():\n    import c\n"
    )
    assert {n.names[0].name for n in _imports(tree, False) if isinstance(n, ast.Import)} == {"b", "c"}


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 100  # the walk found the tree
    cycles = [" -> ".join(_cycle_in(c, graph)) + f"  (component: {', '.join(c)})" for c in strongly_connected(graph)]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_edge_code_never_imports_training_stack_or_controller() -> None:
    offenders = []
    for module, path in MODULES.items():
        if module.split(".")[0] not in EDGE_PACKAGES:
            continue
        for node in _imports(ast.parse(path.read_text(), str(path)), with_type_checking=True):
            for name in _imported_names(module, node):
                if name.split(".")[0] in FORBIDDEN_ON_EDGE:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, "the edge machine's code imports what it must not:\n" + "\n".join(offenders)


def test_no_module_over_the_line_limit() -> None:
    long = []
    for path in MODULES.values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(sorted(long))
