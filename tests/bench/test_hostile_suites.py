"""Hostile suite files of every kind, refused by `python -m bench run` (and `python -m bench.duplication
run`) before anything is written: one `error:` line per problem, naming the file and the field. Study
names that are paths or markup, non-finite numbers (`.inf`, `.nan`) wherever a suite takes a float,
and a training that would never end (issue 25, items 1, 2, 5, 9, 10)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from bench.cli import main
from bench.duplication.__main__ import main as duplication_main

from .conftest import REPO_ROOT, small_suite
from .test_quality_suite import TINY

INF, NAN = float("inf"), float("nan")


def shipped(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "suites" / f"{name}.yaml").read_text())


def _change(spec: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    change(spec)
    return spec


def _rename_study(spec: dict[str, Any], old: str, new: str) -> None:
    spec["studies"] = {new if k == old else k: v for k, v in spec["studies"].items()}


QUALITY, CAPACITY, DUPLICATION = copy.deepcopy(TINY), shipped("capacity"), shipped("duplication")
# (suite, what the one error line must name)
HOSTILE = {
    "quality study name with ../": (
        _change(QUALITY, lambda s: _rename_study(s, "control", "../../../../tmp/pwned")), ["studies", "study name"]),
    "quality study name with [ and /": (
        _change(QUALITY, lambda s: _rename_study(s, "control", "a[b]/c")), ["studies", "study name"]),
    "duplication suite name with ../": (
        _change(DUPLICATION, lambda s: s.update(name="../../outside")), ["name"]),
    "capacity suite name ..": (_change(CAPACITY, lambda s: s.update(name="..")), ["name"]),
    "capacity budget .inf": (
        _change(CAPACITY, lambda s: s["profiles"]["cpu"].update(memory_budget_gib=INF)),
        ["profiles.cpu.memory_budget_gib", "finite"]),
    "capacity timeout .nan": (_change(CAPACITY, lambda s: s.update(timeout_s=NAN)), ["timeout_s", "finite"]),
    "capacity resolution .nan": (
        _change(CAPACITY, lambda s: s["search"].update(resolution=NAN)), ["search.resolution", "finite"]),
    "grid timeout .inf": (small_suite(timeout_s=INF), ["timeout_s", "finite"]),
    "grid dropout .nan": (_change(small_suite(), lambda s: s["base"].update(dropout=NAN)), ["base", "dropout"]),
    "quality lr .inf": (
        _change(QUALITY, lambda s: s["profiles"]["cpu"]["train"].update(lr=INF)), ["profiles.cpu.train.lr", "finite"]),
    "quality model dropout .inf": (
        _change(QUALITY, lambda s: s["models"]["full"].update(dropout=INF)), ["models", "full", "dropout"]),
    "quality 10^12 steps": (
        _change(QUALITY, lambda s: s["profiles"]["cpu"]["train"].update(steps=10**12)),
        ["profiles.cpu.train.steps", "less than or equal"]),
    "duplication lr .nan": (
        _change(DUPLICATION, lambda s: s["profiles"]["cpu"]["train"].update(lr=NAN)),
        ["profiles.cpu.train.lr", "finite"]),
    "duplication dropout .inf": (
        _change(DUPLICATION, lambda s: s["profiles"]["cpu"]["model"].update(dropout=INF)),
        ["profiles.cpu.model.dropout", "finite"]),
    "duplication 10^12 steps": (
        _change(DUPLICATION, lambda s: s["profiles"]["cpu"]["train"].update(steps=10**12)),
        ["profiles.cpu.train.steps"]),
    "duplication unknown key": (
        _change(DUPLICATION, lambda s: s["profiles"]["cpu"]["task"].update(half_lenn=3)),
        ["profiles.cpu.task.half_lenn", "unknown key"]),
    "duplication impossible model": (
        _change(DUPLICATION, lambda s: s["profiles"]["cpu"]["model"].update(n_heads=3)),
        ["profiles.cpu", "n_heads"]),
}


def _one_error_line(err: str, path: Path, names: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    line = lines[0]
    assert line.startswith(f"error: {path}: "), line
    assert "Traceback" not in err and "invalid duplication suite" not in err
    for name in names:
        assert name in line, (name, line)


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_suite_is_refused_in_one_line_naming_the_field_and_nothing_is_written(case, tmp_path, capsys):
    spec, names = HOSTILE[case]
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    root = tmp_path / "results"
    assert main(["run", str(path), "--profile", "cpu", "--device", "cpu", "--results-root", str(root)]) == 2
    _one_error_line(capsys.readouterr().err, path, names)
    assert not root.exists()
    assert not (Path("/tmp") / "pwned").exists()


@pytest.mark.parametrize("case", [c for c in HOSTILE if c.startswith("duplication")])
def test_the_duplication_entry_point_refuses_the_same_suites_in_the_same_line(case, tmp_path, capsys):
    spec, names = HOSTILE[case]
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    root = tmp_path / "results"
    assert duplication_main(["run", "--suite", str(path), "--profile", "cpu", "--device", "cpu",
                             "--results-root", str(root)]) == 2
    _one_error_line(capsys.readouterr().err, path, names)
    assert not root.exists()
