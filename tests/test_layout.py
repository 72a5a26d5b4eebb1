"""The package's shape: no import cycles (lazy imports included), a core that knows neither the engine nor the
generated world, and no module over 450 lines."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lmpt"
CORE = ("lmpt.backbone", "lmpt.prompts", "lmpt.model", "lmpt.losses", "lmpt.metrics")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> lmpt modules it imports anywhere: module level, inside functions, and under TYPE_CHECKING (an
    import for annotations only is still a dependency a reader has to follow)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        edges: set[str] = set()
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t.startswith("lmpt") and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_scanner_sees_lazy_imports_and_cycles():
    graph = import_graph()
    assert "lmpt.backbone" in graph["lmpt.data.features"]
    assert "lmpt.engine.run" in graph["lmpt.cli"]  # imported inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycle = _cycle(import_graph())
    assert not cycle, " -> ".join(cycle)


def test_core_imports_neither_engine_nor_world():
    graph = import_graph()
    for core in CORE:
        seen, todo = set(), [core]
        while todo:
            mod = todo.pop()
            for nxt in graph.get(mod, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        bad = sorted(m for m in seen if m.startswith(("lmpt.engine", "lmpt.world", "lmpt.cli")))
        assert not bad, f"{core} reaches {bad}"


def test_no_module_over_450_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert not long, long
