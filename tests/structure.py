"""The shape of the code, read with ``ast``: layers, import cycles, module and function sizes.

``python -m tests.structure`` prints every finding; ``tests/test_layers.py`` fails on them.

Layers, lowest first (docs/architecture.md): a module may import its own layer and the ones
below, never one above::

    schemas < schemas.content < actors < service.config, service.simulate < service.nats
            < service.client < service.server < service.http < service.cli

Sizes: no module over ``MAX_MODULE_LINES`` and no function over ``MAX_FUNCTION_LINES`` unless
its docstring says why, in a paragraph starting with ``Why it is long:``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "actors", "service")
LAYERS: dict[str, int] = {
    "schemas": 0,
    "schemas.content": 1,
    "actors": 2,
    "service": 3,  # the package itself: config and simulate sit here
    "service.config": 3,
    "service.simulate": 3,
    "service.nats": 4,
    "service.client": 5,
    "service.server": 6,
    "service.http": 7,
    "service.cli": 8,
}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
REASON = "Why it is long:"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a module of ours, resolved)
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


def modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def layer(module: str) -> int | None:
    """The layer of ``module``: that of its longest listed prefix; None if none is listed."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        found = LAYERS.get(".".join(parts[:n]))
        if found is not None:
            return found
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inner = type_only or (isinstance(child, ast.If) and _is_type_checking(child.test))
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_only
                yield from _walk(stmt, type_only)
            continue
        yield child, inner
        yield from _walk(child, inner)


def imports(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """The imports of ``module`` that name one of our modules (a package's ``from p import m``
    counts as an import of ``p.m`` when ``m`` is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: list[Import] = []
    for node, type_only in _walk(tree, False):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.append(Import(module, target, getattr(node, "lineno", 0), type_only))
    return out


def all_imports() -> list[Import]:
    known = modules()
    return [i for m, p in known.items() for i in imports(m, p, known)]


def upward_imports() -> list[str]:
    """Imports from a lower layer into a higher one, and modules in no listed layer."""
    problems = []
    for mod in modules():
        if layer(mod) is None:
            problems.append(f"{mod}: in no layer (add it to tests/structure.py LAYERS)")
    for imp in all_imports():
        src, dst = layer(imp.source), layer(imp.target)
        if src is not None and dst is not None and dst > src:
            kind = " (type-only)" if imp.type_only else ""
            problems.append(
                f"{imp.source}:{imp.line} imports {imp.target}{kind}: layer {src} -> {dst}"
            )
    return problems


def cycles(*, type_only: bool = True) -> list[list[str]]:
    """Import cycles between modules, each sorted; ``type_only=False`` leaves out the imports
    under ``if TYPE_CHECKING:`` (the cycles that would fail at run time)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for imp in all_imports():
        if type_only or not imp.type_only:
            graph[imp.source].add(imp.target)
    return strongly_connected(graph)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph`` (its strongly connected components of two or more), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return sorted(found)


def _has_reason(node: ast.AST) -> bool:
    doc = ast.get_docstring(node, clean=True) if isinstance(node, _DOCUMENTED) else None
    return doc is not None and REASON in doc


_DOCUMENTED = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def oversized() -> list[str]:
    """Modules and functions over the limits without a written reason."""
    out = []
    for path in modules().values():
        text = path.read_text()
        tree = ast.parse(text, str(path))
        rel = path.relative_to(ROOT)
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and not _has_reason(tree):
            out.append(f"{rel}: {lines} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES and not _has_reason(node):
                    out.append(
                        f"{rel}:{node.lineno} {node.name}(): {length} lines "
                        f"(max {MAX_FUNCTION_LINES})"
                    )
    return out


def main() -> int:
    findings = {
        "upward imports": upward_imports(),
        "import cycles": [" <-> ".join(c) for c in cycles()],
        "over the size limits": oversized(),
    }
    for title, items in findings.items():
        print(f"{title}: {len(items)}")
        for item in items:
            print(f"  {item}")
    return 1 if any(findings.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
