"""The package's import graph: a DAG, every module importable on its own, no import inside a
function to dodge a cycle, and the top-level functions not shadowed by submodules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import rankwise as rw

PACKAGE = Path(rw.__file__).parent
# Imports inside a function that are not about cycles, allowed by name: smora.from_pool imports
# the package when called, and smora.export to compress (SMoRA's owner keeps the rest of
# rankwise.smora free of it); rankwise.smora imports its callback (transformers) only when asked.
FUNCTION_LEVEL_ALLOWED = {
    ("rankwise.smora.pool", "rankwise"),
    ("rankwise.smora.export", "rankwise"),
    ("rankwise.smora", "rankwise.smora.callback"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    out["rankwise._core"] = PACKAGE / "_core.pyi"  # the compiled core: imports nothing of ours
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """The rankwise modules ``name`` imports, each with whether the import is inside a function."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import x`: x is a submodule or a name defined in pkg.
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import rankwise.methods.lego` -> that module
                t = t.rpartition(".")[0]
            if t.startswith("rankwise") and t != name:
                out.append((t, id(node) in in_function))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {n: {t for t, _ in _imports(n, p, modules)} for n, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*path[path.index(m) :], m]
            if m not in state and (found := visit(m)) is not None:
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)) is not None:
            return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    """The check below can fail: a planted cycle is found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_is_a_dag() -> None:
    graph = _graph()
    assert {"rankwise.adapter", "rankwise.pool", "rankwise.merging", "rankwise.methods.contract"} <= set(graph)
    assert "rankwise.peft_format" in graph["rankwise.adapter"]
    assert "rankwise.adapter" in graph["rankwise.pool"]
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"
    # The layers, bottom up: nothing below imports what is above it.
    assert "rankwise.pool" not in graph["rankwise.adapter"]
    assert not graph["rankwise.methods.contract"] & {"rankwise.merging", "rankwise.methods"}
    # Analysis: Grams below the merge loop, reports above it; card and recipe on errors alone.
    analysis = {"rankwise.lowrank", "rankwise.similarity", "rankwise.spectrum", "rankwise.retention"}
    analysis |= {"rankwise.sketch", "rankwise.kcurve"}
    for name in analysis:
        assert not graph[name] & {"rankwise.merging", "rankwise.methods", "rankwise.analyze", "rankwise.report"}
    assert "rankwise.retention" in graph["rankwise.merging"]
    assert not graph["rankwise.analyze"] & {"rankwise.merging", "rankwise.report", "rankwise.cli"}
    assert graph["rankwise.card"] <= set() and graph["rankwise.recipe"] <= {"rankwise.errors", "rankwise.memory"}
    # Memory budget on errors alone; the streaming k-means below the methods, beside kmeans.
    assert graph["rankwise.memory"] <= {"rankwise.errors"}
    assert graph["rankwise.streaming_kmeans"] <= {
        "rankwise._core",
        "rankwise.errors",
        "rankwise.kmeans",
        "rankwise.kmeans_parallel",
        "rankwise.threads",
    }
    assert graph["rankwise.kmeans_parallel"] <= {"rankwise._core"}
    assert "rankwise.merging" not in graph["rankwise.methods.lego_streamed"]
    assert "rankwise.card" in graph["rankwise.adapter"]


def test_no_imports_of_rankwise_inside_functions() -> None:
    modules = _modules()
    lazy = {(n, t) for n, p in modules.items() for t, inside in _imports(n, p, modules) if inside}
    assert lazy <= FUNCTION_LEVEL_ALLOWED, sorted(lazy - FUNCTION_LEVEL_ALLOWED)


def test_every_module_imports_on_its_own() -> None:
    """Each module imported with every pure-Python rankwise module unloaded before it (Python
    runs the package's ``__init__`` first); one child interpreter for all, not one per module."""
    names = [n for n in _modules() if n not in ("rankwise.__main__", "rankwise._core")]
    code = f"""
import importlib, sys, traceback
failed = []
for name in {names!r}:
    for m in [m for m in sys.modules if m.startswith("rankwise") and m != "rankwise._core"]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=3))
print("\\n".join(failed))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def test_top_level_functions_are_not_shadowed_by_submodules() -> None:
    """``rankwise.kmeans`` is a module and a function: the function wins whatever was imported
    first; ``rankwise.merge`` is the function only (the loop is ``rankwise.merging``)."""
    code = (
        "import rankwise.kmeans, rankwise.methods.lego, rankwise.merging, rankwise.cli, rankwise.analyze\n"
        "import rankwise as rw, inspect\n"
        "print(inspect.isfunction(rw.kmeans), inspect.isfunction(rw.merge), inspect.isfunction(rw.prune),"
        " inspect.isfunction(rw.analyze))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["True", "True", "True", "True"], res.stderr
    assert "rankwise.merge" not in _modules()
