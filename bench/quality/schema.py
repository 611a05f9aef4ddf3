"""`kind: quality` suites, validated: models by name, studies comparing them, evaluation settings,
the LSH approximation analysis and per-profile training. Torch-free (`bench list` reads it); the
plan is built by bench.quality.spec."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from bench.grid import canonical_model
from bench.loader import CHECKED as _STRICT, NAME_PATTERN, check_name as _check_name, check_settings as _check_settings
from bench.loader import read_yaml, reformer_config_class, validate
from bench.training.settings import TrainSettings

ReformerConfig = reformer_config_class()
KIND = "quality"
# ReformerConfig fields the task fixes: bytes in, bytes out, causal, one length.
TASK_FIELDS = ("vocab_size", "max_seq_len", "causal")
Name = Field(pattern=NAME_PATTERN, min_length=1)


def _model_overrides(raw: Any) -> dict[str, Any]:
    """ReformerConfig fields only (typed as the grid suites type them), never the task's."""
    settings = _check_settings(raw)
    bad = [k for k in settings if k in TASK_FIELDS or k not in {f.name for f in dataclasses.fields(ReformerConfig)}]
    if bad:
        raise ValueError(f"{', '.join(bad)}: not a model setting a quality suite may change "
                         f"(the task fixes {', '.join(TASK_FIELDS)}; seq_len is the profile's)")
    return settings


class StudySpec(BaseModel):
    """Models compared in one figure; each is also evaluated under the study's `eval` settings."""

    model_config = _STRICT
    description: str = ""
    paper: str = ""  # the paper's figure this reproduces, or why it is beyond the paper
    hypothesis: str = Field(min_length=1)  # what the paper claims (or a reviewer asks), to test
    models: tuple[str, ...] = Field(min_length=2)
    eval: tuple[str, ...] = ()
    baseline: Optional[str] = None  # the model the others are compared against (default: the last)
    x: Optional[str] = None  # the model field that varies, for plots against it (e.g. n_hashes)


class ApproximationSpec(BaseModel):
    """How well LSH approximates full attention on `model`'s real activations (block `layer`)."""

    model_config = _STRICT
    model: str
    layer: int = Field(default=0, ge=0)
    n_hashes: tuple[int, ...] = Field(min_length=1)
    chunk_lens: tuple[int, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = Field(min_length=1)  # rotation seeds: the spread of one configuration
    windows: int = Field(default=2, ge=1)  # valid-split windows whose activations are analysed

    @field_validator("n_hashes", "chunk_lens")
    @classmethod
    def _positive(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in values):
            raise ValueError(f"must be >= 1 (got {list(values)})")
        return values


class EvalSection(BaseModel):
    model_config = _STRICT
    windows: Optional[int] = Field(default=None, ge=1)  # valid windows scored (None: all)
    batch_size: int = Field(ge=1)
    curve_windows: int = Field(ge=1)  # valid windows scored at each learning-curve point
    validate_every: int = Field(ge=1)  # steps between learning-curve points (a multiple of train.log_every)


class ProfileSpec(BaseModel):
    model_config = _STRICT
    description: str = ""
    seq_len: int = Field(ge=2)
    seeds: tuple[int, ...] = Field(min_length=1)
    # The studies this profile trains and reports (None: every study of the suite): a small machine
    # spends its budget on fewer, longer trainings. The no-attention controls are always trained.
    studies: Optional[tuple[str, ...]] = Field(default=None, min_length=1)
    # A study's own seeds where its claim needs more (or fewer) than the profile's `seeds`.
    study_seeds: dict[str, tuple[int, ...]] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)
    train: TrainSettings
    eval: EvalSection

    _valid_model = field_validator("model", mode="before")(classmethod(lambda cls, raw: _model_overrides(raw)))

    @model_validator(mode="after")
    def _check(self) -> "ProfileSpec":
        if self.eval.validate_every % self.train.log_every:
            raise ValueError(f"eval.validate_every={self.eval.validate_every} must be a multiple of "
                             f"train.log_every={self.train.log_every}")
        for where, seeds in (("seeds", self.seeds), *((f"study_seeds.{k}", v) for k, v in self.study_seeds.items())):
            if not seeds:
                raise ValueError(f"{where}: no seed")
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"{where}: {list(seeds)} repeats a seed")
        if self.studies is not None and len(set(self.studies)) != len(self.studies):
            raise ValueError(f"studies: {list(self.studies)} names a study twice")
        return self


class QualitySuite(BaseModel):
    model_config = _STRICT
    kind: Literal["quality"]
    name: str = Field(default="quality", pattern=NAME_PATTERN)
    description: str = ""
    models: dict[str, dict[str, Any]] = Field(min_length=2)
    eval_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    studies: dict[str, StudySpec] = Field(min_length=1)
    lsh_approximation: Optional[ApproximationSpec] = None
    profiles: dict[str, ProfileSpec] = Field(min_length=1)

    @field_validator("studies")
    @classmethod
    def _safe_study_names(cls, studies: dict[str, StudySpec]) -> dict[str, StudySpec]:
        for name in studies:  # a study name becomes a plot's file name
            _check_name("study name", name)
        return studies

    @field_validator("models", "eval_settings", mode="before")
    @classmethod
    def _valid_overrides(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out = {}
        for name, overrides in raw.items():
            if not isinstance(name, str):
                raise ValueError(f"{name!r}: a name must be a string")
            _check_name("name", name)
            try:
                out[name] = _model_overrides(overrides)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return out

    @model_validator(mode="after")
    def _check_references(self) -> "QualitySuite":
        for sname, study in self.studies.items():
            for m in study.models:
                if m not in self.models:
                    raise ValueError(f"studies.{sname}.models: unknown model {m!r}; known: {', '.join(self.models)}")
            for e in study.eval:
                if e not in self.eval_settings:
                    raise ValueError(f"studies.{sname}.eval: unknown evaluation setting {e!r}; "
                                     f"known: {', '.join(self.eval_settings) or 'none'}")
            if study.baseline is not None and study.baseline not in study.models:
                raise ValueError(f"studies.{sname}.baseline: {study.baseline!r} is not one of its models")
            if study.x is not None and study.x not in {f.name for f in dataclasses.fields(ReformerConfig)}:
                raise ValueError(f"studies.{sname}.x: {study.x!r} is not a model field")
        if self.lsh_approximation is not None and self.lsh_approximation.model not in self.models:
            raise ValueError(f"lsh_approximation.model: unknown model {self.lsh_approximation.model!r}")
        for name in controls(self):
            if any(name in study.models for study in self.studies.values()):
                raise ValueError(f"models.{name}: a no-attention control (attention: none) is every study's baseline "
                                 "in the report; list it in no study")
        for pname, profile in self.profiles.items():
            for where, names in (("studies", profile.studies or ()), ("study_seeds", profile.study_seeds)):
                for s in names:
                    if s not in self.studies:
                        raise ValueError(f"profiles.{pname}.{where}: unknown study {s!r}; known: {', '.join(self.studies)}")
            for s in profile.study_seeds:
                if s not in profile_studies(self, pname):
                    raise ValueError(f"profiles.{pname}.study_seeds.{s}: the profile does not run study {s!r}")
            resolve_models(self, pname)  # impossible configs refused now, naming the model and field
        return self


def controls(suite: QualitySuite) -> tuple[str, ...]:
    """The suite's no-attention controls: models whose attention is `none` (the branch outputs zeros)."""
    return tuple(m for m, overrides in suite.models.items() if overrides.get("attention") == "none")


def profile_studies(suite: QualitySuite, profile: str) -> tuple[str, ...]:
    """The studies a profile runs, in the suite's order."""
    chosen = suite.profiles[profile].studies
    return tuple(s for s in suite.studies if chosen is None or s in chosen)


def study_seeds(suite: QualitySuite, profile: str, study: str) -> tuple[int, ...]:
    p = suite.profiles[profile]
    return tuple(p.study_seeds.get(study, p.seeds))


def model_config(suite: QualitySuite, profile: str, overrides: dict[str, Any], cls: Optional[type] = None) -> Any:
    """A named model's config for a profile (of `cls`; by default the torch-free class, for checks)."""
    p = suite.profiles[profile]
    return (cls or ReformerConfig)(**{**p.model, **overrides, "vocab_size": 256, "max_seq_len": p.seq_len, "causal": True})


def resolve_models(suite: QualitySuite, profile: str, cls: Optional[type] = None) -> dict[str, Any]:
    """Every named model of the profile; an impossible one, or two names for one config, refused."""
    configs, seen = {}, {}
    for name, overrides in suite.models.items():
        try:
            cfg = configs[name] = model_config(suite, profile, overrides, cls)
        except ValueError as exc:
            raise ValueError(f"profiles.{profile}: models.{name}: {exc}") from None
        fields = dataclasses.asdict(cfg)
        key = repr(sorted({**canonical_model(fields, tuple(fields)), "residual": cfg.residual}.items()))
        if key in seen:
            raise ValueError(f"profiles.{profile}: models.{name} and models.{seen[key]} are the same configuration; "
                             "name it once and list it in every study that needs it")
        seen[key] = name
    return configs


def load_suite(path: Path) -> QualitySuite:
    """Parse and validate the YAML; any problem is a SuiteError naming the field and value."""
    path = Path(path)
    return validate(path, QualitySuite, read_yaml(path))


BASELINES_ID = "baselines-count-models"  # the count-model baselines' analysis point


@dataclass(frozen=True)
class Units:
    """What one profile trains, evaluates and analyses, by name: trainings (model, seed) -> studies;
    evaluations (model, seed, setting or None for "as trained") -> (config, studies); analyses
    (point id -> (model, seed) whose trained weights it reads, or that it hangs on)."""

    trains: dict[tuple[str, int], tuple[str, ...]]
    evals: dict[tuple[str, int, Optional[str]], tuple[Any, tuple[str, ...]]]
    analyses: dict[str, tuple[str, int]]


def planned_units(suite: QualitySuite, profile: str, configs: Optional[dict[str, Any]] = None) -> Units:
    """One training per used model and seed (a model's seeds: those of every study of the profile it is
    in; a no-attention control's: every seed the profile uses, and it counts for every study), an
    evaluation "as trained" of each, one per extra setting of its studies that changes its config, the
    approximation analysis per profile seed, and one count-model baselines analysis (the one rule the
    plan and `bench list` share)."""
    p = suite.profiles[profile]
    configs = configs or resolve_models(suite, profile)
    run = profile_studies(suite, profile)
    studies_of = {m: tuple(s for s in run if m in suite.studies[s].models) for m in suite.models}
    approx = suite.lsh_approximation
    seeds_of: dict[str, tuple[int, ...]] = {}
    for m in suite.models:
        seeds = [seed for s in studies_of[m] for seed in study_seeds(suite, profile, s)]
        if approx is not None and approx.model == m:
            seeds += p.seeds
        seeds_of[m] = tuple(dict.fromkeys(seeds))
    every_seed = tuple(dict.fromkeys(seed for m in seeds_of for seed in seeds_of[m]))
    for m in controls(suite):
        studies_of[m], seeds_of[m] = run, every_seed or tuple(p.seeds)
    trains = {(m, seed): studies_of[m] for m in suite.models for seed in seeds_of[m]}
    evals: dict[tuple[str, int, Optional[str]], tuple[Any, tuple[str, ...]]] = {}
    for m, seed in trains:
        if studies_of[m]:
            evals[(m, seed, None)] = (configs[m], studies_of[m])
        if m in controls(suite):
            continue  # a control has no attention weights to evaluate under another attention
        for e in dict.fromkeys(e for s in studies_of[m] for e in suite.studies[s].eval):
            cfg = configs[m].replace(**suite.eval_settings[e])
            if cfg != configs[m]:
                evals[(m, seed, e)] = (cfg, tuple(s for s in studies_of[m] if e in suite.studies[s].eval))
    analyses: dict[str, tuple[str, int]] = {}
    if approx is not None:
        analyses.update({f"approx-{approx.model}-s{seed}": (approx.model, seed) for seed in p.seeds})
    if trains:  # the counts need no model (needs_model False): the point names the first training (a control
        # where there is one) and runs after the trainings whether or not that one finished
        first = next((k for k in trains if k[0] in controls(suite)), next(iter(trains)))
        analyses[BASELINES_ID] = first
    return Units(trains, evals, analyses)
