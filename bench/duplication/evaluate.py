"""Evaluate a trained duplication model under any attention setting (Table 2's columns): build a
model of the other config and load the trained state dict, which shared-QK full and LSH share."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bench.duplication.data import DuplicationTask, make_batch, make_generator, masked_accuracy_counts
from bench.training.checkpoint import reset_hash_generators
from bench.training.loop import load_trained
from reformer_impl import ReformerConfig, lm_loss


class AttentionSetting(BaseModel):
    """A named attention mode: a row (trained model) or a column (evaluation) of Table 2."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # a file name part: no leading dot
    attention: Literal["full", "sdpa", "lsh", "local"]
    n_hashes: Optional[int] = Field(default=None, ge=1)
    # False: full attention without the shared-QK self-mask (a query may attend to its own key);
    # None: the model's rule. The experiment behind Table 2's 0.8% cells.
    self_mask: Optional[bool] = None

    @model_validator(mode="after")
    def _check(self) -> "AttentionSetting":
        if self.self_mask is False and self.attention not in ("full", "sdpa"):
            raise ValueError(f"setting {self.name!r}: self_mask=False applies to attention 'full' or 'sdpa' only")
        if self.attention == "lsh" and self.n_hashes is None:
            raise ValueError(f"setting {self.name!r}: attention='lsh' needs n_hashes")
        if self.attention != "lsh" and self.n_hashes is not None:
            raise ValueError(f"setting {self.name!r}: n_hashes={self.n_hashes} only applies to attention='lsh'")
        return self

    def apply(self, base: ReformerConfig) -> ReformerConfig:
        """`base` running this attention (n_hashes kept from base when not LSH: it is unused there)."""
        if self.attention == "lsh":
            return base.replace(attention="lsh", n_hashes=self.n_hashes)
        if self.self_mask is not None:
            return base.replace(attention=self.attention, self_mask=self.self_mask)
        return base.replace(attention=self.attention)


class EvalSettings(BaseModel):
    """Held-out sequences: `batches` x `batch_size` sequences drawn from `seed` (not the training
    seed), the same sequences for every (model, setting) pair."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    batches: int = Field(gt=0)
    batch_size: int = Field(gt=0)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # argmax accuracy on the second copy of w, over all held-out sequences
    loss: float  # mean masked cross-entropy per batch
    correct: int
    counted: int
    eval_s: float


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, task: DuplicationTask, settings: EvalSettings,
                   device: str | torch.device = "cpu") -> EvalResult:
    """Accuracy and loss of `model` on the held-out sequences of `settings`. Each LSH layer's
    rotation stream restarts at its seed, so a second call hashes (and scores) exactly as the first."""
    device = torch.device(device)
    gen = make_generator(settings.seed)
    torch.manual_seed(settings.seed)
    reset_hash_generators(model)
    model.eval()
    correct = counted = 0
    loss_sum = 0.0
    t0 = time.perf_counter()
    for _ in range(settings.batches):
        batch = make_batch(task, settings.batch_size, gen).to(device)
        logits = model(batch.inputs)  # (B, L, V)
        loss_sum += float(lm_loss(logits, batch.targets, batch.mask))
        c, n = masked_accuracy_counts(logits, batch.targets, batch.mask)
        correct, counted = correct + c, counted + n
    return EvalResult(accuracy=correct / counted, loss=loss_sum / settings.batches, correct=correct,
                      counted=counted, eval_s=time.perf_counter() - t0)


def evaluate_checkpoint(checkpoint: Path, cfg: ReformerConfig, task: DuplicationTask, settings: EvalSettings,
                        device: str | torch.device = "cpu") -> EvalResult:
    """Load the trained weights into a model built from `cfg` (the evaluation setting) and evaluate."""
    torch.manual_seed(settings.seed)  # so the hash_seed an LSH layer draws when built (hash_seed=None) repeats
    return evaluate_model(load_trained(checkpoint, cfg, device), task, settings, device)
