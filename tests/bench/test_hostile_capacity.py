"""The capacity study on hostile input (issue 25, items 2 and 8): a search never probes a value the
run already holds a record of (a record its search does not count, as a `.inf` budget stored as
null once made, stops the run with a message instead of a probe repeated forever); a CPU budget below
what an idle probe worker holds is refused up front naming the field, and one above that floor but
below the worker's real footprint is said to be so by the probe, the summary and the report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.capacity.runner import finish_record
from bench.capacity.spec import load_capacity_suite, resolve
from bench.cli import main
from bench.options import RunError
from bench.plans.capacity import CapacitySearchPlan
from bench.store import make_record, read_records

from .conftest import REPO_ROOT

SUITE = """\
kind: capacity
name: caphostile
base: {d_model: 16, n_heads: 2, d_ff: 32, n_layers: 1, vocab_size: 32, reversible: false, dtype: float32}
search: {over: seq_len, start: 1024, max_value: 4096, resolution: 0.5, multiple: 256}
timeout_s: 60
configs:
  - {name: full, base: {attention: full}}
profiles:
  cpu: {memory_budget_gib: 2, device: cpu}
"""


def _write(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "caphostile.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _plan(tmp_path: Path) -> CapacitySearchPlan:
    path, spec = load_capacity_suite(_write(tmp_path))
    return CapacitySearchPlan(resolve(spec, "cpu", "cpu", path), path, say=lambda *a: None)


def _record(plan: CapacitySearchPlan, value: int, status: str, **params) -> dict:
    config = plan.resolved.configs[0]
    metrics = {"peak_rss_mib": 300.0 + value / 10} if status == "ok" else None
    raw = make_record(plan.resolved.point(config, value), status, None if status == "ok" else "ValueError: flaky",
                      metrics=metrics)
    record = finish_record(raw, plan.resolved, config, value, "r")
    record["params"].update(params)
    return json.loads(json.dumps(record))  # as records.jsonl gives it back


# ---- item 2: a search never probes a value it has just recorded ------------------------------------

def test_a_record_the_search_does_not_count_stops_the_run_instead_of_probing_its_value_again(tmp_path):
    plan = _plan(tmp_path)
    stale = _record(plan, 256, "ok", memory_budget_gib=None)  # how a `.inf` budget was stored: null
    with pytest.raises(RunError) as refused:
        plan.start([stale], retry_failed=False)
    message = str(refused.value)
    assert "'full'" in message and "seq_len=256 again" in message and "memory_budget_gib=None" in message
    assert "--fresh" in message


def test_the_same_record_under_the_searchs_budget_moves_the_search_on(tmp_path):
    plan = _plan(tmp_path)
    plan.start([_record(plan, 256, "ok")], retry_failed=False)
    [unit] = plan.ask()
    assert unit.value == 512  # the next calibration length, not 256 again


def test_a_value_told_in_this_run_is_never_asked_again(tmp_path):
    plan = _plan(tmp_path)
    plan.start([], retry_failed=False)
    [unit] = plan.ask()
    told = plan.tell(unit, make_record(unit.point, "ok", metrics={"peak_rss_mib": 310.0}))
    plan._outcomes[unit.config.label].clear()  # a search that forgot its outcome (the planner's bug this guards)
    with pytest.raises(RunError, match=f"seq_len={unit.value} again"):
        plan.ask()
    assert told["params"]["memory_budget_gib"] == 2.0


def test_retry_failed_probes_a_failed_value_once_more(tmp_path):
    plan = _plan(tmp_path)
    plan.start([_record(plan, 256, "error")], retry_failed=True)
    [unit] = plan.ask()
    assert unit.value == 256  # what --retry-failed asks for, not a repeat


# ---- item 8: a budget below the worker's own footprint ---------------------------------------------

@pytest.mark.parametrize("change, field", [
    (("memory_budget_gib: 2,", "memory_budget_gib: 0.05,"), "profiles.cpu.memory_budget_gib=0.05 (51 MiB)"),
    (("device: cpu}", "device: cpu, config_budget: {full: {memory_budget_gib: 0.1}}}"),
     "profiles.cpu.config_budget.full.memory_budget_gib=0.1 (102 MiB)"),
])
def test_a_budget_below_any_workers_footprint_is_refused_up_front_naming_the_field(tmp_path, capsys, change, field):
    path = _write(tmp_path, SUITE.replace(*change))
    root = tmp_path / "results"
    assert main(["run", str(path), "--profile", "cpu", "--device", "cpu", "--results-root", str(root)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {field}"), lines
    assert "footprint of an idle probe worker" in lines[0] and "128 MiB" in lines[0]
    assert not root.exists()


def test_a_budget_below_the_workers_real_footprint_is_said_by_probe_summary_and_report(tmp_path):
    """0.13 GiB (133 MiB) passes the floor, but a worker with torch loaded holds more before its model."""
    path = _write(tmp_path, SUITE.replace("memory_budget_gib: 2,", "memory_budget_gib: 0.13,"))
    root = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--profile", "cpu", "--results-root",
                           str(root)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [run_dir] = (root / "runs" / "caphostile").iterdir()
    [record] = read_records(run_dir / "records.jsonl")  # the smallest calibration length, nothing below it
    assert record["status"] == "oom" and "below the worker's own footprint" in record["reason"], record
    footprint = record["metrics"]["baseline_rss_mib"]
    assert footprint > 0.13 * 1024
    said = " ".join(done.stdout.split())
    note = f"the budget (133 MiB) is below the probe worker's own footprint ({footprint:.0f} MiB"
    assert f"full: nothing fits (smallest failure 256); 1 probes; {note}" in said
    assert said.count(note) == 2  # the search's done line and the summary table
    report = " ".join((run_dir / "report.md").read_text().split())
    assert f"`full`: memory (baseline_rss); {note}" in report
