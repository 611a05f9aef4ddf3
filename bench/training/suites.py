"""The kinds of suite the common training runner serves, and the plan each resolves to."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from bench.duplication.spec import load_suite as load_duplication, resolve_profile, training_plan as duplication_plan
from bench.quality.spec import load_suite as load_quality, training_plan as quality_plan
from bench.training.plan import TrainingPlan

def _duplication(path: Path, profile: str, data: Optional[Path]) -> TrainingPlan:
    if data is not None:
        raise ValueError(f"--data {data}: the duplication task generates its data; it reads no corpus")
    return duplication_plan(resolve_profile(load_duplication(path), profile))


def _quality(path: Path, profile: str, data: Optional[Path]) -> TrainingPlan:
    return quality_plan(load_quality(path), profile, data)


PLANS = {"duplication": _duplication, "quality": _quality}
TRAINING_KINDS = tuple(PLANS)


def training_plan(path: Path, kind: str, profile: str, data: Optional[Path] = None) -> TrainingPlan:
    """Load and validate a training suite and resolve one profile into a plan (ValueError naming
    the field on any problem; `data` is the corpus for `quality`, refused for `duplication`)."""
    if kind not in PLANS:
        raise ValueError(f"{path}: kind {kind!r} is not a training suite ({', '.join(TRAINING_KINDS)})")
    return PLANS[kind](path, profile, data)
