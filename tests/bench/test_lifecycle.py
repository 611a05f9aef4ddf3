"""The one lifecycle drives any plan through the ask/tell interface: rounds of units asked from the
records so far, each record appended as it lands, run.json written once with the plan's kind, the
time budget kept between units, and a finished folder measuring nothing."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

import bench.lifecycle as lifecycle
from bench.options import NothingToMeasure, RunOptions
from bench.store import read_records


class FakePlan:
    """Round 1 hands out `a` and `b`; round 2 hands out `c` only once `b` is recorded ok."""

    kind, suite, profile, device = "fake", "fakesuite", "cpu", "cpu"
    report_module = "bench.report"
    units_word, checkpoints = "units", False

    def __init__(self) -> None:
        self.asked: list[list[str]] = []
        self.summaries: list[int] = []

    def spec(self):
        return {"name": self.suite, "rounds": 2}

    def planned(self):
        return ["a", "b", "c"]

    def key(self):
        return "fake-key"

    def check_kept(self, kept, run_dir, say):
        pass

    def start(self, records, retry_failed):
        self.done = {r["point_id"] for r in records if r["status"] == "ok"}
        return len(self.done), 3

    def nothing_left(self, run_dir, total):
        return f"all {total} done"

    def nothing_to_run(self):
        return None

    def ask(self):
        units = [u for u in ("a", "b") if u not in self.done] or (["c"] if "c" not in self.done else [])
        self.asked.append(units)
        return units

    def tell(self, unit, record):
        self.done.add(unit)
        return record

    def executor(self, opts, run_dir, say):
        return FakeExecutor()

    def one_line(self, unit, record):
        return f"{unit} {record['status']}"

    def summary(self, console, records):
        self.summaries.append(len(records))


class FakeExecutor:
    closed = False

    def run(self, units):
        for u in units:
            yield u, {"point_id": u, "status": "ok", "params": {}, "metrics": {}}

    def close(self):
        FakeExecutor.closed = True


def run(plan, root: Path, **opts):
    options = RunOptions(results_root=root, **opts)
    return lifecycle.run_plan(plan, options, Console(file=io.StringIO(), width=200))


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr("bench.load.busy_reason", lambda: None)


def test_the_plan_is_asked_in_rounds_until_it_hands_out_nothing(tmp_path):
    plan = FakePlan()
    run_dir, complete = run(plan, tmp_path)
    assert complete and plan.asked == [["a", "b"], ["c"], []]
    assert [r["point_id"] for r in read_records(run_dir / "records.jsonl")] == ["a", "b", "c"]
    assert all(r["run_id"] == run_dir.name for r in read_records(run_dir / "records.jsonl"))
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["kind"] == "fake" and meta["planned"] == ["a", "b", "c"] and meta["plan_key"] == "fake-key"
    assert plan.summaries == [3] and FakeExecutor.closed
    with pytest.raises(NothingToMeasure, match="all 3 done"):  # the finished run, named, measures nothing
        run(FakePlan(), tmp_path, run_id=run_dir.name)
    assert len(read_records(run_dir / "records.jsonl")) == 3


def test_the_time_budget_stops_after_a_unit_and_a_rerun_continues_the_same_run(tmp_path):
    first, complete = run(FakePlan(), tmp_path, time_budget_s=0)
    assert not complete and [r["point_id"] for r in read_records(first / "records.jsonl")] == ["a"]
    plan = FakePlan()
    again, complete = run(plan, tmp_path)  # this host's unfinished run of the same plan
    assert again == first and complete and plan.asked == [["b"], ["c"], []]
    assert [r["point_id"] for r in read_records(first / "records.jsonl")] == ["a", "b", "c"]
