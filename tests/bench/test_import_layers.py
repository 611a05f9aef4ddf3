"""The harness's layers, read from its code: every `import` in bench/ (inside functions too, via
ast) forms no cycle; nothing below the lifecycle imports it or the commands above it; and every
import inside a function says why in a comment (issue 20 item 5)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import REPO_ROOT

BENCH = REPO_ROOT / "bench"
# The commands, then the lifecycle: nothing below may import these.
TOP = {"bench.cli", "bench.__main__", "bench.campaign", "bench.duplication.__main__", "bench.training.run"}
LIFECYCLE = {"bench.lifecycle"}
# The run's own layers, where an import inside a function needs its reason on the line above (or on
# the first line of its group); other owners' modules are reported by `tools/import_cycles.py`.
RUN_LAYERS = ("bench.lifecycle", "bench.options", "bench.plans", "bench.rundir", "bench.store", "bench.reference",
              "bench.loader", "bench.suite", "bench.listing", "bench.cli", "bench.campaign", "bench.executors",
              "bench.worker", "bench.forkserver", "bench.training.suites", "bench.training.run",
              "bench.training.runner", "bench.capacity.spec", "bench.capacity.runner", "bench.quality.schema",
              "bench.quality.spec", "bench.duplication.spec", "bench.duplication.__main__")


def modules() -> dict[str, Path]:
    out = {}
    for f in BENCH.rglob("*.py"):
        name = ".".join(f.relative_to(REPO_ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def targets(name: str, node: ast.AST, mods: dict[str, Path]) -> set[str]:
    """The bench modules an import statement reaches (the longest existing module prefix)."""
    raw: set[str] = set()
    if isinstance(node, ast.Import):
        raw = {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = name.split(".")
            parts = parts if mods[name].name == "__init__.py" else parts[:-1]
            base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        raw = {base, *(f"{base}.{a.name}" for a in node.names)}
    out = set()
    for t in raw:
        while t and t not in mods:
            t = t.rpartition(".")[0]
        if t and t != name and t != "bench" and not name.startswith(t + "."):
            out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for node in ast.walk(ast.parse(f.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                for t in targets(m, node, mods)} for m, f in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_planted_cycle_through_a_function_level_import():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from bench.store import RunStore\n")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert targets("bench.grid", node, modules()) == {"bench.store"}


def test_bench_has_no_import_cycle():
    assert cycles(graph()) == []


def test_nothing_below_the_lifecycle_imports_it_or_the_commands():
    upward = [(m, t) for m, ts in graph().items() for t in ts
              if (t in TOP and m not in TOP) or (t in LIFECYCLE and m not in TOP | LIFECYCLE)]
    assert upward == []


def silent_imports(source: str) -> list[int]:
    """Lines of the imports inside functions with no comment on their line or the line above (a
    group of imports shares the comment above its first line)."""
    lines = source.splitlines()
    silent = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                above = node.lineno - 2
                while above >= 0 and lines[above].lstrip().startswith(("from ", "import ")):
                    above -= 1
                if "#" not in lines[node.lineno - 1] and not (above >= 0 and lines[above].lstrip().startswith("#")):
                    silent.append(node.lineno)
    return sorted(set(silent))


def silent_in(prefixes: tuple[str, ...] = ("bench",), leave_out: frozenset[str] = frozenset()) -> list[str]:
    """`path:line` of every silent function-level import in the modules under `prefixes`."""
    return [f"{path.relative_to(REPO_ROOT)}:{line}" for name, path in sorted(modules().items())
            if name.startswith(prefixes) and str(path.relative_to(REPO_ROOT)) not in leave_out
            for line in silent_imports(path.read_text())]


def test_the_silent_import_finder_sees_a_function_level_import_without_its_reason():
    source = ("import os\n\n\ndef f():\n    import json\n\n    # why: optional\n    import wandb\n"
              "    from a import b\n    import c  # why\n\n\ndef g():\n    \"\"\"Doc.\"\"\"\n    import d\n")
    assert silent_imports(source) == [5, 15]


def test_imports_inside_functions_of_the_run_layers_say_why():
    assert silent_in(RUN_LAYERS) == []


# Other owners' modules whose function-level imports still need their reason (issue 20 item 5).
def test_every_import_inside_a_function_in_bench_says_why():
    silent = silent_in()
    assert silent == [], "function-level imports without a reason on their line or the line above:\n" + "\n".join(silent)
