"""Train one model of one task to `settings.steps`, resuming from its checkpoint: the curve, the
step time of every logged interval and the memory the training needed."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from bench.measure import SavedTensorCounter
from bench.training.checkpoint import (
    CHECKPOINT_FORMAT, check_identity, hash_rng_state, load_checkpoint, restore_hash_rng, restore_rng, rng_state,
    save_checkpoint,
)
from bench.training.settings import TrainSettings, lr_factor
from bench.training.task import Batch, TrainingTask
from reformer_impl import ReformerConfig, ReformerLM, lm_loss


@dataclass(frozen=True)
class CurvePoint:
    """Means over the `log_every` steps ending at `step`: training loss (nats) and accuracy on the
    positions that count; `valid` holds the task's held-out figures when it validated at this step."""

    step: int
    loss: float
    accuracy: float
    lr: float
    train_s: float  # training seconds spent up to this step, summed across resumes
    valid: Optional[dict[str, float]] = None


@dataclass(frozen=True)
class TrainOutcome:
    name: str
    step: int
    finished: bool
    resumed_from: int  # 0: started fresh
    curve: tuple[CurvePoint, ...]
    train_s: float  # summed across resumes
    step_ms: tuple[float, ...] = field(default=())  # mean step time of each curve interval of this session
    peak_alloc_mib: Optional[float] = None  # CUDA allocator peak of this session
    peak_reserved_mib: Optional[float] = None
    n_params: int = 0


def build_optimizer(model: torch.nn.Module, settings: TrainSettings):
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings))
    return opt, sched


class Diverged(ArithmeticError):
    """The training loss became non-finite (nan or inf): the training is an `error` row."""


class Session:
    """The mutable state of one training: model, optimiser, schedule, data stream, step, curve."""

    def __init__(self, name: str, cfg: ReformerConfig, task: TrainingTask, settings: TrainSettings,
                 device: torch.device):
        self.task, self.settings, self.device = task, settings, device
        self.identity = {"name": name, "config": asdict(cfg), "task": task.identity(), "train": settings.identity()}
        self.stream = task.stream(settings.seed)
        torch.manual_seed(settings.seed)  # seeded init (and LSH hash_seed, drawn from the global RNG)
        self.model = ReformerLM(cfg).to(device)
        self.opt, self.sched = build_optimizer(self.model, settings)
        self.step, self.train_s, self.curve = 0, 0.0, []

    def restore(self, path: Path) -> None:
        payload = load_checkpoint(path)
        check_identity(path, payload, self.identity)
        self.model.load_state_dict(payload["model"])
        self.opt.load_state_dict(payload["optimizer"])
        self.sched.load_state_dict(payload["scheduler"])
        restore_rng(payload["rng"], self.device)
        self.stream.load_state(payload["rng"]["data"])
        restore_hash_rng(self.model, payload["rng"]["hash"])
        self.step, self.train_s = payload["step"], payload["train_s"]
        self.curve = [CurvePoint(**c) for c in payload["curve"]]

    def save(self, path: Path, finished: bool) -> None:
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT, "identity": self.identity, "finished": finished, "step": self.step,
            "train_s": self.train_s, "curve": [asdict(c) for c in self.curve],
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": {**rng_state(self.device), "data": self.stream.state(), "hash": hash_rng_state(self.model)},
        })

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float, Batch]:
        """One optimiser step: (loss, correct predictions where they count, lr used, the batch)."""
        st = self.settings
        batch = self.stream.next_batch(st.batch_size).to(self.device)
        logits = self.model(batch.inputs)  # (B, L, V)
        loss = lm_loss(logits, batch.targets, batch.mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if st.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), st.grad_clip)
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.step += 1
        with torch.no_grad():
            hit = logits.argmax(-1) == batch.targets
            correct = (hit if batch.mask is None else hit & batch.mask).sum()
        return loss.detach(), correct, lr, batch

    def validate(self) -> Optional[dict[str, float]]:
        """The task's held-out figures, leaving every random stream of the training as it was."""
        torch_state, hash_state = rng_state(self.device), hash_rng_state(self.model)
        try:
            return self.task.validate(self.model, self.device)
        finally:
            restore_rng(torch_state, self.device)
            restore_hash_rng(self.model, hash_state)
            self.model.train()


def train_model(
    name: str,
    cfg: ReformerConfig,
    task: TrainingTask,
    settings: TrainSettings,
    checkpoint: Path,
    device: str | torch.device = "cpu",
    *,
    validate_every: Optional[int] = None,
    deadline: Optional[float] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> TrainOutcome:
    """Train (or resume) `name` to settings.steps, saving `checkpoint` every checkpoint_every steps
    and at the end. Every `validate_every` steps (a multiple of log_every) the task validates; its
    time is not training time. `deadline` (time.monotonic()) stops cleanly at the next checkpoint
    once passed; `on_step(step)` is called after each optimiser step (progress, or a simulated crash)."""
    device = torch.device(device)
    run = Session(name, cfg, task, settings, device)
    if checkpoint.exists():
        run.restore(checkpoint)
    resumed_from = run.step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.model.train()
    step_ms: list[float] = []
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    correct = torch.zeros((), device=device, dtype=torch.long)
    counted = 0
    t0 = time.perf_counter()
    while run.step < settings.steps:
        loss, n_correct, lr, batch = run.train_step()
        loss_sum += loss
        correct += n_correct
        counted += batch.counted()
        if run.step % settings.log_every == 0 or run.step == settings.steps:
            n = (run.step - 1) % settings.log_every + 1  # steps in this interval
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            run.train_s += elapsed
            step_ms.append(1000 * elapsed / n)
            valid = None
            if validate_every and (run.step % validate_every == 0 or run.step == settings.steps):
                valid = run.validate()
            mean_loss = float(loss_sum) / n
            if not math.isfinite(mean_loss):  # before any checkpoint of it: the last one stays finite
                raise Diverged(f"diverged at step {run.step}: mean training loss {mean_loss} over steps "
                               f"{run.step - n + 1}-{run.step} (lr {settings.lr:g}); lower lr or raise warmup_steps")
            run.curve.append(CurvePoint(step=run.step, loss=mean_loss, accuracy=int(correct) / max(counted, 1),
                                        lr=lr, train_s=round(run.train_s, 3), valid=valid))
            loss_sum.zero_()
            correct.zero_()
            counted = 0
            t0 = time.perf_counter()
        if run.step % settings.checkpoint_every == 0 and run.step < settings.steps:
            run.save(checkpoint, finished=False)
            t0 = time.perf_counter()  # saving is not training time
            if deadline is not None and time.monotonic() > deadline:
                break
        if on_step is not None:
            on_step(run.step)
    finished = run.step >= settings.steps
    if finished and run.step > resumed_from:  # a checkpoint that was already finished stays untouched
        run.save(checkpoint, finished=True)
    peak_alloc = peak_reserved = None
    if device.type == "cuda":
        peak_alloc = torch.cuda.max_memory_allocated(device) / 2**20
        peak_reserved = torch.cuda.max_memory_reserved(device) / 2**20
    return TrainOutcome(name=name, step=run.step, finished=finished, resumed_from=resumed_from,
                        curve=tuple(run.curve), train_s=run.train_s, step_ms=tuple(step_ms),
                        peak_alloc_mib=peak_alloc, peak_reserved_mib=peak_reserved,
                        n_params=sum(p.numel() for p in run.model.parameters()))


def step_ms_summary(step_ms: tuple[float, ...]) -> dict[str, Optional[float]]:
    """Median and quartiles of per-interval mean step times, dropping the first (warm-up) interval
    when there are others."""
    values = list(step_ms[1:] if len(step_ms) > 1 else step_ms)
    if not values:
        return {"step_ms_median": None, "step_ms_q25": None, "step_ms_q75": None}
    if len(values) == 1:
        return {"step_ms_median": values[0], "step_ms_q25": values[0], "step_ms_q75": values[0]}
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"step_ms_median": statistics.median(values), "step_ms_q25": q[0], "step_ms_q75": q[2]}


def load_trained(checkpoint: Path, cfg: ReformerConfig, device: str | torch.device = "cpu") -> ReformerLM:
    """A fresh ReformerLM(cfg) carrying the weights saved in `checkpoint` (strict: every name must match),
    built under the training seed (as `Session` built it), so the hash_seed an LSH layer without one
    draws is the training's, whatever the global RNG holds; the caller's RNG is left as it was."""
    payload = load_checkpoint(checkpoint)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(payload["identity"]["train"]["seed"]))
        model = ReformerLM(cfg)
    model.load_state_dict(payload["model"], strict=True)
    return model.to(device).eval()


def activation_mib(model: torch.nn.Module, batch: Batch) -> float:
    """MiB autograd keeps from one training forward for the backward, parameters excluded: the
    device-independent memory figure of a training point (the allocator peak needs CUDA)."""
    model.train()
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        logits = model(batch.inputs)
    del logits
    return counter.mib
