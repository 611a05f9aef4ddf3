"""The duplication suite (`suites/duplication.yaml`): validated at the edge, then resolved per
profile into a plan of the common training runner: one training point per Table 2 row, one
evaluation point per (row, column) cell."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import BaseModel, Field, model_validator

from bench.duplication.data import DuplicationTask
from bench.duplication.evaluate import AttentionSetting, EvalSettings
from bench.duplication.task import WORKLOAD, DuplicationTraining
from bench.loader import CHECKED, NAME_PATTERN, read_yaml, validate
from bench.training.plan import EvalPoint, TrainingPlan, TrainPoint
from bench.training.settings import TrainSettings
from reformer_impl import ReformerConfig

# ---------------------------------------------------------------- suite spec (validated at the edge)
class TaskSection(BaseModel):
    model_config = CHECKED
    half_len: int = Field(ge=2)  # one `0 w` half; w has half_len - 1 symbols
    n_symbols: int = Field(ge=1)


class ModelSection(BaseModel):
    """The ReformerConfig fields a profile may set; the task fixes vocab_size, max_seq_len,
    causal and shared_qk, and each Table 2 row/column sets attention and n_hashes."""

    model_config = CHECKED
    d_model: int = 256
    d_ff: int = 256
    n_heads: int = 4
    n_layers: int = 1
    chunk_len: int = 64
    n_buckets: Optional[int] = None
    reversible: bool = True
    ff_chunks: int = 1
    pos_emb: Literal["axial", "absolute"] = "absolute"
    same_bucket: bool = False
    dup_correction: bool = True
    dropout: float = 0.0


class ProfileSpec(BaseModel):
    model_config = CHECKED
    description: str = ""
    task: TaskSection
    model: ModelSection
    train: TrainSettings
    eval: EvalSettings

    @model_validator(mode="after")
    def _check(self) -> "ProfileSpec":
        if self.eval.seed == self.train.seed:
            raise ValueError(f"eval.seed={self.eval.seed} equals train.seed: held-out sequences need another seed")
        base_config(self)  # ReformerConfig refuses impossible values, naming the field
        return self


class DuplicationSuite(BaseModel):
    model_config = CHECKED
    kind: Literal["duplication"]
    name: str = Field(default="duplication", pattern=NAME_PATTERN)
    description: str = ""
    train_models: tuple[AttentionSetting, ...] = Field(min_length=1)
    eval_settings: tuple[AttentionSetting, ...] = Field(min_length=1)
    profiles: dict[str, ProfileSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "DuplicationSuite":
        for key in ("train_models", "eval_settings"):
            names = [s.name for s in getattr(self, key)]
            if len(set(names)) != len(names):
                raise ValueError(f"{key}: names must be unique, got {names}")
        return self


def base_config(profile: ProfileSpec) -> ReformerConfig:
    """The profile's model before a row or column picks attention and n_hashes."""
    return ReformerConfig(**profile.model.model_dump(), vocab_size=profile.task.n_symbols + 1,
                          max_seq_len=2 * profile.task.half_len, causal=True, shared_qk=True, attention="full")


@dataclass(frozen=True)
class ResolvedSuite:
    """One profile of the suite with everything a run needs, typed."""

    suite: str
    profile: str
    task: DuplicationTask
    base: ReformerConfig
    train: TrainSettings
    eval: EvalSettings
    train_models: tuple[AttentionSetting, ...]
    eval_settings: tuple[AttentionSetting, ...]
    description: str = ""

    def train_config(self, model: AttentionSetting) -> ReformerConfig:
        return model.apply(self.base)

    def eval_config(self, model: AttentionSetting, setting: AttentionSetting) -> ReformerConfig:
        return setting.apply(self.train_config(model))

    def to_json(self) -> dict[str, Any]:
        """The resolved suite for run.json: hyper-parameters, the Table 2 grid and plot hints."""
        return {
            "kind": WORKLOAD, "suite": self.suite, "profile": self.profile, "description": self.description,
            "task": {**asdict(self.task), "seq_len": self.task.seq_len},
            "model": {k: v for k, v in asdict(self.base).items() if k not in ("attention", "n_hashes")},
            "train": {**self.train.model_dump(mode="json"), "optimizer": "AdamW",
                      "schedule": "linear warm-up, cosine decay to lr * min_lr_ratio", "loss": "second copy of w only"},
            "eval": self.eval.model_dump(mode="json"),
            "studies": {
                "train": {"grid": [m.model_dump() for m in self.train_models],
                          "plot": {"kind": "curves", "x": "step", "y": ["loss", "accuracy"], "hue": "model"}},
                "table2": {"grid": {"train_model": [m.name for m in self.train_models],
                                    "eval_setting": [s.name for s in self.eval_settings],
                                    "settings": [s.model_dump() for s in self.eval_settings]},
                           "plot": {"kind": "heatmap", "rows": "train_model", "cols": "eval_setting",
                                    "value": "accuracy"}},
            },
        }


def load_suite(path: Path) -> DuplicationSuite:
    """Parse and validate the YAML; any problem is a SuiteError naming the field and value."""
    path = Path(path)
    return validate(path, DuplicationSuite, read_yaml(path))


def resolve_profile(suite: DuplicationSuite, profile: str) -> ResolvedSuite:
    """Pick a profile ('auto': gpu when CUDA is available and the suite has one, else cpu)."""
    if profile == "auto":
        profile = "gpu" if torch.cuda.is_available() and "gpu" in suite.profiles else "cpu"
    if profile not in suite.profiles:
        raise ValueError(f"profile={profile!r}: not in suite {suite.name!r}; choose one of {sorted(suite.profiles)}")
    p = suite.profiles[profile]
    task = DuplicationTask(half_len=p.task.half_len, n_symbols=p.task.n_symbols)
    return ResolvedSuite(suite=suite.name, profile=profile, task=task, base=base_config(p), train=p.train,
                         eval=p.eval, train_models=suite.train_models, eval_settings=suite.eval_settings,
                         description=p.description)


def resolve_device(device: Optional[str], profile: str) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine")
    return device


def train_point_id(model: AttentionSetting) -> str:
    return f"dup-train-{model.name}"


def eval_point_id(model: AttentionSetting, setting: AttentionSetting) -> str:
    return f"dup-eval-{model.name}-as-{setting.name}"


def planned_ids(run: ResolvedSuite) -> list[str]:
    """Every point a run of this suite records: one per trained model, one per Table 2 cell."""
    return training_plan(run).planned_ids()


def training_plan(run: ResolvedSuite) -> TrainingPlan:
    """The common runner's plan: Table 2's rows trained, every (row, column) cell evaluated."""
    trains = {m.name: TrainPoint(point_id=train_point_id(m), name=m.name, seed=run.train.seed,
                                 cfg=run.train_config(m), settings=run.train, studies=("train",))
              for m in run.train_models}
    evals = tuple(EvalPoint(point_id=eval_point_id(m, s), train=trains[m.name], setting=s.name,
                            cfg=run.eval_config(m, s), studies=("table2",))
                  for m in run.train_models for s in run.eval_settings)
    return TrainingPlan(kind=WORKLOAD, suite=run.suite, profile=run.profile,
                        task=DuplicationTraining(run.task, run.eval), spec=run.to_json(),
                        trains=tuple(trains.values()), evals=evals, threads=run.train.threads)
