"""What the common runner needs from a training task (the duplication task, byte-level text): a
data stream it can checkpoint, which positions count, and how to evaluate a trained model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

import torch


@dataclass(frozen=True)
class Batch:
    """inputs, targets: LongTensor (B, L); mask: bool (B, L) of the positions that count, or None (all)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: Optional[torch.Tensor] = None

    def to(self, device: torch.device | str) -> "Batch":
        mask = None if self.mask is None else self.mask.to(device)
        return Batch(self.inputs.to(device), self.targets.to(device), mask)

    def counted(self) -> int:
        return int(self.targets.numel() if self.mask is None else self.mask.sum())


class DataStream(Protocol):
    """Training batches in a fixed order; `state()` is saved in checkpoints and `load_state` resumes it."""

    def next_batch(self, batch_size: int) -> Batch: ...
    def state(self) -> Any: ...
    def load_state(self, state: Any) -> None: ...


class TrainingTask(Protocol):
    """A task the common runner trains on. `evaluate` returns the metrics of one evaluation record,
    its headline metric first; `validate` (or None) the held-out figures drawn on learning curves."""

    workload: str  # the records' params.workload
    seq_len: int
    eval_batch_size: int  # sequences per evaluation batch (the evaluation records' batch_size)

    def identity(self) -> dict[str, Any]: ...
    def params(self) -> dict[str, Any]: ...
    def stream(self, seed: int) -> DataStream: ...
    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, Any]: ...
    def validate(self, model: torch.nn.Module, device: torch.device) -> Optional[dict[str, float]]: ...


class GeneratorStream:
    """A stream drawing batches from a seeded CPU generator (the generator's state is the stream's)."""

    def __init__(self, seed: int, draw) -> None:
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(seed)
        self._draw = draw  # (batch_size, generator) -> Batch

    def next_batch(self, batch_size: int) -> Batch:
        return self._draw(batch_size, self.gen)

    def state(self) -> Any:
        return self.gen.get_state()

    def load_state(self, state: Any) -> None:
        self.gen.set_state(state)


class StepStream:
    """A stream whose batch k depends only on (seed, k): its state is the step count."""

    def __init__(self, draw) -> None:
        self._draw = draw  # (step, batch_size) -> Batch
        self.step = 0

    def next_batch(self, batch_size: int) -> Batch:
        batch = self._draw(self.step, batch_size)
        self.step += 1
        return batch

    def state(self) -> Any:
        return {"step": self.step}

    def load_state(self, state: Any) -> None:
        self.step = int(state["step"])
