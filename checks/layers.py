"""The import graph of `app/` reads as the path of one request: imports only point down the layers,
never up, never in a circle (type-checking imports included), and no module or function outgrows
what one reading holds.

    python -m checks.layers            exit 1 and one line per violation, else a summary

The layers, top to bottom (see docs/architecture.md): a module may import its own layer's modules
and any layer below it.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "app"
LAYERS = ("cli", "api", "protocols", "pipeline", "engine", "metering", "auth", "profiles", "db", "core")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


@dataclass(frozen=True, slots=True)
class Module:
    name: str  # app.pipeline.run
    path: Path

    @property
    def layer(self) -> str:
        parts = self.name.split(".")
        return parts[1] if len(parts) > 2 or (len(parts) == 2 and self.path.name == "__init__.py") else "core"


def modules(root: Path = ROOT) -> dict[str, Module]:
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        if "migrations" in path.parts:
            continue  # Alembic's scripts: loaded by file, not imported
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = Module(name, path)
    return found


def imports(module: Module, known: dict[str, Module]) -> Iterator[tuple[str, int]]:
    """The app modules `module` imports (the deepest known module of each import), with line numbers."""
    tree = ast.parse(module.path.read_text(), str(module.path))
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module.name and target.startswith(PACKAGE + "."):
                yield target, node.lineno
                break


def layer_index(module: Module) -> int:
    return LAYERS.index(module.layer) if module.layer in LAYERS else len(LAYERS)


def violations(root: Path = ROOT) -> list[str]:
    known = modules(root)
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for module in known.values():
        where = module.path.relative_to(root)
        if module.layer not in LAYERS:
            problems.append(f"{where}: in no layer ({module.layer!r}); the layers are {', '.join(LAYERS)}")
        graph[module.name] = set()
        for target, line in imports(module, known):
            graph[module.name].add(target)
            if layer_index(known[target]) < layer_index(module):
                problems.append(
                    f"{where}:{line}: imports {target} upward ({module.layer} -> {known[target].layer})"
                )
        problems += _sizes(module, where)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _sizes(module: Module, where: Path) -> list[str]:
    text = module.path.read_text()
    problems = []
    lines = text.count("\n")
    if lines > MAX_MODULE_LINES:
        problems.append(f"{where}: {lines} lines (at most {MAX_MODULE_LINES}: is it two modules?)")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                limit = f"at most {MAX_FUNCTION_LINES}"
                problems.append(f"{where}:{node.lineno}: {node.name}() is {length} lines ({limit})")
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                members = sorted(component)
                cycles.append([*members, members[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def main() -> int:
    problems = violations()
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in the shape of {PACKAGE}/", file=sys.stderr)
        return 1
    print(f"{PACKAGE}/: {len(modules())} modules in {len(LAYERS)} layers, no upward import, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
