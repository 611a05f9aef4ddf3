"""Records of training, evaluation and analysis points in the harness's record contract."""
from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, fields
from typing import Any, Optional

from bench.grid import canonical_model as grid_canonical_model
from bench.point import GridPoint
from bench.store import jsonable
from bench.training.loop import TrainOutcome, step_ms_summary
from bench.training.plan import AnalysisPoint, EvalPoint, TrainingPlan, TrainPoint
from reformer_impl import ReformerConfig, describe

# The record contract's metric names; those that do not apply to training stay null.
CONTRACT_METRICS = (
    "fwd_ms_median", "fwd_ms_q25", "fwd_ms_q75", "bwd_ms_median", "bwd_ms_q25", "bwd_ms_q75",
    "step_ms_median", "step_ms_q25", "step_ms_q75", "n_repeats", "peak_alloc_mib", "peak_reserved_mib",
    "nvml_device_used_mib", "nvml_process_used_mib", "peak_rss_mib", "rss_delta_mib",
    "saved_for_backward_mib", "predicted_memory_term", "predicted_time_term",
)
# Where a task's evaluation returns per-item figures (the quality task: each held-out window's bpb):
# kept as the evaluation record's own field, so `metrics` stays one number per name.
PER_ITEM = "per_window"


def canonical_model(cfg: ReformerConfig) -> dict[str, Any]:
    """ReformerConfig fields that can matter for this config, by the grid's rule
    (`bench.grid.canonical_model`); a training record always names its residual structure."""
    d = asdict(cfg)
    return {**grid_canonical_model(d, tuple(d)), "residual": cfg.residual}


def _params(plan: TrainingPlan, train: TrainPoint, cfg: ReformerConfig, device: str, batch_size: int,
            **extra: Any) -> dict[str, Any]:
    model, task = canonical_model(cfg), plan.task_of(train)
    t = train.settings
    return {
        "workload": task.workload, "impl": "ours", "device": device, "dtype": "float32",
        "batch_size": batch_size, "seq_len": task.seq_len,
        **{f.name: model.get(f.name) for f in fields(ReformerConfig)},
        **task.params(), **plan.record_params,
        "optimizer": "AdamW", "lr": t.lr, "warmup_steps": t.warmup_steps, "min_lr_ratio": t.min_lr_ratio,
        "betas": list(t.betas), "weight_decay": t.weight_decay, "grad_clip": t.grad_clip, "steps": t.steps,
        "train_batch_size": t.batch_size, "train_seed": t.seed, "seed": train.seed,
        "train_model": train.name, **extra,
    }


def _record(plan: TrainingPlan, run_id: str, point_id: str, studies: tuple[str, ...], train: TrainPoint,
            cfg: ReformerConfig, device: str, batch_size: int, status: str, reason: Optional[str],
            metrics: dict[str, Any], wall_s: float, **extra: Any) -> dict[str, Any]:
    task = plan.task_of(train)
    point = GridPoint(suite=plan.suite, workload=task.workload, device=device, dtype="float32",
                      batch_size=batch_size, seq_len=task.seq_len, model=canonical_model(cfg), repeats=1,
                      warmup=0, studies=studies)
    return jsonable({
        "point_id": point_id, "run_id": run_id, "suite": plan.suite, "studies": list(studies),
        "status": status, "reason": reason, "point": point.to_json(),
        "params": _params(plan, train, cfg, device, batch_size, **extra),
        "effective": dict(describe(cfg, task.seq_len)) if status == "ok" else {},  # what really ran
        "metrics": {**{k: None for k in CONTRACT_METRICS}, **metrics},
        "wall_s": round(wall_s, 3),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })


def train_record(plan: TrainingPlan, run_id: str, train: TrainPoint, device: str, outcome: Optional[TrainOutcome],
                 status: str, reason: Optional[str], wall_s: float, saved_mib: Optional[float] = None) -> dict[str, Any]:
    """One record per trained model: final training figures, step time, memory, and the curve."""
    metrics: dict[str, Any] = {}
    curve: list[dict[str, Any]] = []
    if outcome is not None:
        last = outcome.curve[-1] if outcome.curve else None
        metrics = {**step_ms_summary(outcome.step_ms), "n_repeats": len(outcome.step_ms),
                   "peak_alloc_mib": outcome.peak_alloc_mib, "peak_reserved_mib": outcome.peak_reserved_mib,
                   "saved_for_backward_mib": saved_mib, "n_params": outcome.n_params,
                   "steps_done": outcome.step, "train_s": round(outcome.train_s, 3),
                   "final_loss": last.loss if last else None, "train_accuracy": last.accuracy if last else None,
                   "accuracy": None}
        curve = [asdict(c) for c in outcome.curve]
    rec = _record(plan, run_id, train.point_id, train.studies, train, train.cfg, device, train.settings.batch_size,
                  status, reason, metrics, wall_s, role="train", eval_setting=None)
    rec["curve"] = jsonable(curve)  # (step, loss, accuracy, lr, train_s, valid): the learning curve
    return rec


def eval_record(plan: TrainingPlan, run_id: str, ev: EvalPoint, device: str, metrics: Optional[dict[str, Any]],
                status: str, reason: Optional[str], wall_s: float, batch_size: int) -> dict[str, Any]:
    """One record per (trained model, evaluation setting); the evaluation's per-item figures (PER_ITEM), if
    any, in the record's own field of that name."""
    metrics = dict(metrics or {})
    per_item = metrics.pop(PER_ITEM, None)
    rec = _record(plan, run_id, ev.point_id, ev.studies, ev.train, ev.cfg, device, batch_size, status, reason,
                  metrics, wall_s, role="eval", eval_setting=ev.setting)
    if per_item is not None:
        rec[PER_ITEM] = jsonable(per_item)
    return rec


def analysis_record(plan: TrainingPlan, run_id: str, an: AnalysisPoint, device: str,
                    result: Optional[dict[str, Any]], status: str, reason: Optional[str],
                    wall_s: float) -> dict[str, Any]:
    """One record per analysis: summary metrics, and its rows in `table`."""
    result = dict(result or {})
    rec = _record(plan, run_id, an.point_id, an.studies, an.train, an.train.cfg, device, 1, status, reason,
                  dict(result.get("metrics") or {}), wall_s, role="analysis", analysis=an.name, eval_setting=None,
                  **dict(an.params))
    rec["table"] = jsonable(result.get("table") or [])
    return rec
