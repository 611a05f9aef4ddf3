"""The run flags mean one thing for every kind of suite, or are refused for a kind, before anything
runs, with a one-line reason."""
from __future__ import annotations

import pytest

import bench.options as options
from bench.cli import main


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    monkeypatch.setattr(options, "cuda_available", lambda: False)


@pytest.mark.parametrize("suite, flags, needle", [
    ("capacity", ["--executor", "ray"], "--executor ray: not available for capacity suites (a probe's outcome"),
    ("capacity", ["--executor", "submitit"], "--executor submitit: not available for capacity suites"),
    ("duplication", ["--executor", "ray"], "--executor ray: not available for duplication suites (a training"),
    ("quality", ["--executor", "submitit"], "--executor submitit: not available for quality suites"),
    ("capacity", ["--data", "x"], "--data: not available for capacity suites"),
    ("tiny", ["--data", "x"], "--data x: only quality suites read a corpus"),
    ("duplication", ["--data", "x"], "--data x: the duplication task generates its data"),
    ("tiny", ["--only", "nope"], "--only nope: no such study"),
    ("capacity", ["--only", "nope"], "--only nope: no such config"),
    ("duplication", ["--only", "nope"], "--only nope: no such study"),
    ("tiny", ["--fresh", "--run-id", "r"], "--fresh and --run-id are exclusive"),
    ("capacity", ["--max-points", "9"], "--max-points: not available for capacity suites"),
    ("quality", ["--max-points", "9"], "--max-points: not available for quality suites"),
    ("capacity", ["--memory-limit-mib", "900"], "--memory-limit-mib: not available for capacity suites (on cpu"),
])
def test_a_flag_a_kind_cannot_honour_is_refused_naming_it(suite, flags, needle, tmp_path, capsys):
    code = main(["run", suite, "--profile", "cpu", "--results-root", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and needle in " ".join(err.split()), err
    assert len(err.strip().splitlines()) == 1  # one line
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


def test_only_keeps_the_named_configs_of_a_capacity_suite():
    from bench.plans.capacity import CapacitySearchPlan
    from bench.suite import resolve_suite_path

    plan = CapacitySearchPlan.for_options(resolve_suite_path("capacity"), options.RunOptions(profile="cpu", only=("full",)),
                                          False)
    assert plan.planned() and all(label.split(" ")[0] == "full" for label in plan.planned())


def test_only_keeps_a_training_suites_studies_and_the_models_they_need():
    import torch

    from bench.plans.training import only_studies
    from bench.quality.data import Corpus
    from bench.quality.spec import load_suite, training_plan
    from bench.suite import resolve_suite_path

    text = bytes(range(256)) * 40
    corpus = Corpus(name="tiny", data=torch.frombuffer(bytearray(text), dtype=torch.uint8),
                    bounds={"train": (0, len(text) - 2000), "valid": (len(text) - 2000, len(text))}, sha256="0",
                    python_version="test")
    path = resolve_suite_path("quality")
    plan = only_studies(training_plan(load_suite(path), "cpu", corpus=corpus), ("shared_qk",), path)
    assert {p.name for p in plan.trains} == {"full-separate-qk", "full", "no-attention"}  # the control is kept
    assert all("shared_qk" in e.studies for e in plan.evals)
    assert [a.point_id for a in plan.analyses] == ["baselines-count-models"]  # the count models, nothing else
