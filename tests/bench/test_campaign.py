"""`python -m bench campaign`: slices packed from the remaining work, a dry run on CPU that lists the
slices and points of every gpu profile, and a slice that hands each suite what is left of its time."""
from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import bench.campaign as campaign
import bench.lifecycle as lifecycle
import bench.options as options
import bench.plans.grid as grid_plan
from bench.campaign import SUITES, Work, plan_slices, survey_suite
from bench.cli import main
from bench.store import RunStore, make_record
from bench.suite import load_suite


def _work(suite: str, n: int, item_s: float) -> Work:
    return Work(suite, "grid", Path("/x"), tuple(f"{suite}-{i}" for i in range(n)), 0, item_s)


def test_plan_slices_packs_in_suite_order_by_estimate():
    slices = plan_slices([_work("a", 5, 100), _work("b", 3, 200), _work("c", 1, 900)], slice_s=480)
    assert slices == [
        [("a", ["a-0", "a-1", "a-2", "a-3"])],
        [("a", ["a-4"]), ("b", ["b-0"])],
        [("b", ["b-1", "b-2"])],
        [("c", ["c-0"])],  # longer than a slice: a slice of its own
    ]
    assert plan_slices([_work("a", 0, 10)], 480) == []


def test_dry_run_lists_every_gpu_suite_and_counts_recorded_points(tmp_path, capsys):
    memory = load_suite("memory")
    points = memory.expand("gpu", auto_device="cuda")
    before = survey_suite("memory", "gpu", tmp_path)
    store = RunStore(before.run_dir)
    for p in points[:3]:
        store.append(make_record(p.point, "ok"))
    after = survey_suite("memory", "gpu", tmp_path)
    assert len(after.items) == len(before.items) - 3 and after.done == 3

    assert main(["campaign", "--profile", "gpu", "--dry-run", "--results-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for suite in SUITES:
        assert suite in out
    assert "slice 1" in out and points[3].point.point_id in out
    assert points[0].point.point_id not in out.split("slice 1", 1)[1]  # recorded: not run again
    from bench.capacity.planner import next_probe
    from bench.capacity.searches import search_for
    from bench.capacity.spec import load_capacity_suite, resolve

    cap_path, cap_spec = load_capacity_suite("capacity")
    cap = resolve(cap_spec, "gpu", "cuda", cap_path)
    config = next(c for c in cap.configs if c.label == "full reversible=false")
    first = next_probe(search_for(cap, config), {}).value  # the run's (calibrated) search's first probe
    assert f"full reversible=false: next seq_len={first}" in out  # capacity: the planner's next probe


def test_bad_slice_and_unknown_suite_refused(tmp_path, capsys):
    assert main(["campaign", "--slice-s", "900", "--results-root", str(tmp_path)]) == 2
    assert "--slice-s 900" in capsys.readouterr().err
    assert main(["campaign", "--suite", "nope", "--dry-run", "--results-root", str(tmp_path)]) == 2
    assert "suite 'nope'" in capsys.readouterr().err


def test_a_slice_hands_each_suite_the_time_left_and_stops_when_spent(tmp_path, monkeypatch):
    calls: list[tuple[str, float]] = []
    clock = iter([0.0, 0.0, 300.0, 470.0] + [470.0] * 20)  # start, then one reading per suite
    monkeypatch.setattr(campaign.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(campaign, "run_suite", lambda name, opts, console: calls.append((name, opts.time_budget_s)))
    left = campaign.run_campaign(["memory", "speed", "lsh_vs_full"], "gpu", tmp_path, 480.0,
                                 Console(file=io.StringIO()))
    assert calls == [("memory", 480.0), ("speed", 180.0)]  # lsh_vs_full: 10 s left < MIN_START_S
    assert left > 0
