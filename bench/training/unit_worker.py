"""A training run's unit in a fresh worker process of the fork server: the plan rebuilt from its
suite file, the unit (a training, an evaluation, an analysis) run to its record. A training the
time budget stops at a checkpoint answers status `stopped` (never stored)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from bench.training.plan import TrainingPlan
from bench.training.runner import Units
from bench.training.suites import training_plan

MEASURE = "bench.training.unit_worker:run_unit"  # what the fork server preloads and its workers call
STOPPED = "stopped"


def request(source: Mapping[str, Any], point_id: str, run_dir: Path, device: str,
            deadline_s: float | None) -> dict[str, Any]:
    """What a worker needs to run one unit: where its plan comes from, which unit, where, how long."""
    return {**source, "point_id": point_id, "run_dir": str(run_dir), "device": device, "deadline_s": deadline_s}


def _plan(unit: Mapping[str, Any]) -> TrainingPlan:
    data = unit.get("data")
    return training_plan(Path(unit["path"]), unit["kind"], unit["profile"], Path(data) if data else None)


def run_unit(unit: Mapping[str, Any]) -> dict[str, Any]:
    """Run one unit of the plan `unit` names; its record (any status), or a `stopped` marker."""
    plan = _plan(unit)
    deadline = None if unit.get("deadline_s") is None else time.monotonic() + float(unit["deadline_s"])
    units = Units(plan, Path(unit["run_dir"]), unit["device"], deadline=deadline,
                  say=lambda message: print(message, flush=True))
    pid = unit["point_id"]
    for point in plan.trains:
        if point.point_id == pid:
            record = units.train(point)
            return record if record is not None else {"point_id": pid, "status": STOPPED}
    for point in plan.evals:
        if point.point_id == pid:
            return units.evaluate(point)
    for point in plan.analyses:
        if point.point_id == pid:
            return units.analyse(point)
    raise KeyError(f"{pid}: no such unit in the plan of {unit['path']} (profile {unit['profile']})")
