"""The duplication task as a training task of the common runner: batches `0 w 0 w` from a seeded
generator, loss and accuracy on the second copy of w, Table 2's held-out accuracy as evaluation."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from bench.duplication.data import DuplicationTask, make_batch
from bench.duplication.evaluate import EvalSettings, evaluate_model
from bench.training.task import Batch, GeneratorStream

WORKLOAD = "duplication"


def _draw(task: DuplicationTask):
    def draw(batch_size: int, gen: torch.Generator) -> Batch:
        b = make_batch(task, batch_size, gen)
        return Batch(b.inputs, b.targets, b.mask)
    return draw


@dataclass(frozen=True)
class DuplicationTraining:
    """`task`'s sequences for training, `eval` the held-out ones every (model, setting) pair is scored on."""

    task: DuplicationTask
    eval: EvalSettings
    workload: str = WORKLOAD

    @property
    def seq_len(self) -> int:
        return self.task.seq_len

    @property
    def eval_batch_size(self) -> int:
        return self.eval.batch_size

    def identity(self) -> dict[str, Any]:
        return asdict(self.task)

    def params(self) -> dict[str, Any]:
        return {"half_len": self.task.half_len, "n_symbols": self.task.n_symbols, "eval_seed": self.eval.seed,
                "eval_batches": self.eval.batches, "eval_batch_size": self.eval.batch_size}

    def stream(self, seed: int) -> GeneratorStream:
        return GeneratorStream(seed, _draw(self.task))

    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
        result = evaluate_model(model, self.task, self.eval, device)
        return {"accuracy": result.accuracy, "eval_loss": result.loss, "eval_tokens": result.counted,
                "eval_s": round(result.eval_s, 3)}

    def validate(self, model: torch.nn.Module, device: torch.device) -> Optional[dict[str, float]]:
        return None  # the training curve's accuracy on the second copy says enough
