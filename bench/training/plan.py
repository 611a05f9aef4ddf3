"""A training run's plan: what to train (a model configuration and seed per point), how to evaluate
each trained model (one point per evaluation setting) and which analyses read its weights. Built by
each kind's suite (duplication, quality); run through the common lifecycle by `bench.plans.training`."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from bench.store import plan_key
from bench.training.settings import TrainSettings
from bench.training.task import TrainingTask
from reformer_impl import ReformerConfig

# analysis(model, device) -> {"metrics": {...}, "table": [row, ...]}: what an analysis point records.
Analysis = Callable[[torch.nn.Module, torch.device], Mapping[str, Any]]
STUDY_PROSE = ("description", "hypothesis", "paper")  # a study's words, not its plan


@dataclass(frozen=True)
class TrainPoint:
    """One model configuration trained with one seed; its checkpoint is `checkpoints/<point_id>.pt`."""

    point_id: str
    name: str  # the suite's name of the configuration, e.g. "lsh-4"
    seed: int
    cfg: ReformerConfig
    settings: TrainSettings  # its seed is `seed`
    studies: tuple[str, ...] = ()
    # Its own task where the plan's does not fit it (e.g. a copy task of another length); None: the plan's.
    task: Optional[TrainingTask] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class EvalPoint:
    """A trained model evaluated under one setting: its weights loaded into `cfg` (e.g. more hash rounds)."""

    point_id: str
    train: TrainPoint
    setting: str  # the evaluation setting's name ("as trained" uses the model's own name)
    cfg: ReformerConfig
    studies: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnalysisPoint:
    """An analysis of a trained model's weights or activations (e.g. how well LSH approximates full
    attention), or, with `needs_model` False, of the task alone (the count-model baselines): that one
    runs after the trainings whether or not `train` finished, and is handed no model."""

    point_id: str
    train: TrainPoint
    name: str
    run: Analysis = field(compare=False, repr=False)
    params: Mapping[str, Any] = field(default_factory=dict)
    studies: tuple[str, ...] = ()
    needs_model: bool = True


@dataclass(frozen=True)
class TrainingPlan:
    """Everything one profile of a training suite runs, typed, and what run.json records of it."""

    kind: str  # "duplication" | "quality"
    suite: str
    profile: str
    task: TrainingTask
    spec: Mapping[str, Any]  # the resolved suite, JSON-ready: run.json's suite_spec
    trains: tuple[TrainPoint, ...]
    evals: tuple[EvalPoint, ...] = ()
    analyses: tuple[AnalysisPoint, ...] = ()
    validate_every: Optional[int] = None  # steps between held-out figures on the learning curves
    record_params: Mapping[str, Any] = field(default_factory=dict)  # in every record (e.g. the corpus)
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        ids = self.planned_ids()
        dupes = sorted({pid for pid in ids if ids.count(pid) > 1})
        if dupes:
            raise ValueError(f"suite {self.suite!r}: point ids {dupes} are planned twice")

    def task_of(self, train: TrainPoint) -> TrainingTask:
        """The task `train` (and every evaluation of it) runs on: its own, else the plan's."""
        return train.task if train.task is not None else self.task

    def planned_ids(self) -> list[str]:
        return [p.point_id for p in (*self.trains, *self.evals, *self.analyses)]

    def spec_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.spec))  # as it reads back from disk

    def resume_key(self) -> str:
        """What a continued run must share with the one that began it (not prose, not thread counts)."""
        return plan_key(resume_spec(self.spec_json()), self.planned_ids())


def resume_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved suite a resumed run must share: not its prose (the suite's description,
    each study's description, hypothesis and paper), not thread counts."""
    key = {k: v for k, v in spec.items() if k != "description"}
    if isinstance(key.get("train"), dict):
        key["train"] = {k: v for k, v in key["train"].items() if k != "threads"}
    if isinstance(key.get("studies"), dict):  # what a study tests and which figure: it trains nothing
        key["studies"] = {name: {k: v for k, v in study.items() if k not in STUDY_PROSE} if isinstance(study, dict)
                          else study for name, study in key["studies"].items()}
    return key
