"""Training runs under hostile conditions (issue 25, items 3 and 5): a truncated, empty or garbage
checkpoint is set aside (never deleted) and its model trained again from step 0, saying so; a
checkpoint of another configuration is the training's `error` row naming the file, not a traceback;
a diverging training (loss nan or inf) is an `error` row "diverged at step N", its evaluations
`skipped`, and the report is written. Real runs of a tiny quality suite on a tiny corpus."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from rich.console import Console

from bench.quality.report import write_report
from bench.store import read_records

from .test_quality_suite import TINY, by_point, run, write

pytestmark = pytest.mark.usefixtures("torch_threads_restored")


def small(**train) -> dict:
    spec = copy.deepcopy(TINY)
    spec.pop("lsh_approximation")
    spec["studies"] = {"control": {"hypothesis": "two models", "models": ["full", "lsh-1"]}}
    spec["profiles"]["cpu"]["seeds"] = [0]
    spec["profiles"]["cpu"]["train"].update(steps=8, **train)
    return spec


def _stopped_at_a_checkpoint(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A run its time budget stopped at the first checkpoint of its first training."""
    path = write(tmp_path, small())
    run_dir = run(path, tmp_path / "results", run_id="r1", time_budget_s=0.0)
    ckpt = run_dir / "checkpoints" / "train-lsh-1-s0.pt"
    assert ckpt.is_file() and not read_records(run_dir / "records.jsonl")
    return path, run_dir, ckpt


DAMAGE = {"truncated": lambda b: b[: len(b) // 2], "empty": lambda b: b"", "garbage": lambda b: b"not a checkpoint\n" * 9}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_set_aside_and_its_model_trained_from_step_0(tmp_path, damage):
    path, run_dir, ckpt = _stopped_at_a_checkpoint(tmp_path)
    broken = DAMAGE[damage](ckpt.read_bytes())
    ckpt.write_bytes(broken)
    console = Console(record=True, width=300)
    run(path, tmp_path / "results", run_id="r1", console=console)
    said = console.export_text()
    assert f"{ckpt}: not a readable checkpoint" in said and "set aside as train-lsh-1-s0.pt.damaged" in said
    assert "again from step 0" in said
    assert (ckpt.with_name("train-lsh-1-s0.pt.damaged")).read_bytes() == broken  # kept for the user to look at
    records = by_point(run_dir)
    assert records["train-lsh-1-s0"]["status"] == "ok"
    assert records["train-lsh-1-s0"]["metrics"]["n_repeats"] == 4  # all 8 steps / log_every 2 in this session
    assert all(r["status"] == "ok" for r in records.values())


def test_a_checkpoint_of_another_configuration_is_an_error_row_naming_the_file(tmp_path):
    path, run_dir, ckpt = _stopped_at_a_checkpoint(tmp_path)
    payload = torch.load(ckpt, weights_only=True)
    payload["identity"]["config"]["d_model"] = 999
    torch.save(payload, ckpt)
    run(path, tmp_path / "results", run_id="r1")
    records = by_point(run_dir)
    row = records["train-lsh-1-s0"]
    assert row["status"] == "error" and str(ckpt) in row["reason"] and "d_model" in row["reason"]
    assert "delete the checkpoint" in row["reason"]
    assert records["eval-lsh-1-s0"]["status"] == "skipped"
    assert records["train-full-s0"]["status"] == "ok"  # the other model trains on


@pytest.mark.parametrize("lr", [1.0e6])
def test_a_diverged_training_is_an_error_row_its_evaluations_skipped_and_the_report_written(tmp_path, lr):
    path = write(tmp_path, small(lr=lr, grad_clip=None, warmup_steps=0))
    run_dir = run(path, tmp_path / "results", run_id="r1")
    records = by_point(run_dir)
    trains = [r for pid, r in records.items() if pid.startswith("train-")]
    assert trains and all(r["status"] == "error" and "diverged at step" in r["reason"] for r in trains)
    evals = [r for pid, r in records.items() if pid.startswith("eval-")]
    assert evals and all(r["status"] == "skipped" for r in evals)
    report = write_report(run_dir).read_text()
    assert "diverged at step" in report
