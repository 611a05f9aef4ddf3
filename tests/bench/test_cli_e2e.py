"""The runner and CLI: new runs, retry, --only, dispatch, with a fake executor; then one real
end-to-end run of suites/tiny.yaml through `python -m bench run`, and a continued one."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from rich.console import Console

import bench.lifecycle as lifecycle
import bench.options as options
import bench.plans.grid as grid_plan
from bench.cli import main
from bench.store import make_record, read_records
from bench.suite import load_suite

from .conftest import REPO_ROOT, small_suite

def run_grid_suite(suite, opts, console):
    """A grid suite through the common lifecycle (what `bench run` does once the suite is loaded)."""
    return lifecycle.run(grid_plan.GridPlan.for_options(suite, opts, options.cuda_available()), opts, console)



class FakeExecutor:
    """Records what it was asked to run; points whose seq_len is in `fail` come back as errors."""

    def __init__(self, fail=()):
        self.seen: list[str] = []
        self.fail = set(fail)

    def run(self, points):
        for p in points:
            self.seen.append(p.point_id)
            status = "error" if p.seq_len in self.fail else "ok"
            yield make_record(p, status, metrics={"fwd_ms_median": 1.0, "peak_rss_mib": 10.0})


@pytest.fixture
def harness(monkeypatch, write_suite, tmp_path):
    """A suite of 4 runnable points and 1 skipped, a fake executor, no report, no CUDA."""
    spec = small_suite()
    spec["studies"]["kinds"]["skip"] = [{"when": {"attention": "full", "seq_len": 128}, "reason": "too long"}]
    suite = load_suite(write_suite(spec))
    reports: list[Path] = []
    monkeypatch.setattr(options, "cuda_available", lambda: False)
    monkeypatch.setattr(lifecycle, "write_report", lambda run_dir, console, module="bench.report": reports.append(run_dir))

    def go(fake=None, **opts):
        fake = fake or FakeExecutor()
        monkeypatch.setattr(grid_plan, "make_executor", lambda *a, **k: fake)
        run_opts = options.RunOptions(**{"profile": "cpu", "results_root": tmp_path / "results", **opts})
        run_dir = run_grid_suite(suite, run_opts, Console(file=io.StringIO(), width=200))
        return run_dir, fake

    go.reports = reports
    return go


def test_run_records_every_point_and_a_second_run_measures_again(harness):
    run_dir, fake = harness()
    assert run_dir.name.startswith("cpu-cpu-") and run_dir.parent.name == "small" and run_dir.parent.parent.name == "runs"
    assert len(fake.seen) == 4
    records = read_records(run_dir / "records.jsonl")
    assert sorted(r["status"] for r in records) == ["ok"] * 4 + ["skipped"]
    assert [r["reason"] for r in records if r["status"] == "skipped"] == ["too long"]
    assert {r["run_id"] for r in records} == {run_dir.name}
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["suite"], meta["profile"], meta["device"]) == ("small", "cpu", "cpu")
    assert set(meta["suite_spec"]["studies"]) == {"kinds", "hashes"} and "torch" in meta["environment"]
    assert meta["suite_spec"]["path"] == "suite.yaml"  # outside the repository: its name only
    assert meta["host_id"] and sorted(meta["planned"]) == sorted(r["point_id"] for r in records)
    assert harness.reports == [run_dir]

    second, again = harness()
    assert second != run_dir and len(again.seen) == 4  # a finished run is not resumed: this one measures
    assert len(read_records(run_dir / "records.jsonl")) == 5


def test_failed_points_rerun_only_when_asked(harness):
    run_dir, fake = harness(FakeExecutor(fail={128}))
    assert len(fake.seen) == 4
    plain_dir, plain = harness()
    assert plain_dir != run_dir and len(plain.seen) == 4  # failed points are outcomes: the run is finished
    retry_dir, retry = harness(retry_failed=True)
    assert retry_dir == run_dir and len(retry.seen) == 1  # --retry-failed continues the run with a failure
    latest = {r["point_id"]: r["status"] for r in read_records(run_dir / "records.jsonl")}
    assert set(latest.values()) == {"ok", "skipped"}


def test_only_fresh_and_device_checks(harness):
    _, fake = harness(only=("hashes",))
    assert len(fake.seen) == 2
    with pytest.raises(options.RunError, match="--only nope"):
        harness(only=("nope",))
    with pytest.raises(options.RunError, match="CUDA is not available"):
        harness(device="cuda")
    run_dir, fake = harness(fresh=True)
    assert run_dir.name.startswith("cpu-cpu-") and len(fake.seen) == 4
    with pytest.raises(options.RunError, match="--profile gpu: CUDA is not available"):
        harness(profile="gpu")


def test_live_logger_sees_every_record(harness, monkeypatch):
    logged, finished = [], []
    logger = types.SimpleNamespace(log_record=logged.append, finish=lambda: finished.append(True))
    monkeypatch.setattr(lifecycle, "_live_logger", lambda run_dir: logger)
    run_dir, _ = harness(wandb=True)
    assert len(logged) == 5 and finished == [True]
    assert all(r["run_id"] == run_dir.name for r in logged)


def test_ray_executor_is_built_from_options(monkeypatch):
    ray_mod = pytest.importorskip("bench.executors.ray_executor")
    made = {}
    monkeypatch.setattr(ray_mod, "RayExecutor", lambda **kw: made.update(kw) or "ray")
    from bench.executors.factory import make_executor

    opts = options.RunOptions(executor="ray", ray_address="ray://head:10001", ray_connect_timeout_s=7.0)
    assert make_executor(opts, 60.0) == "ray"  # the real path: tests/bench/test_ray_executor.py
    assert made == {"address": "ray://head:10001", "timeout_s": 60.0, "connect_timeout_s": 7.0, "log": None}


def test_cli_list_and_refusal(write_suite, capsys):
    assert main(["list", "tiny"]) == 0
    assert "attention_kinds" in capsys.readouterr().out
    spec = small_suite()
    spec["studies"]["hashes"]["grid"]["n_hashes"] = []
    path = write_suite(spec)
    assert main(["run", str(path), "--profile", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "studies.hashes.grid.n_hashes" in err


def test_cli_dispatches_duplication_suites(write_suite, monkeypatch, tmp_path):
    import bench.plans.training as training_plans

    calls = {}
    plan = types.SimpleNamespace(kind="duplication", suite="dup", profile="cpu", trains=(), evals=())

    def training_plan(path, kind, profile, data=None):
        calls["plan"] = (path, kind, profile, data)
        return plan

    def run_plan(plan_, opts, console=None, **kwargs):
        calls["run"] = (plan_.plan, opts.run_id, opts.results_root, opts.fresh, plan_.device, opts.wandb)
        calls["time_budget_s"] = opts.time_budget_s
        run_dir = opts.results_root / "runs" / "dup" / opts.run_id
        run_dir.mkdir(parents=True)
        (run_dir / "run.json").write_text(json.dumps({"suite": "dup", "profile": "cpu", "device": "cpu",
                                                      "suite_spec": {"kind": "duplication"}}))
        return run_dir, True

    monkeypatch.setattr(training_plans, "training_plan", training_plan)
    monkeypatch.setattr(lifecycle, "run_plan", run_plan)
    monkeypatch.setitem(sys.modules, "bench.duplication.report",
                        types.SimpleNamespace(write_report=lambda d: calls.setdefault("report", []).append(d) or d))
    monkeypatch.setattr(options, "cuda_available", lambda: False)
    path = write_suite({"kind": "duplication", "name": "dup", "whatever": [1, 2]})
    assert main(["run", str(path), "--results-root", str(tmp_path / "r"), "--run-id", "x",
                 "--time-budget-s", "540"]) == 0
    assert calls["plan"] == (path, "duplication", "cpu", None)
    assert calls["run"] == (plan, "x", tmp_path / "r", False, "cpu", False)
    assert calls["time_budget_s"] == 540  # passed through, so GPU leases can resume duplication too
    run_dir = tmp_path / "r" / "runs" / "dup" / "x"
    assert calls["report"] == [run_dir]
    assert main(["report", str(run_dir)]) == 0  # `bench report` also routes it to its own report
    assert calls["report"] == [run_dir, run_dir]


def test_tiny_suite_end_to_end_then_continued(tmp_path):
    cmd = [sys.executable, "-m", "bench", "run", "tiny", "--profile", "cpu", "--results-root", str(tmp_path)]
    first = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert f"new run {run_dir}" in first.stdout
    records = read_records(run_dir / "records.jsonl")
    by_status = sorted((r["status"], r["params"]["attention"]) for r in records)
    assert by_status == [("ok", "full"), ("ok", "lsh"), ("skipped", "sdpa")], records
    lsh = next(r for r in records if r["params"]["attention"] == "lsh")
    assert lsh["studies"] == ["attention_kinds", "hash_rounds"]  # one point, two studies
    assert lsh["metrics"]["fwd_ms_median"] > 0 and lsh["effective"]
    assert json.loads((run_dir / "run.json").read_text())["suite_spec"]["path"] == "suites/tiny.yaml"

    # Naming the finished run measures nothing, says so loudly, and leaves its report alone.
    report = (run_dir / "report.md").stat().st_mtime_ns
    second = subprocess.run([*cmd, "--run-id", run_dir.name], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "NOTHING MEASURED" in second.stdout and "3 already recorded, 0 to do" in second.stdout
    assert read_records(run_dir / "records.jsonl") == records  # nothing ran twice, nothing was lost
    assert (run_dir / "report.md").stat().st_mtime_ns == report


def test_time_budget_stops_launching_points_and_a_rerun_finishes(tmp_path):
    base = [sys.executable, "-m", "bench", "run", "tiny", "--profile", "cpu", "--results-root", str(tmp_path)]
    first = subprocess.run([*base, "--time-budget-s", "0"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    records = read_records(run_dir / "records.jsonl")
    assert sorted(r["status"] for r in records) == ["ok", "skipped"]  # one point ran, then the budget stopped it
    second = subprocess.run(base, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming {run_dir}: 2 of 3 points done (--fresh starts anew)" in second.stdout
    records = read_records(run_dir / "records.jsonl")
    assert sorted(r["status"] for r in records) == ["ok", "ok", "skipped"]
    assert len({r["point_id"] for r in records}) == 3  # nothing ran twice
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == [run_dir.name]
