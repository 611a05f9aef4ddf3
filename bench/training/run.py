"""A training plan built in code (`python -m bench.duplication`, tests) run through the common
lifecycle, up to its summary: the same run folder rules, lock, run.json and records as `bench run`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from rich.console import Console

from bench.lifecycle import OnRecord, run_plan as run_lifecycle
from bench.options import RunOptions
from bench.plans.training import TrainingRunPlan
from bench.training.plan import TrainingPlan


def run_plan(plan: TrainingPlan, opts: RunOptions, device: str, console: Optional[Console] = None, *,
             reevaluate: bool = False, train: bool = True, wandb: bool = False,
             on_record: Optional[OnRecord] = None) -> tuple[Path, bool]:
    """Run `plan` on `device`: `train=False` evaluates an existing run's checkpoints (needs
    `opts.run_id`), `reevaluate` evaluates every finished model again. Returns (run folder,
    whether it ran to its end); raises NothingToMeasure when nothing is left."""
    if not train and not opts.run_id:
        raise ValueError("evaluating without training needs --run-id: the run whose checkpoints to evaluate")
    opts = dataclasses.replace(opts, wandb=opts.wandb or wandb)
    return run_lifecycle(TrainingRunPlan(plan, device, reevaluate=reevaluate, train=train), opts, console,
                         on_record=on_record)
