"""A tiny duplication suite end to end through the common training runner: records that follow the
contract, run.json, resume without retraining, evaluation from checkpoints alone, a time budget
that stops and resumes, failures as rows, refusals of a changed suite, a torn last line."""
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import bench.training.runner as training_runner
from bench.duplication.__main__ import main as duplication_main
from bench.duplication.report import write_report
from bench.duplication.spec import load_suite, resolve_profile, training_plan
from bench.options import RunOptions
from bench.training.records import CONTRACT_METRICS
from bench.options import NothingToMeasure
from bench.training.run import run_plan
from reformer_impl import ReformerConfig

RECORD_KEYS = {"point_id", "run_id", "suite", "studies", "status", "reason", "point", "params", "effective",
               "metrics", "wall_s", "finished_at"}
TINY = {
    "kind": "duplication",
    "name": "duplication",
    "train_models": [{"name": "full", "attention": "full"}, {"name": "lsh-2", "attention": "lsh", "n_hashes": 2}],
    "eval_settings": [{"name": "full", "attention": "full"}, {"name": "lsh-4", "attention": "lsh", "n_hashes": 4},
                      {"name": "lsh-1", "attention": "lsh", "n_hashes": 1}],
    "profiles": {"cpu": {
        "task": {"half_len": 8, "n_symbols": 5},
        "model": {"d_model": 32, "d_ff": 32, "n_heads": 2, "chunk_len": 4, "reversible": False},
        "train": {"steps": 20, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 10,
                  "log_every": 5, "seed": 0, "threads": 1},
        "eval": {"seed": 1, "batches": 1, "batch_size": 4},
    }},
}


pytestmark = pytest.mark.usefixtures("torch_threads_restored")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def run(suite_path: Path, results_root: Path, run_id=None, *, time_budget_s=None, **kwargs) -> Path:
    """What `python -m bench run <suite> --profile cpu --device cpu` does, short of the report."""
    plan = training_plan(resolve_profile(load_suite(suite_path), "cpu"))
    opts = RunOptions(profile="cpu", device="cpu", run_id=run_id, retry_failed=True, results_root=Path(results_root),
                      time_budget_s=time_budget_s)
    run_dir, _ = run_plan(plan, opts, "cpu", **kwargs)
    return run_dir


@pytest.fixture(scope="module")
def suite_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "duplication.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def run_dir(suite_path, tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    try:
        return run(suite_path, tmp_path_factory.mktemp("results"))
    finally:
        torch.set_num_threads(threads)


def test_run_writes_contract_records_and_run_json(run_dir):
    assert run_dir.name.startswith("cpu-cpu-") and run_dir.parent.name == "duplication"
    assert run_dir.parents[1].name == "runs"
    recs = records(run_dir)
    assert sorted(r["point_id"] for r in recs) == sorted(
        ["dup-train-full", "dup-train-lsh-2"] + [f"dup-eval-{m}-as-{e}" for m in ("full", "lsh-2")
                                                 for e in ("full", "lsh-4", "lsh-1")])
    for r in recs:
        assert RECORD_KEYS <= set(r) and r["status"] == "ok" and r["run_id"] == run_dir.name
        assert set(CONTRACT_METRICS) <= set(r["metrics"])
        assert {f.name for f in dataclasses.fields(ReformerConfig)} <= set(r["params"])
        assert r["params"]["workload"] == "duplication" and r["point"]["workload"] == "duplication"
    evals = [r for r in recs if r["params"]["role"] == "eval"]
    assert all(0 <= r["metrics"]["accuracy"] <= 1 for r in evals)
    lsh4 = next(r for r in evals if r["params"]["eval_setting"] == "lsh-4")
    assert lsh4["params"]["attention"] == "lsh" and lsh4["params"]["n_hashes"] == 4
    assert lsh4["effective"]["n_hashes"] == 4 and lsh4["effective"]["n_chunks"] == 4
    train = [r for r in recs if r["params"]["role"] == "train"]
    assert all(len(r["curve"]) == 4 and r["metrics"]["steps_done"] == 20 for r in train)
    assert train[0]["params"]["lr"] == 3e-3 and train[0]["params"]["optimizer"] == "AdamW"
    run_json = json.loads((run_dir / "run.json").read_text())
    assert {"suite", "profile", "run_id", "device", "host_id", "created_at", "environment",
            "suite_spec"} <= set(run_json)
    assert sorted(run_json["planned"]) == sorted(r["point_id"] for r in recs)
    assert run_json["suite_spec"]["train"]["steps"] == 20 and run_json["environment"]["device"] == "cpu"
    for name in ("full", "lsh-2"):
        assert (run_dir / "checkpoints" / f"dup-train-{name}.pt").stat().st_size < 5 * 2**20


def test_naming_a_finished_run_neither_retrains_nor_reevaluates(run_dir, suite_path):
    before = records(run_dir)
    blobs = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    with pytest.raises(NothingToMeasure, match="already holds an ok record of every one of its 8 points"):
        run(suite_path, run_dir.parents[2], run_dir.name)
    assert records(run_dir) == before
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == blobs


def test_evaluate_only_reruns_evaluation_from_checkpoints(run_dir, suite_path, monkeypatch, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("evaluation must not train")
    monkeypatch.setattr(training_runner, "train_model", no_training)
    before = records(run_dir)
    assert duplication_main(["evaluate", "--suite", str(suite_path), "--device", "cpu", "--results-root",
                             str(run_dir.parents[2]), "--run-id", run_dir.name]) == 0
    assert str(run_dir / "report.md") in capsys.readouterr().out
    new = records(run_dir)[len(before):]
    assert len(new) == 6 and {r["params"]["role"] for r in new} == {"eval"}
    old_acc = {r["point_id"]: r["metrics"]["accuracy"] for r in before if r["params"]["role"] == "eval"}
    assert {r["point_id"]: r["metrics"]["accuracy"] for r in new} == old_acc  # same checkpoints, same held-out set


def test_evaluate_only_needs_a_run_id(suite_path, tmp_path, capsys):
    assert duplication_main(["evaluate", "--suite", str(suite_path), "--device", "cpu",
                             "--results-root", str(tmp_path)]) == 2
    assert "run-id" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_report_from_records(run_dir):
    report = write_report(run_dir).read_text()
    assert "| lsh-2" in report and "(100.0)" in report  # measured next to the paper's numbers
    for name in ("table2_heatmap.png", "training_curves.png", "table2.csv"):
        assert (run_dir / name).stat().st_size > 0


def test_time_budget_stops_at_a_checkpoint_and_a_rerun_resumes(suite_path, tmp_path, capsys):
    run_dir = run(suite_path, tmp_path, time_budget_s=0)
    assert not (run_dir / "records.jsonl").exists()  # stopped at step 10 of the first model
    capsys.readouterr()
    assert run(suite_path, tmp_path) == run_dir  # this host's unfinished run
    out = capsys.readouterr().out
    assert f"resuming {run_dir}: 0 of 8 points done (--fresh starts anew)" in out
    assert "resuming dup-train-full at step 10 of 20" in out
    train = [r for r in records(run_dir) if r["params"]["role"] == "train"]
    assert [r["metrics"]["steps_done"] for r in train] == [20, 20] and all(r["status"] == "ok" for r in train)
    assert [r["metrics"]["n_repeats"] for r in train] == [2, 4]  # full: steps 11-20 this session, none redone


def test_another_hosts_unfinished_run_is_not_resumed(suite_path, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_HOST_ID", "host-a")
    theirs = run(suite_path, tmp_path, time_budget_s=0)
    monkeypatch.setenv("BENCH_HOST_ID", "host-b")
    with pytest.raises(ValueError, match="host id host-a.*host id host-b"):
        run(suite_path, tmp_path, theirs.name, time_budget_s=0)
    ours = run(suite_path, tmp_path, time_budget_s=0)
    assert ours != theirs and ours.parent == theirs.parent


def test_a_failing_model_is_a_row_and_its_evaluations_are_skipped(suite_path, tmp_path, monkeypatch):
    real = training_runner.train_model

    def flaky(name, *args, **kwargs):
        if name == "dup-train-lsh-2":
            raise RuntimeError("boom")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(training_runner, "train_model", flaky)
    run_dir = run(suite_path, tmp_path, "flaky")
    by_id = {r["point_id"]: r for r in records(run_dir)}
    assert by_id["dup-train-lsh-2"]["status"] == "error" and "boom" in by_id["dup-train-lsh-2"]["reason"]
    assert by_id["dup-eval-lsh-2-as-full"]["status"] == "skipped"
    assert "lsh-2" in by_id["dup-eval-lsh-2-as-full"]["reason"]
    assert by_id["dup-eval-full-as-lsh-1"]["status"] == "ok"
    assert "Points not ok" in write_report(run_dir).read_text()

    monkeypatch.setattr(training_runner, "train_model", real)  # an error is tried again on a rerun
    n = len(records(run_dir))
    run(suite_path, tmp_path, "flaky")
    new = {r["point_id"]: r["status"] for r in records(run_dir)[n:]}
    assert new == {"dup-train-lsh-2": "ok", **{f"dup-eval-lsh-2-as-{e}": "ok" for e in ("full", "lsh-4", "lsh-1")}}


def test_a_changed_suite_is_refused_for_an_existing_run(run_dir, tmp_path):
    changed = json.loads(json.dumps(TINY))
    changed["profiles"]["cpu"]["train"]["lr"] = 1e-2
    path = tmp_path / "duplication.yaml"
    path.write_text(yaml.safe_dump(changed))
    before = records(run_dir)
    with pytest.raises(ValueError, match="run_id"):
        run(path, run_dir.parents[2], run_dir.name)
    assert records(run_dir) == before


def test_prose_and_thread_changes_do_not_block_a_resume(run_dir, tmp_path):
    changed = json.loads(json.dumps(TINY))
    changed["description"] = "reworded"
    changed["profiles"]["cpu"]["description"] = "reworded too"
    changed["profiles"]["cpu"]["train"]["threads"] = 2
    path = tmp_path / "duplication.yaml"
    path.write_text(yaml.safe_dump(changed))
    before = records(run_dir)
    with pytest.raises(NothingToMeasure):  # accepted as the same run, which has nothing left to do
        run(path, run_dir.parents[2], run_dir.name)
    assert records(run_dir) == before


def test_a_torn_last_line_does_not_swallow_the_next_record(run_dir, suite_path, tmp_path):
    """Killed while appending the last evaluation: a rerun moves the fragment aside and evaluates
    that point again, appending its record on a line of its own."""
    from bench.duplication.report import read_records

    copy = tmp_path / "runs" / "duplication" / "torn"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    lines = (copy / "records.jsonl").read_text().splitlines(keepends=True)[:8]  # the first pass: one per point
    torn = json.loads(lines[-1])["point_id"]
    (copy / "records.jsonl").write_text("".join(lines[:-1]) + lines[-1][:40])  # killed mid-write
    assert [r["point_id"] for r in read_records(copy)] == [json.loads(x)["point_id"] for x in lines[:-1]]
    run(suite_path, tmp_path, "torn")
    after = read_records(copy)
    assert [r["point_id"] for r in after] == [json.loads(x)["point_id"] for x in lines[:-1]] + [torn]
    assert after[-1]["status"] == "ok"
    assert (copy / "records.torn").read_text().strip() == lines[-1][:40]

