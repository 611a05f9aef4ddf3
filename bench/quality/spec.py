"""The quality suite (`suites/quality.yaml`): named model configurations, the studies that compare
them (each a figure of the paper, or the local-attention control), extra evaluation settings and
the LSH approximation analysis; validated at the edge, then resolved per profile into a plan of the
common training runner (one training point per model and seed, evaluations and analyses after)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bench.quality.data import Corpus, load_corpus
from bench.quality.task import TextLM
from bench.suite import NAME_PATTERN, SuiteError, _check_name, _check_settings, _format_errors
from bench.training.plan import AnalysisPoint, EvalPoint, TrainingPlan, TrainPoint
from bench.training.settings import TrainSettings
from reformer_impl import ReformerConfig

KIND = "quality"
# ReformerConfig fields the task fixes: bytes in, bytes out, causal, one length.
TASK_FIELDS = ("vocab_size", "max_seq_len", "causal")
_STRICT = ConfigDict(extra="forbid", frozen=True)
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
    model: dict[str, Any] = Field(default_factory=dict)
    train: TrainSettings
    eval: EvalSection

    _valid_model = field_validator("model", mode="before")(classmethod(lambda cls, raw: _model_overrides(raw)))

    @model_validator(mode="after")
    def _check(self) -> "ProfileSpec":
        if self.eval.validate_every % self.train.log_every:
            raise ValueError(f"eval.validate_every={self.eval.validate_every} must be a multiple of "
                             f"train.log_every={self.train.log_every}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {list(self.seeds)} repeats a seed")
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
        for pname in self.profiles:
            resolve_models(self, pname)  # impossible configs refused now, naming the model and field
        return self


def model_config(suite: QualitySuite, profile: str, overrides: dict[str, Any]) -> ReformerConfig:
    p = suite.profiles[profile]
    return ReformerConfig(**{**p.model, **overrides, "vocab_size": 256, "max_seq_len": p.seq_len, "causal": True})


def resolve_models(suite: QualitySuite, profile: str) -> dict[str, ReformerConfig]:
    """Every named model of the profile; an impossible one, or two names for one config, refused."""
    from bench.training.records import canonical_model

    configs, seen = {}, {}
    for name, overrides in suite.models.items():
        try:
            cfg = configs[name] = model_config(suite, profile, overrides)
        except ValueError as exc:
            raise ValueError(f"profiles.{profile}: models.{name}: {exc}") from None
        key = repr(sorted(canonical_model(cfg).items()))
        if key in seen:
            raise ValueError(f"profiles.{profile}: models.{name} and models.{seen[key]} are the same configuration; "
                             "name it once and list it in every study that needs it")
        seen[key] = name
    return configs


def load_suite(path: Path) -> QualitySuite:
    """Parse and validate the YAML; any problem is a SuiteError naming the field and value."""
    from bench.suite import read_yaml

    path = Path(path)
    raw = read_yaml(path)
    try:
        return QualitySuite.model_validate(raw)
    except ValidationError as err:
        raise SuiteError(_format_errors(path, err)) from None


def _approximation(spec: ApproximationSpec, corpus: Corpus, seq_len: int):
    def run(model, device) -> dict[str, Any]:
        import torch

        from bench.quality.approximation import capture_qkv, sweep
        from bench.quality.metrics import eval_starts

        valid = corpus.split("valid")
        starts = eval_starts(valid.numel(), seq_len, spec.windows)
        tokens = valid[torch.tensor(starts)[:, None] + torch.arange(seq_len)].long().to(device)
        q, v = capture_qkv(model, tokens, spec.layer)
        rows = [dataclasses.asdict(a) for a in sweep(q, v, n_hashes=spec.n_hashes, chunk_lens=spec.chunk_lens,
                                                      seeds=spec.seeds, causal=True)]
        return {"metrics": {"approximation_rows": len(rows)}, "table": rows}
    return run


def training_plan(suite: QualitySuite, profile: str, data: Optional[Path] = None,
                  corpus: Optional[Corpus] = None) -> TrainingPlan:
    """One training point per (model, seed), one evaluation per (trained model, setting): as
    trained, and under each extra setting of every study it is in; then the approximation study."""
    if profile not in suite.profiles:
        raise SuiteError(f"profile={profile!r}: not in suite {suite.name!r}; choose one of {sorted(suite.profiles)}")
    p = suite.profiles[profile]
    corpus = corpus or load_corpus(data)
    configs = resolve_models(suite, profile)
    task = TextLM(corpus=corpus, seq_len=p.seq_len, eval_windows=p.eval.windows, eval_batch_size=p.eval.batch_size,
                  curve_windows=p.eval.curve_windows)
    studies_of = {m: tuple(s for s, st in suite.studies.items() if m in st.models) for m in suite.models}
    used = [m for m in suite.models if studies_of[m] or (suite.lsh_approximation and suite.lsh_approximation.model == m)]
    trains = {(m, seed): TrainPoint(point_id=f"train-{m}-s{seed}", name=m, seed=seed, cfg=configs[m],
                                    settings=p.train.model_copy(update={"seed": seed}), studies=studies_of[m])
              for m in used for seed in p.seeds}
    evals = []
    for (m, seed), tp in trains.items():
        if studies_of[m]:
            evals.append(EvalPoint(point_id=f"eval-{m}-s{seed}", train=tp, setting="as trained", cfg=tp.cfg,
                                   studies=studies_of[m]))
        for e in dict.fromkeys(e for s in studies_of[m] for e in suite.studies[s].eval):
            cfg = tp.cfg.replace(**suite.eval_settings[e])
            if cfg != tp.cfg:
                evals.append(EvalPoint(point_id=f"eval-{m}-s{seed}-as-{e}", train=tp, setting=e, cfg=cfg,
                                       studies=tuple(s for s in studies_of[m] if e in suite.studies[s].eval)))
    analyses = []
    if (a := suite.lsh_approximation) is not None:
        for seed in p.seeds:
            analyses.append(AnalysisPoint(
                point_id=f"approx-{a.model}-s{seed}", train=trains[(a.model, seed)], name="lsh_approximation",
                run=_approximation(a, corpus, p.seq_len), studies=("lsh_approximation",),
                params={"layer": a.layer, "windows": a.windows}))
    spec = {
        "kind": KIND, "suite": suite.name, "profile": profile, "description": p.description or suite.description,
        "seq_len": p.seq_len, "seeds": list(p.seeds), "data": corpus.meta(),
        "model": dict(p.model), "train": p.train.model_dump(mode="json"), "eval": p.eval.model_dump(mode="json"),
        "models": {m: suite.models[m] for m in used},
        "eval_settings": dict(suite.eval_settings),
        "studies": {s: st.model_dump(mode="json") for s, st in suite.studies.items()},
        "lsh_approximation": None if a is None else a.model_dump(mode="json"),
    }
    return TrainingPlan(kind=KIND, suite=suite.name, profile=profile, task=task, spec=spec, trains=tuple(trains.values()),
                        evals=tuple(evals), analyses=tuple(analyses), validate_every=p.eval.validate_every,
                        threads=p.train.threads)
