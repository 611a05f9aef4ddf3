"""How a model is trained: optimiser, schedule, steps and how often to log and checkpoint."""
from __future__ import annotations

import math
from typing import Any, Optional

from pydantic import BaseModel, Field, model_validator

from bench.loader import CHECKED


# Far beyond any suite's training (the paper's longest runs are ~100K steps): a typo like 1e12 steps
# would otherwise train until stopped.
MAX_STEPS = 10_000_000


class TrainSettings(BaseModel):
    """How every model of a suite is trained. The paper states little of this, so the suite chooses
    and records it: AdamW, linear warm-up then cosine decay."""

    model_config = CHECKED  # unknown keys and non-finite numbers refused

    steps: int = Field(gt=0, le=MAX_STEPS)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)  # cosine decays lr to lr * min_lr_ratio
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: Optional[float] = Field(default=1.0, gt=0)  # None: no clipping
    checkpoint_every: int = Field(gt=0)
    log_every: int = Field(gt=0)
    seed: int = 0  # model init and training data (a suite with `seeds` sets it per point)
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


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Multiplier of the base lr before optimiser step `step` (0-based): linear warm-up, then
    cosine from 1 down to min_lr_ratio at the last step."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
