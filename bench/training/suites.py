"""The kinds of suite the common training runner serves, and the plan each resolves to."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from bench.duplication.spec import load_suite as load_duplication, resolve_profile, training_plan as duplication_plan
from bench.quality.spec import load_suite as load_quality, training_plan as quality_plan
from bench.training.plan import TrainingPlan

TRAINING_KINDS = ("duplication", "quality")


def training_plan(path: Path, kind: str, profile: str, data: Optional[Path] = None) -> TrainingPlan:
    """Load and validate a training suite and resolve one profile into a plan (ValueError naming
    the field on any problem; `data` is the corpus for `quality`, refused for `duplication`)."""
    if kind == "duplication":
        if data is not None:
            raise ValueError(f"--data {data}: the duplication task generates its data; it reads no corpus")
        return duplication_plan(resolve_profile(load_duplication(path), profile))
    if kind == "quality":
        return quality_plan(load_quality(path), profile, data)
    raise ValueError(f"{path}: kind {kind!r} is not a training suite ({', '.join(TRAINING_KINDS)})")
