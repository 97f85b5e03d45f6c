"""The shape of the code a maintainer changes: no import circle and no function too long to read at once,
in the library, the flows and training."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 80


PACKAGES = ("wbcproc", "flows", "training")


def _package_imports(module: Path) -> set[str]:
    """Every module of the product's packages this file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
    return out


def test_no_import_cycles_in_the_product():
    """Not even through function-level imports (model.py <-> registry.py, adapt.py <-> adapt_stage.py were
    such): the library, the flows and training each read top to bottom."""
    modules = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
        for pkg in PACKAGES
        for p in (REPO / pkg).rglob("*.py")
    }
    graph = {m: {i for i in _package_imports(p) if i in modules and i != m} for m, p in modules.items()}
    graph = {m: {i for i in deps if not m.startswith(i + ".") and i not in PACKAGES} for m, deps in graph.items()}
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        if seen.get(m) == 2:
            return
        if seen.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(m) :], m]))
        seen[m] = 1
        for dep in sorted(graph[m]):
            visit(dep, [*stack, m])
        seen[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert "wbcproc.registry" not in graph["wbcproc.model"] and "wbcproc.model" not in graph["wbcproc.registry"]


def test_no_function_is_longer_than_a_screen():
    """Signature, docstring and body together: a longer function gets a helper named for what it does."""
    long = []
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
