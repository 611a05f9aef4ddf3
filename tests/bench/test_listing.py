"""`bench list`: every suite in suites/, of every kind, with its units per profile, and no torch."""
from __future__ import annotations

import subprocess
import sys

from bench.listing import outline
from bench.suite import SUITES_DIR

from .conftest import REPO_ROOT

LIST_WITHOUT_TORCH = """
import sys
from bench.cli import main
assert main(["list"]) == 0
assert "torch" not in sys.modules, "bench list imported torch"
"""


def test_list_shows_every_suite_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", LIST_WITHOUT_TORCH], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120, env={"COLUMNS": "250", "PATH": ""})
    assert out.returncode == 0, out.stderr
    for path in SUITES_DIR.glob("*.yaml"):
        assert f"│ {outline(path).suite} " in out.stdout
    assert "capacity: searches" in out.stdout and "quality: trainings/evaluations/analyses" in out.stdout


def test_outlines_count_what_a_run_plans():
    tiny = outline(SUITES_DIR / "tiny.yaml")
    assert tiny.total.counts == {"cpu": "2/1", "gpu": "2/1"}  # full and lsh run, sdpa skipped
    cap = outline(SUITES_DIR / "capacity.yaml")
    assert cap.kind == "capacity" and {r.name for r in cap.rows} >= {"full", "lsh"}
    dup = outline(SUITES_DIR / "duplication.yaml")
    from bench.duplication.spec import load_suite, resolve_profile, training_plan  # the real plan needs torch
    for profile in ("cpu", "gpu"):
        plan = training_plan(resolve_profile(load_suite(SUITES_DIR / "duplication.yaml"), profile))
        assert dup.total.counts[profile] == f"{len(plan.trains)}t/{len(plan.evals)}e"
    quality = outline(SUITES_DIR / "quality.yaml")
    assert {r.name for r in quality.rows} >= {"hash_rounds", "shared_qk"}
