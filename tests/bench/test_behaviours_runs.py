"""Behaviours of training runs through `python -m bench run` (bench.cli.main) on real tiny suites,
real run folders and their records: a model whose checkpoint finished but whose record was never
appended gets its record on the rerun; an evaluation does not depend on the global RNG at load
time; a record's final figures are its last curve point's; and of several unfinished runs the
newest is continued, named on the console."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bench.cli import main
from bench.store import read_records

QUALITY = {
    "kind": "quality",
    "name": "tq",
    "models": {"lsh-2": {"attention": "lsh", "n_hashes": 2}, "full": {"attention": "full"}},
    "studies": {"rounds": {"hypothesis": "two models", "models": ["lsh-2", "full"]}},
    "profiles": {"cpu": {
        "seq_len": 32,
        "seeds": [0],
        "model": {"d_model": 32, "d_ff": 32, "n_heads": 2, "n_layers": 1, "chunk_len": 8, "pos_emb": "absolute",
                  "dropout": 0.1},  # dropout: one more stream an evaluation must not draw from
        "train": {"steps": 8, "batch_size": 2, "lr": 3.0e-3, "warmup_steps": 2, "checkpoint_every": 4,
                  "log_every": 2, "threads": 1},
        "eval": {"windows": 4, "batch_size": 4, "curve_windows": 2, "validate_every": 4},
    }},
}
DUPLICATION = {
    "kind": "duplication",
    "name": "dupt",
    "train_models": [{"name": "lsh-2", "attention": "lsh", "n_hashes": 2}],
    "eval_settings": [{"name": "lsh-2", "attention": "lsh", "n_hashes": 2}],
    "profiles": {"cpu": {
        "task": {"half_len": 8, "n_symbols": 5},
        "model": {"d_model": 32, "d_ff": 32, "n_heads": 2, "chunk_len": 4, "reversible": False},
        "train": {"steps": 20, "batch_size": 4, "lr": 3.0e-3, "warmup_steps": 2, "checkpoint_every": 10,
                  "log_every": 5, "seed": 0, "threads": 1},
        "eval": {"seed": 1, "batches": 1, "batch_size": 4},
    }},
}

pytestmark = pytest.mark.usefixtures("torch_threads_restored")


def bench_run(suite: Path, root: Path, *args: str) -> int:
    return main(["run", str(suite), "--profile", "cpu", "--device", "cpu", "--results-root", str(root), *args])


def by_point(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in read_records(run_dir / "records.jsonl"):
        out[rec["point_id"]].append(rec)
    return out


def run_folders(root: Path, suite: str) -> list[Path]:
    base = root / "runs" / suite
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def said(out: str, run_dir: Path) -> list[str]:
    """The console lines that name `run_dir` as the run being resumed or continued."""
    return [line for line in out.splitlines() if str(run_dir) in line and ("resum" in line or "continu" in line)]


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny quality suite run once to the end: (suite file, run folder)."""
    tmp = tmp_path_factory.mktemp("quality")
    suite = tmp / "tq.yaml"
    suite.write_text(yaml.safe_dump(QUALITY, sort_keys=False))
    threads = torch.get_num_threads()
    try:
        assert bench_run(suite, tmp / "results") == 0
    finally:
        torch.set_num_threads(threads)
    (run_dir,) = run_folders(tmp / "results", "tq")
    assert {pid: [r["status"] for r in recs] for pid, recs in by_point(run_dir).items()} == {
        "train-lsh-2-s0": ["ok"], "train-full-s0": ["ok"], "eval-lsh-2-s0": ["ok"], "eval-full-s0": ["ok"],
        "baselines-count-models": ["ok"]}  # every quality run scores the count models
    return suite, run_dir


def copy_run(run_dir: Path, root: Path) -> Path:
    """The run folder under another results root, as this host left it (its lock file aside)."""
    dst = root / "runs" / run_dir.parent.name / run_dir.name
    shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_a_finished_checkpoint_without_its_ok_record_gets_the_record_on_the_rerun(quality_run, tmp_path, capsys):
    """Killed after the second model's last checkpoint was saved, before its record was appended."""
    suite, original = quality_run
    root = tmp_path / "results"
    run_dir = copy_run(original, root)
    lines = (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(lines[0])["point_id"] == "train-lsh-2-s0"  # then train-full-s0, then the evaluations
    (run_dir / "records.jsonl").write_text(lines[0])
    ckpt = run_dir / "checkpoints" / "train-full-s0.pt"
    blob = ckpt.read_bytes()
    capsys.readouterr()
    assert bench_run(suite, root) == 0
    out = capsys.readouterr().out
    assert "NOTHING MEASURED" not in out and said(out, run_dir), out[-3000:]
    assert run_folders(root, "tq") == [run_dir]
    recs = by_point(run_dir)
    assert len(recs["train-lsh-2-s0"]) == 1  # the recorded one is not recorded again
    (full,) = recs["train-full-s0"]
    (before,) = by_point(original)["train-full-s0"]
    assert full["status"] == "ok" and full["metrics"]["steps_done"] == 8
    assert [(c["step"], c["loss"], c["accuracy"]) for c in full["curve"]] == \
        [(c["step"], c["loss"], c["accuracy"]) for c in before["curve"]]
    assert ckpt.read_bytes() == blob  # recorded from its checkpoint, not trained again
    assert [r["status"] for r in recs["eval-full-s0"]] == ["ok"]


def test_evaluating_a_checkpoint_does_not_depend_on_the_global_rng(quality_run, tmp_path, capsys):
    """The LSH model evaluated again with the global RNG somewhere else at load time (an LSH layer
    built without hash_seed draws its seed from it, dropout draws from it) scores the same bits per
    byte. Where evaluations run in fresh workers this process's RNG does not reach them: then this
    is the end-to-end check, and tests/training/test_behaviours_training.py the one that bites."""
    suite, original = quality_run
    root = tmp_path / "results"
    run_dir = copy_run(original, root)
    kept = [line for line in (run_dir / "records.jsonl").read_text().splitlines(keepends=True)
            if json.loads(line)["point_id"] != "eval-lsh-2-s0"]
    (run_dir / "records.jsonl").write_text("".join(kept))
    with torch.random.fork_rng():
        torch.manual_seed(20261202)
        torch.rand(1000)
        assert bench_run(suite, root) == 0
    (first,) = by_point(original)["eval-lsh-2-s0"]
    (again,) = by_point(run_dir)["eval-lsh-2-s0"]
    assert again["status"] == "ok" and again["params"]["attention"] == "lsh"
    assert again["metrics"]["bpb"] == first["metrics"]["bpb"]
    assert again["metrics"]["eval_bytes"] == first["metrics"]["eval_bytes"]


def test_a_training_record_s_final_loss_and_accuracy_are_its_last_curve_point_s(quality_run):
    _, run_dir = quality_run
    for pid in ("train-lsh-2-s0", "train-full-s0"):
        (rec,) = by_point(run_dir)[pid]
        curve, metrics = rec["curve"], rec["metrics"]
        assert [c["step"] for c in curve] == [2, 4, 6, 8] and curve[-1]["step"] == metrics["steps_done"]
        assert len({c["loss"] for c in curve}) == 4  # another point's loss would show
        assert metrics["final_loss"] == curve[-1]["loss"]
        assert metrics["train_accuracy"] == curve[-1]["accuracy"]


def test_of_several_unfinished_runs_the_newest_is_continued_and_named(tmp_path, capsys):
    suite = tmp_path / "dupt.yaml"
    suite.write_text(yaml.safe_dump(DUPLICATION, sort_keys=False))
    root = tmp_path / "results"
    started = []
    for _ in range(2):  # each stops at its first checkpoint (step 10 of 20): unfinished
        assert bench_run(suite, root, "--fresh", "--time-budget-s", "0") == 0
        (new,) = set(run_folders(root, "dupt")) - set(started)
        started.append(new)
    older, newer = started
    assert json.loads((older / "run.json").read_text())["created_at"] <= \
        json.loads((newer / "run.json").read_text())["created_at"]
    capsys.readouterr()
    assert bench_run(suite, root) == 0
    out = capsys.readouterr().out
    assert said(out, newer) and not said(out, older), out[-3000:]
    assert run_folders(root, "dupt") == sorted(started)  # no third run
    assert {pid: [r["status"] for r in recs] for pid, recs in by_point(newer).items()} == {
        "dup-train-lsh-2": ["ok"], "dup-eval-lsh-2-as-lsh-2": ["ok"]}
    assert not read_records(older / "records.jsonl")  # left as it was
