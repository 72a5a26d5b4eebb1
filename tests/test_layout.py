"""The package's shape: no import cycles (lazy imports included), a core that knows neither the engine nor the
generated world nor the CLI, no module over 400 lines, and each run-folder file name written once."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lmpt"
UPPER = ("lmpt.engine", "lmpt.world", "lmpt.cli")


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
    assert "lmpt.engine.train.run" in graph["lmpt.cli.commands"]  # imported inside a function
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycle = _cycle(import_graph())
    assert not cycle, " -> ".join(cycle)


def _core_modules() -> list[str]:
    return sorted(m for m in _modules() if m not in ("lmpt", "lmpt.__main__") and not m.startswith(UPPER))


def test_core_imports_neither_engine_nor_world():
    """Every module outside engine/, world/ and cli/ (the library, the data package, deploy) reaches none of them."""
    graph = import_graph()
    core = _core_modules()
    assert {"lmpt.backbone", "lmpt.losses.db", "lmpt.data.features", "lmpt.deploy"} <= set(core)
    for start in core:
        seen, todo = set(), [start]
        while todo:
            mod = todo.pop()
            for nxt in graph.get(mod, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        bad = sorted(m for m in seen if m.startswith(UPPER))
        assert not bad, f"{start} reaches {bad}"


def test_no_module_over_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long


def _string_literals(tree: ast.AST) -> list[str]:
    """The string constants of a module that are not docstrings."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_run_folder_file_names_are_written_once():
    """The run folder's file names are literals in one place (the layout), nowhere else in the package."""
    names = ("metrics.json", "config.yaml", "state.pt", "summary.json", "test_logits.npy", "prompt.safetensors")
    found: dict[str, list[str]] = {n: [] for n in names}
    for module, path in _modules().items():
        for text in _string_literals(ast.parse(path.read_text())):
            if text in found:
                found[text].append(module)
    assert {n: len(where) for n, where in found.items()} == {n: 1 for n in names}, found


def test_the_engine_facade_names_objects_not_modules():
    """Every facade name resolves to its object, also after every engine module was imported (a submodule named
    like a facade name would shadow it)."""
    import importlib
    import types

    import lmpt.engine as engine

    for name in _modules():
        if name.startswith("lmpt.engine."):
            importlib.import_module(name)
    for name in engine.__all__:
        assert not isinstance(getattr(engine, name), types.ModuleType), name
