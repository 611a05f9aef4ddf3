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


class CopyDistanceProfile(BaseModel):
    """The lengths a profile trains the copy-distance study's models at: `0 w` halves of these sizes."""

    model_config = CHECKED
    half_lens: tuple[int, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "CopyDistanceProfile":
        if any(isinstance(h, bool) or h < 2 for h in self.half_lens):
            raise ValueError(f"half_lens={list(self.half_lens)}: every half length must be an integer >= 2")
        if len(set(self.half_lens)) != len(self.half_lens):
            raise ValueError(f"half_lens={list(self.half_lens)}: lengths must be unique")
        return self


class CopyDistanceSection(BaseModel):
    """Accuracy against copy distance: each model trained and scored at every length of the profile."""

    model_config = CHECKED
    description: str = ""
    models: tuple[AttentionSetting, ...] = Field(min_length=1)


class ProfileSpec(BaseModel):
    model_config = CHECKED
    description: str = ""
    task: TaskSection
    model: ModelSection
    train: TrainSettings
    eval: EvalSettings
    copy_distance: Optional[CopyDistanceProfile] = None

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
    copy_distance: Optional[CopyDistanceSection] = None
    profiles: dict[str, ProfileSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "DuplicationSuite":
        named = {"train_models": self.train_models, "eval_settings": self.eval_settings,
                 "copy_distance.models": self.copy_distance.models if self.copy_distance else ()}
        for key, settings in named.items():
            names = [s.name for s in settings]
            if len(set(names)) != len(names):
                raise ValueError(f"{key}: names must be unique, got {names}")
        for name, profile in self.profiles.items():
            if profile.copy_distance is not None and self.copy_distance is None:
                raise ValueError(f"profiles.{name}.copy_distance: the suite has no copy_distance section "
                                 "naming its models")
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
    copy_models: tuple[AttentionSetting, ...] = ()  # the copy-distance study's, trained at each length
    copy_half_lens: tuple[int, ...] = ()
    copy_description: str = ""

    def copy_task(self, half_len: int) -> DuplicationTask:
        return DuplicationTask(half_len=half_len, n_symbols=self.task.n_symbols)

    def copy_config(self, model: AttentionSetting, half_len: int) -> ReformerConfig:
        return model.apply(self.base.replace(max_seq_len=2 * half_len))

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
                **({"copy_distance": {
                    "description": self.copy_description,
                    "grid": {"model": [m.name for m in self.copy_models],
                             "seq_len": [2 * h for h in self.copy_half_lens],
                             "settings": [m.model_dump() for m in self.copy_models]},
                    "window": 2 * self.base.chunk_len,
                    "plot": {"kind": "lines", "x": "seq_len", "y": "accuracy", "hue": "model"}}}
                   if self.copy_models and self.copy_half_lens else {}),
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
    copy = suite.copy_distance if p.copy_distance is not None else None
    base = base_config(p)
    if copy is not None:  # the longest length fixes max_seq_len of each copy model; refuse a bad one now
        for model in copy.models:
            model.apply(base.replace(max_seq_len=2 * max(p.copy_distance.half_lens)))
    return ResolvedSuite(suite=suite.name, profile=profile, task=task, base=base, train=p.train,
                         eval=p.eval, train_models=suite.train_models, eval_settings=suite.eval_settings,
                         description=p.description,
                         copy_models=copy.models if copy else (),
                         copy_half_lens=p.copy_distance.half_lens if copy else (),
                         copy_description=copy.description if copy else "")


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


def copy_train_id(model: AttentionSetting, half_len: int) -> str:
    return f"dup-cd-train-{model.name}-L{2 * half_len}"


def copy_eval_id(model: AttentionSetting, half_len: int) -> str:
    return f"dup-cd-eval-{model.name}-L{2 * half_len}"


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
    copy_trains, copy_evals = _copy_distance_points(run, trains)
    return TrainingPlan(kind=WORKLOAD, suite=run.suite, profile=run.profile,
                        task=DuplicationTraining(run.task, run.eval), spec=run.to_json(),
                        trains=(*trains.values(), *copy_trains), evals=(*evals, *copy_evals),
                        threads=run.train.threads)


def _copy_distance_points(run: ResolvedSuite, table2: dict[str, TrainPoint]):
    """Each copy-distance model trained at each length (a Table 2 training of the same configuration
    and length is reused) and scored as trained on held-out sequences of that length."""
    trains, evals = [], []
    for half_len in run.copy_half_lens:
        task = None if half_len == run.task.half_len else DuplicationTraining(run.copy_task(half_len), run.eval)
        for model in run.copy_models:
            cfg = run.copy_config(model, half_len)
            same = table2.get(model.name)
            if task is None and same is not None and same.cfg == cfg:
                train = same
            else:
                train = TrainPoint(point_id=copy_train_id(model, half_len), name=model.name, seed=run.train.seed,
                                   cfg=cfg, settings=run.train, studies=("copy_distance",), task=task)
                trains.append(train)
            evals.append(EvalPoint(point_id=copy_eval_id(model, half_len), train=train, setting=model.name,
                                   cfg=cfg, studies=("copy_distance",)))
    return trains, evals
