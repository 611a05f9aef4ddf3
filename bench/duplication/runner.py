"""The duplication suite: load and validate `suites/duplication.yaml`, train the Table 2 rows with
resumable checkpoints, evaluate every (trained model, eval setting) pair, append contract records."""
from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.duplication.data import DuplicationTask
from bench.duplication.evaluate import AttentionSetting, EvalResult, EvalSettings, evaluate_checkpoint
from bench.duplication.report import read_records
from bench.store import RunStore, latest_by_point, plan_key
from bench.duplication.train import (
    CheckpointMismatch, TrainOutcome, TrainSettings, checkpoint_is_finished, load_checkpoint, step_ms_summary, train_model,
)
from bench.environment import capture_environment
from bench.point import GridPoint
from reformer_impl import ReformerConfig, describe

WORKLOAD = "duplication"
# The record contract's metric names; those that do not apply to this workload stay null.
CONTRACT_METRICS = (
    "fwd_ms_median", "fwd_ms_q25", "fwd_ms_q75", "bwd_ms_median", "bwd_ms_q25", "bwd_ms_q75",
    "step_ms_median", "step_ms_q25", "step_ms_q75", "n_repeats", "peak_alloc_mib", "peak_reserved_mib",
    "nvml_device_used_mib", "nvml_process_used_mib", "peak_rss_mib", "rss_delta_mib",
    "saved_for_backward_mib", "predicted_memory_term", "predicted_time_term",
)
# Fields that only LSH reads: dropped from a non-LSH point (the GridPoint canonical form).
LSH_ONLY_FIELDS = ("n_hashes", "chunk_len", "n_buckets", "same_bucket", "dup_correction", "hash_seed")


# ---------------------------------------------------------------- suite spec (validated at the edge)
class TaskSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    half_len: int = Field(ge=2)  # one `0 w` half; w has half_len - 1 symbols
    n_symbols: int = Field(ge=1)


class ModelSection(BaseModel):
    """The ReformerConfig fields a profile may set; the task fixes vocab_size, max_seq_len,
    causal and shared_qk, and each Table 2 row/column sets attention and n_hashes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
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
    model_config = ConfigDict(extra="forbid", frozen=True)
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
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["duplication"]
    name: str = "duplication"
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


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(part) for part in e["loc"]) or "<top>"
        got = "" if e["type"] == "missing" else f" (got {e['input']!r})"
        lines.append(f"  {loc}: {e['msg']}{got}")
    return f"{path}: invalid duplication suite\n" + "\n".join(lines)


def load_suite(path: Path) -> DuplicationSuite:
    """Parse and validate the YAML; any problem is a ValueError naming the field and value."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return DuplicationSuite.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_format_validation(path, err)) from None


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


# ---------------------------------------------------------------- records (the harness contract)
def canonical_model(cfg: ReformerConfig) -> dict[str, Any]:
    """ReformerConfig fields that can matter for this config (LSH-only ones dropped otherwise)."""
    d = asdict(cfg)
    if cfg.attention != "lsh":
        for key in LSH_ONLY_FIELDS:
            d.pop(key)
    return d


def _params(run: ResolvedSuite, cfg: ReformerConfig, device: str, batch_size: int, **extra: Any) -> dict[str, Any]:
    model = canonical_model(cfg)
    flat = {f.name: model.get(f.name) for f in fields(ReformerConfig)}
    t = run.train
    return {
        "workload": WORKLOAD, "impl": "ours", "device": device, "dtype": "float32", "batch_size": batch_size,
        "seq_len": run.task.seq_len, **flat,
        "half_len": run.task.half_len, "n_symbols": run.task.n_symbols,
        "optimizer": "AdamW", "lr": t.lr, "warmup_steps": t.warmup_steps, "min_lr_ratio": t.min_lr_ratio,
        "betas": list(t.betas), "weight_decay": t.weight_decay, "grad_clip": t.grad_clip, "steps": t.steps,
        "train_batch_size": t.batch_size, "train_seed": t.seed, "eval_seed": run.eval.seed,
        "eval_batches": run.eval.batches, "eval_batch_size": run.eval.batch_size, **extra,
    }


def _record(run: ResolvedSuite, run_id: str, point_id: str, study: str, cfg: ReformerConfig, device: str,
            batch_size: int, status: str, reason: Optional[str], metrics: dict[str, Any], wall_s: float,
            **extra_params: Any) -> dict[str, Any]:
    point = GridPoint(suite=run.suite, workload=WORKLOAD, device=device, dtype="float32", batch_size=batch_size,
                      seq_len=run.task.seq_len, model=canonical_model(cfg), repeats=1, warmup=0, studies=(study,))
    return {
        "point_id": point_id, "run_id": run_id, "suite": run.suite, "studies": [study],
        "status": status, "reason": reason, "point": point.to_json(),
        "params": _params(run, cfg, device, batch_size, **extra_params),
        "effective": dict(describe(cfg, run.task.seq_len)) if status == "ok" else {},  # what really ran
        "metrics": {**{k: None for k in CONTRACT_METRICS}, **metrics},
        "wall_s": round(wall_s, 3),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def train_point_id(model: AttentionSetting) -> str:
    return f"dup-train-{model.name}"


def eval_point_id(model: AttentionSetting, setting: AttentionSetting) -> str:
    return f"dup-eval-{model.name}-as-{setting.name}"


def train_record(run: ResolvedSuite, run_id: str, model: AttentionSetting, device: str,
                 outcome: Optional[TrainOutcome], error: Optional[str], wall_s: float) -> dict[str, Any]:
    """One record per trained model: final training loss/accuracy, step time, and the curve."""
    metrics: dict[str, Any] = {}
    curve: list[dict[str, Any]] = []
    if outcome is not None:
        last = outcome.curve[-1] if outcome.curve else None
        metrics = {**step_ms_summary(outcome.step_ms), "n_repeats": len(outcome.step_ms),
                   "peak_alloc_mib": outcome.peak_alloc_mib, "peak_reserved_mib": outcome.peak_reserved_mib,
                   "steps_done": outcome.step, "train_s": round(outcome.train_s, 3),
                   "final_loss": last.loss if last else None, "train_accuracy": last.accuracy if last else None,
                   "accuracy": None}
        curve = [asdict(c) for c in outcome.curve]
    rec = _record(run, run_id, train_point_id(model), "train", run.train_config(model), device,
                  run.train.batch_size, "ok" if error is None else "error", error, metrics, wall_s,
                  role="train", train_model=model.name, eval_setting=None)
    rec["curve"] = curve  # training curve (step, loss, accuracy, lr, train_s): what report.py plots
    return rec


def eval_record(run: ResolvedSuite, run_id: str, model: AttentionSetting, setting: AttentionSetting, device: str,
                result: Optional[EvalResult], status: str, reason: Optional[str], wall_s: float) -> dict[str, Any]:
    """One record per (trained model, eval setting): the Table 2 cell in metrics.accuracy."""
    metrics: dict[str, Any] = {}
    if result is not None:
        metrics = {"accuracy": result.accuracy, "eval_loss": result.loss, "eval_tokens": result.counted,
                   "eval_s": round(result.eval_s, 3)}
    return _record(run, run_id, eval_point_id(model, setting), "table2", run.eval_config(model, setting), device,
                   run.eval.batch_size, status, reason, metrics, wall_s,
                   role="eval", train_model=model.name, eval_setting=setting.name)


def append_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one record through the harness's store: fsynced, strict JSON, and a line torn by a
    kill mid-write moved to records.torn first, so it cannot swallow this record."""
    RunStore(run_dir).append(record)


def _resume_key(spec: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved suite a resumed run must share (not its prose, not thread counts)."""
    key = {k: v for k, v in spec.items() if k != "description"}
    key["train"] = {k: v for k, v in (spec.get("train") or {}).items() if k != "threads"}
    return key


def planned_ids(run: ResolvedSuite) -> list[str]:
    """Every point a run of this suite records: one per trained model, one per Table 2 cell."""
    return [train_point_id(m) for m in run.train_models] + [
        eval_point_id(m, s) for m in run.train_models for s in run.eval_settings]


def resume_key(run: ResolvedSuite) -> str:
    """What a continued run must share with the one that began it (see `bench.store.plan_key`)."""
    return plan_key(_resume_key(json.loads(json.dumps(run.to_json()))), planned_ids(run))


def write_run_json(run_dir: Path, run: ResolvedSuite, run_id: str, device: str) -> None:
    """run.json once per run dir; a resumed run must be the same resolved suite, on the same host."""
    from bench.environment import host_id

    path = run_dir / "run.json"
    spec = json.loads(json.dumps(run.to_json()))  # as it reads back from disk
    if path.exists():
        from bench.store import load_run_json

        old = load_run_json(run_dir)
        if _resume_key(old.get("suite_spec") or {}) != _resume_key(spec):
            raise ValueError(f"{path}: this run was started with another resolved suite (profile "
                             f"{old.get('profile')!r}); pass another run_id or remove the run dir")
        return
    payload = {"suite": run.suite, "profile": run.profile, "run_id": run_id, "device": device,
               "host_id": host_id(), "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "environment": capture_environment(device), "suite_spec": spec,
               "planned": planned_ids(run), "plan_key": resume_key(run)}
    RunStore(run_dir).write_run_json(payload)


class NothingToMeasure(Exception):
    """A run named explicitly already holds an ok record of every point: nothing is trained or evaluated."""

    def __init__(self, run_dir: Path, total: int) -> None:
        super().__init__(f"{run_dir} already holds an ok record of every one of its {total} points; its report "
                         "is left as it was (`python -m bench report` rewrites it, --fresh starts a new run)")
        self.run_dir = run_dir


# ---------------------------------------------------------------- the run
def checkpoint_path(run_dir: Path, model: AttentionSetting) -> Path:
    return run_dir / "checkpoints" / f"{model.name}.pt"


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint reached (0 when there is none)."""
    return int(load_checkpoint(path)["step"]) if path.exists() else 0


def _say(msg: str) -> None:
    print(f"[duplication] {msg}", flush=True)


def _progress(name: str, total: int, every: int):
    start = time.monotonic()

    def on_step(step: int) -> None:
        if step % every == 0 or step == total:
            _say(f"train {name}: step {step}/{total} ({time.monotonic() - start:.0f}s this session)")
    return on_step


def _train_one(run: ResolvedSuite, run_dir: Path, run_id: str, device: str, model: AttentionSetting,
               deadline: Optional[float]) -> str:
    """Train or resume one row; its record is appended when it finishes or fails.
    Returns 'finished', 'stopped' (time budget, checkpoint saved) or 'error'."""
    ckpt = checkpoint_path(run_dir, model)
    step = checkpoint_step(ckpt)
    if step:
        _say(f"resuming {model.name} at step {step} of {run.train.steps} ({ckpt})")
    else:
        _say(f"train {model.name} ({run.train.steps} steps) -> {ckpt}")
    t0 = time.perf_counter()
    try:
        outcome = train_model(model.name, run.train_config(model), run.task, run.train, ckpt, device,
                              deadline=deadline,
                              on_step=_progress(model.name, run.train.steps, run.train.log_every * 10))
    except CheckpointMismatch:
        raise  # a checkpoint of another configuration: the user must pick another run_id
    except Exception as err:  # noqa: BLE001 - one model failing is a row; the suite goes on
        reason = f"{type(err).__name__}: {err}"
        append_record(run_dir, train_record(run, run_id, model, device, None, reason, time.perf_counter() - t0))
        _say(f"train {model.name}: error {reason}")
        return "error"
    if not outcome.finished:
        _say(f"train {model.name}: stopped at step {outcome.step} (time budget); rerun to resume")
        return "stopped"
    append_record(run_dir, train_record(run, run_id, model, device, outcome, None, time.perf_counter() - t0))
    last = outcome.curve[-1]
    _say(f"train {model.name}: done, loss {last.loss:.3f}, train accuracy {last.accuracy:.3f}")
    return "finished"


def _evaluate_one(run: ResolvedSuite, run_dir: Path, run_id: str, device: str, model: AttentionSetting,
                  setting: AttentionSetting) -> None:
    """One Table 2 cell from the model's checkpoint; a failure is an error record."""
    t0 = time.perf_counter()
    try:
        result = evaluate_checkpoint(checkpoint_path(run_dir, model), run.eval_config(model, setting),
                                     run.task, run.eval, device)
    except Exception as err:  # noqa: BLE001
        append_record(run_dir, eval_record(run, run_id, model, setting, device, None, "error",
                                           f"{type(err).__name__}: {err}", time.perf_counter() - t0))
        return
    append_record(run_dir, eval_record(run, run_id, model, setting, device, result, "ok", None,
                                       time.perf_counter() - t0))
    _say(f"eval {model.name} as {setting.name}: accuracy {result.accuracy:.3f}")


def run_suite(suite_path: Path, profile: str, device: Optional[str], results_root: Path,
              run_id: Optional[str], *, time_budget_s: Optional[float] = None, reevaluate: bool = False,
              threads: Optional[int] = None, train: bool = True, fresh: bool = False,
              console: Any = None) -> Path:
    """Train every Table 2 row (resuming from checkpoints, skipping finished ones), then evaluate
    every (row, column) pair not yet recorded ok (all of them with `reevaluate`). Returns the run dir.
    The run folder follows the harness's rules (`bench.runner.choose_run_dir`): `run_id` continues or
    creates that run, `fresh` starts a new one, else this host's unfinished run continues or a new
    one begins. `time_budget_s` stops training cleanly at a checkpoint once spent; a rerun resumes.
    `train=False` only evaluates the finished checkpoints of the run named by `run_id`."""
    from rich.console import Console

    from bench.runner import RunOptions, choose_run_dir
    from bench.store import RunLock

    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    run = resolve_profile(load_suite(suite_path), profile)
    explicit_device = device is not None
    device = resolve_device(device, run.profile)
    if run.profile == "gpu" and device == "cpu" and not explicit_device:
        raise ValueError("profile='gpu' is paper scale and CUDA is not available; use --profile cpu "
                         "(or pass device='cpu' explicitly to insist)")
    if not train and run_id is None:
        raise ValueError("evaluating without training needs run_id: the run whose checkpoints to evaluate")
    # Not-ok points are tried again in a continued run, so they count as left to do (retry_failed).
    opts = RunOptions(profile=run.profile, device=device, run_id=run_id, fresh=fresh, retry_failed=True,
                      results_root=Path(results_root))
    run_dir = choose_run_dir(run.suite, run.profile, device, opts, console or Console(), plan_key=resume_key(run))
    with RunLock(run_dir):
        return _run_in(run, run_dir, device, deadline, reevaluate, threads, train)


def _run_in(run: ResolvedSuite, run_dir: Path, device: str, deadline: Optional[float], reevaluate: bool,
            threads: Optional[int], train: bool) -> Path:
    run_id = run_dir.name
    if device == "cpu" and (threads or run.train.threads):
        torch.set_num_threads(threads or run.train.threads)
    write_run_json(run_dir, run, run_id, device)
    RunStore(run_dir).check_writable()
    done = {pid for pid, r in latest_by_point(read_records(run_dir)).items() if r["status"] == "ok"}
    if train and not reevaluate and done >= set(planned_ids(run)):
        raise NothingToMeasure(run_dir, len(planned_ids(run)))

    trained: set[str] = set()
    for model in run.train_models:
        finished = checkpoint_is_finished(checkpoint_path(run_dir, model))
        if (finished and train_point_id(model) in done) or not train:
            if finished:
                trained.add(model.name)
            continue
        state = _train_one(run, run_dir, run_id, device, model, deadline)
        if state == "stopped":
            return run_dir
        if state == "finished":
            trained.add(model.name)

    for model in run.train_models:
        for setting in run.eval_settings:
            pid = eval_point_id(model, setting)
            if pid in done and (not reevaluate or model.name not in trained):
                continue
            if model.name in trained:
                _evaluate_one(run, run_dir, run_id, device, model, setting)
            else:
                append_record(run_dir, eval_record(run, run_id, model, setting, device, None, "skipped",
                                                   f"training of {model.name!r} did not finish", 0.0))
    return run_dir
