"""The units of a training run, each run to its record: train (or resume from its checkpoint) one
model, evaluate a trained model under one setting, run one analysis of its weights. An
out-of-memory model is an `oom` row, a failing one an `error` row. Driven by `bench.plans.training`
through the common lifecycle."""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from bench import load
from bench.training.checkpoint import CheckpointDamaged, CheckpointMismatch, checkpoint_progress, reset_hash_generators
from bench.training.loop import activation_mib, load_trained, train_model
from bench.training.plan import AnalysisPoint, EvalPoint, TrainingPlan, TrainPoint
from bench.training.records import analysis_record, eval_record, train_record
from bench.worker import classify

Say = Callable[[str], None]


def checkpoint_path(run_dir: Path, point: TrainPoint) -> Path:
    return Path(run_dir) / "checkpoints" / f"{point.point_id}.pt"


class Units:
    """Runs one plan's units in one run folder on one device; each call returns the unit's record,
    or None for a training the time budget stopped at a checkpoint (a rerun resumes it)."""

    def __init__(self, plan: TrainingPlan, run_dir: Path, device: str, *, deadline: Optional[float] = None,
                 say: Say = print) -> None:
        self.plan, self.run_dir, self.device, self.deadline, self.say = plan, Path(run_dir), device, deadline, say
        self.run_id = self.run_dir.name
        if device == "cpu" and plan.threads:
            torch.set_num_threads(plan.threads)

    def train(self, point: TrainPoint) -> Optional[dict[str, Any]]:
        """Train or resume one model; its record when it finishes or fails, None when stopped."""
        ckpt = checkpoint_path(self.run_dir, point)
        try:
            step, _ = checkpoint_progress(ckpt)
        except CheckpointDamaged as exc:  # set aside, never deleted: the model trains again from step 0
            aside = ckpt.with_name(ckpt.name + ".damaged")
            os.replace(ckpt, aside)
            self.say(f"{exc}; set aside as {aside.name}, training {point.point_id} again from step 0")
            step = 0
        steps = point.settings.steps
        self.say(f"resuming {point.point_id} at step {step} of {steps}" if step
                 else f"train {point.point_id} ({steps} steps)")
        t0 = time.perf_counter()
        before, own = load.snapshot(), load.process_cpu_s()
        try:
            outcome = train_model(point.point_id, point.cfg, self.plan.task_of(point), point.settings, ckpt, self.device,
                                  validate_every=self.plan.validate_every, deadline=self.deadline,
                                  on_step=self._progress(point, steps))
            saved = self._activation_mib(point, ckpt) if outcome.finished else None
        except CheckpointMismatch as err:  # a checkpoint of another configuration: the user must choose
            self.say(f"train {point.point_id}: error {err}")
            return train_record(self.plan, self.run_id, point, self.device, None, "error", str(err),
                                time.perf_counter() - t0)
        except Exception as err:  # noqa: BLE001 - one model failing is a row; the plan goes on
            status, reason = classify(err)
            self.say(f"train {point.point_id}: {status} {reason}")
            _free(self.device)
            return train_record(self.plan, self.run_id, point, self.device, None, status, reason,
                                time.perf_counter() - t0)
        if not outcome.finished:
            self.say(f"train {point.point_id}: stopped at step {outcome.step} (time budget); rerun to resume")
            return None
        record = train_record(self.plan, self.run_id, point, self.device, outcome, "ok", None,
                              time.perf_counter() - t0, saved)
        record["load"] = load.load_record(before, load.snapshot(), load.process_cpu_s() - own)
        last = outcome.curve[-1]
        self.say(f"train {point.point_id}: done, loss {last.loss:.3f}, accuracy {last.accuracy:.3f}, "
                 f"{outcome.train_s:.0f} s")
        return record

    def evaluate(self, ev: EvalPoint) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            model = self._load(ev.train, ev.cfg)
            metrics = self.plan.task_of(ev.train).evaluate(model, torch.device(self.device))
            status, reason = "ok", None
        except Exception as err:  # noqa: BLE001
            metrics, (status, reason) = None, classify(err)
        head = next(iter(metrics.items())) if metrics else ("", "")
        self.say(f"eval {ev.point_id}: {status} {reason or f'{head[0]} {head[1]:.4g}'}")
        return eval_record(self.plan, self.run_id, ev, self.device, metrics, status, reason,
                           time.perf_counter() - t0, self.plan.task_of(ev.train).eval_batch_size)

    def analyse(self, an: AnalysisPoint) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            model = self._load(an.train, an.train.cfg) if an.needs_model else None
            result, status, reason = dict(an.run(model, torch.device(self.device))), "ok", None
        except Exception as err:  # noqa: BLE001
            result, (status, reason) = None, classify(err)
        self.say(f"analysis {an.point_id}: {status}{'' if reason is None else ' ' + reason}")
        return analysis_record(self.plan, self.run_id, an, self.device, result, status, reason,
                               time.perf_counter() - t0)

    def skipped(self, point: EvalPoint | AnalysisPoint, why: str) -> dict[str, Any]:
        """The record of an evaluation or analysis whose model did not finish training."""
        if isinstance(point, EvalPoint):
            return eval_record(self.plan, self.run_id, point, self.device, None, "skipped", why, 0.0,
                               self.plan.task_of(point.train).eval_batch_size)
        return analysis_record(self.plan, self.run_id, point, self.device, None, "skipped", why, 0.0)

    def _activation_mib(self, point: TrainPoint, ckpt: Path) -> float:
        model = load_trained(ckpt, point.cfg, self.device)
        batch = self.plan.task_of(point).stream(point.seed).next_batch(point.settings.batch_size).to(self.device)
        return activation_mib(model, batch)

    def _progress(self, point: TrainPoint, total: int) -> Callable[[int], None]:
        start, every = time.monotonic(), point.settings.log_every * 10

        def on_step(step: int) -> None:
            if step % every == 0 or step == total:
                self.say(f"train {point.point_id}: step {step}/{total} ({time.monotonic() - start:.0f}s this session)")
        return on_step

    def _load(self, train: TrainPoint, cfg) -> torch.nn.Module:
        """The trained weights in a model of `cfg`, its LSH rotations seeded as every evaluation's."""
        torch.manual_seed(train.seed)  # the hash_seed an LSH layer draws when built (hash_seed=None) repeats
        model = load_trained(checkpoint_path(self.run_dir, train), cfg, self.device)
        reset_hash_generators(model)
        return model


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
