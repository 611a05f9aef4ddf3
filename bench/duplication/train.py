"""Train one duplication-task model with checkpoints that resume bit for bit: model, optimiser,
schedule, step, every RNG (torch, CUDA, the data generator) and the training curve so far."""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.duplication.data import DuplicationTask, make_batch, make_generator
from reformer_impl import ReformerConfig, ReformerLM, lm_loss
from reformer_impl.attention.lsh import LSHAttention

CHECKPOINT_FORMAT = 1


class TrainSettings(BaseModel):
    """How every model of the suite is trained. The paper states none of this (only 150K steps),
    so the suite chooses and records it: AdamW, linear warm-up then cosine decay."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine decays lr to lr * min_lr_ratio
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: Optional[float] = Field(default=1.0, gt=0)  # None: no clipping
    checkpoint_every: int = Field(gt=0)
    log_every: int = Field(gt=0)
    seed: int = 0  # model init and training data
    threads: Optional[int] = Field(default=None, gt=0)  # torch.set_num_threads on CPU; None: leave

    @model_validator(mode="after")
    def _check(self) -> "TrainSettings":
        if self.checkpoint_every % self.log_every:
            raise ValueError(
                f"checkpoint_every={self.checkpoint_every} must be a multiple of log_every={self.log_every} "
                "(a checkpoint then never cuts a curve interval, so resume reproduces the curve)"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be below steps={self.steps}")
        return self

    def identity(self) -> dict[str, Any]:
        """What changes the trained weights (not threads, not how often we save or log)."""
        d = self.model_dump()
        for key in ("checkpoint_every", "log_every", "threads"):
            d.pop(key)
        d["betas"] = list(d["betas"])
        return d


@dataclass(frozen=True)
class CurvePoint:
    """Mean training loss and accuracy (second copy only) over the `log_every` steps ending at `step`."""

    step: int
    loss: float
    accuracy: float
    lr: float
    train_s: float  # training seconds spent up to this step, summed across resumes


@dataclass(frozen=True)
class TrainOutcome:
    name: str
    step: int
    finished: bool
    resumed_from: int  # 0: started fresh
    curve: tuple[CurvePoint, ...]
    train_s: float  # summed across resumes
    step_ms: tuple[float, ...] = field(default=())  # mean step time of each curve interval of this session
    peak_alloc_mib: Optional[float] = None
    peak_reserved_mib: Optional[float] = None


class CheckpointMismatch(ValueError):
    """A checkpoint was written for another model, task or training setting than requested."""


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Multiplier of the base lr before optimiser step `step` (0-based): linear warm-up, then
    cosine from 1 down to min_lr_ratio at the last step."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _identity(name: str, cfg: ReformerConfig, task: DuplicationTask, settings: TrainSettings) -> dict[str, Any]:
    return {"name": name, "config": asdict(cfg), "task": asdict(task), "train": settings.identity()}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file, fsync, rename) so a kill -9 leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's payload on the CPU (tensors and plain containers only: weights_only loading)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"{path}: checkpoint format={payload.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return payload


def checkpoint_is_finished(path: Path) -> bool:
    return path.exists() and bool(load_checkpoint(path).get("finished"))


def _check_identity(path: Path, payload: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, want in expected.items():
        have = payload["identity"].get(key)
        if have != want:
            raise CheckpointMismatch(
                f"{path}: checkpoint {key}={have!r} but this run asks for {key}={want!r}; "
                "use another run_id or delete the checkpoint to start over"
            )


def _rng_state(device: torch.device, data_gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state(), "cuda": None}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], device: torch.device, data_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _hash_rng_state(model: torch.nn.Module) -> dict[str, Any]:
    """Each LSH layer draws its rotations from its own generator (not in the state dict, not the
    global RNG): save the streams so a resumed run hashes exactly as an uninterrupted one."""
    return {name: m.hash_rng_state() for name, m in model.named_modules() if isinstance(m, LSHAttention)}


def _restore_hash_rng(model: torch.nn.Module, state: dict[str, Any]) -> None:
    for name, m in model.named_modules():
        if isinstance(m, LSHAttention) and name in state:
            m.load_hash_rng_state(state[name])


def build_optimizer(model: torch.nn.Module, settings: TrainSettings):
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings))
    return opt, sched


class _Session:
    """The mutable state of one training: model, optimiser, schedule, data stream, step, curve."""

    def __init__(self, name: str, cfg: ReformerConfig, task: DuplicationTask, settings: TrainSettings,
                 device: torch.device):
        self.task, self.settings, self.device = task, settings, device
        self.identity = _identity(name, cfg, task, settings)
        self.data_gen = make_generator(settings.seed)
        torch.manual_seed(settings.seed)  # seeded init (and LSH hash_seed, drawn from the global RNG)
        self.model = ReformerLM(cfg).to(device)
        self.opt, self.sched = build_optimizer(self.model, settings)
        self.step, self.train_s, self.curve = 0, 0.0, []

    def restore(self, path: Path) -> None:
        payload = load_checkpoint(path)
        _check_identity(path, payload, self.identity)
        self.model.load_state_dict(payload["model"])
        self.opt.load_state_dict(payload["optimizer"])
        self.sched.load_state_dict(payload["scheduler"])
        _restore_rng(payload["rng"], self.device, self.data_gen)
        _restore_hash_rng(self.model, payload["rng"]["hash"])
        self.step, self.train_s = payload["step"], payload["train_s"]
        self.curve = [CurvePoint(**c) for c in payload["curve"]]

    def save(self, path: Path, finished: bool) -> None:
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT, "identity": self.identity, "finished": finished, "step": self.step,
            "train_s": self.train_s, "curve": [asdict(c) for c in self.curve],
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": {**_rng_state(self.device, self.data_gen), "hash": _hash_rng_state(self.model)},
        })

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimiser step: (loss, correct second-copy predictions, lr used), on the device."""
        st = self.settings
        batch = make_batch(self.task, st.batch_size, self.data_gen).to(self.device)
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
            correct = ((logits.argmax(-1) == batch.targets) & batch.mask).sum()
        return loss.detach(), correct, lr


def train_model(
    name: str,
    cfg: ReformerConfig,
    task: DuplicationTask,
    settings: TrainSettings,
    checkpoint: Path,
    device: str | torch.device = "cpu",
    *,
    deadline: Optional[float] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> TrainOutcome:
    """Train (or resume) `name` to settings.steps, saving `checkpoint` every checkpoint_every
    steps and at the end. `deadline` (time.monotonic()) stops cleanly at the next checkpoint once
    passed; `on_step(step)` is called after each optimiser step (progress, or a simulated crash)."""
    device = torch.device(device)
    run = _Session(name, cfg, task, settings, device)
    if checkpoint.exists():
        run.restore(checkpoint)
    resumed_from = run.step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.model.train()
    step_ms: list[float] = []
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    correct = torch.zeros((), device=device, dtype=torch.long)
    t0 = time.perf_counter()
    while run.step < settings.steps:
        loss, n_correct, lr = run.train_step()
        loss_sum += loss
        correct += n_correct
        if run.step % settings.log_every == 0 or run.step == settings.steps:
            n = (run.step - 1) % settings.log_every + 1  # steps in this interval
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            run.train_s += elapsed
            step_ms.append(1000 * elapsed / n)
            run.curve.append(CurvePoint(step=run.step, loss=float(loss_sum) / n,
                                        accuracy=int(correct) / (n * settings.batch_size * task.w_len), lr=lr,
                                        train_s=round(run.train_s, 3)))
            loss_sum.zero_()
            correct.zero_()
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
                        peak_alloc_mib=peak_alloc, peak_reserved_mib=peak_reserved)


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
