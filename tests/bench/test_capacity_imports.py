"""The capacity study's modules import at the top: no import inside a function (a hidden dependency
or a load-order workaround), so the import graph tests/bench/test_import_layers.py reads is the whole."""
from __future__ import annotations

import ast

from .conftest import REPO_ROOT

FILES = sorted((REPO_ROOT / "bench" / "capacity").rglob("*.py")) + [REPO_ROOT / "bench" / "plans" / "capacity.py"]


def function_imports(source: str) -> list[int]:
    """Line numbers of the imports inside functions of one module's source."""
    return sorted({node.lineno for fn in ast.walk(ast.parse(source))
                  if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                  for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))})


def test_the_finder_sees_an_import_in_a_nested_function():
    assert function_imports("import os\n\ndef f():\n    def g():\n        import torch\n") == [5]


def test_no_capacity_module_imports_inside_a_function():
    found = {str(f.relative_to(REPO_ROOT)): lines for f in FILES if (lines := function_imports(f.read_text()))}
    assert len(FILES) > 10 and found == {}
