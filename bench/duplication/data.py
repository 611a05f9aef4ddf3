"""The duplication task of the paper (section 5, Table 2): sequences `0 w 0 w`, next-symbol
prediction scored only where the model predicts the second copy of w, generated on the fly."""
from __future__ import annotations

from dataclasses import dataclass

import torch

SEPARATOR = 0  # the paper's `0`; the symbols of w are 1..n_symbols


@dataclass(frozen=True)
class DuplicationTask:
    """Sequence length and alphabet. `half_len` is the length of one `0 w` half, so w has
    half_len - 1 symbols and a sequence has 2 * half_len tokens (paper: 512 and 127 -> 1024)."""

    half_len: int
    n_symbols: int

    def __post_init__(self) -> None:
        if isinstance(self.half_len, bool) or not isinstance(self.half_len, int) or self.half_len < 2:
            raise ValueError(f"DuplicationTask.half_len={self.half_len!r}: must be an integer >= 2 (w needs a symbol)")
        if isinstance(self.n_symbols, bool) or not isinstance(self.n_symbols, int) or self.n_symbols < 1:
            raise ValueError(f"DuplicationTask.n_symbols={self.n_symbols!r}: must be an integer >= 1")

    @property
    def seq_len(self) -> int:
        return 2 * self.half_len

    @property
    def w_len(self) -> int:
        return self.half_len - 1

    @property
    def vocab_size(self) -> int:
        """Symbols 1..n_symbols plus the separator 0."""
        return self.n_symbols + 1

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self.n_symbols


@dataclass(frozen=True)
class DuplicationBatch:
    """inputs, targets: LongTensor [B, L]; targets[:, i] = inputs[:, i + 1] (the last target is the
    separator, never scored). mask: bool [B, L], True exactly where the target is a symbol of the
    second copy of w."""

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> "DuplicationBatch":
        return DuplicationBatch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator for the data stream; its state is what a checkpoint saves to resume it."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def loss_mask(task: DuplicationTask, batch_size: int) -> torch.Tensor:
    """bool [B, L]: positions i whose target inputs[i + 1] lies in the second w, i.e.
    i in [half_len, 2 * half_len - 2] (the model reads `0` of the second half and predicts w[0])."""
    mask = torch.zeros(batch_size, task.seq_len, dtype=torch.bool)
    mask[:, task.half_len : task.seq_len - 1] = True
    return mask


def make_batch(task: DuplicationTask, batch_size: int, generator: torch.Generator) -> DuplicationBatch:
    """Draw `batch_size` sequences `0 w 0 w` (w uniform over 1..n_symbols) from `generator`
    (CPU); deterministic for the generator's state."""
    w = torch.randint(1, task.n_symbols + 1, (batch_size, task.w_len), generator=generator)  # (B, half_len-1)
    sep = torch.full((batch_size, 1), SEPARATOR, dtype=torch.long)
    seq = torch.cat([sep, w, sep, w], dim=1)  # (B, L)
    targets = torch.cat([seq[:, 1:], sep], dim=1)  # (B, L): next symbol; the last one is padding
    return DuplicationBatch(inputs=seq, targets=targets, mask=loss_mask(task, batch_size))


def masked_accuracy_counts(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) of argmax predictions where mask is True. logits [B, L, V],
    targets [B, L], mask bool [B, L]."""
    pred = logits.argmax(dim=-1)  # (B, L)
    correct = ((pred == targets) & mask).sum().item()
    return int(correct), int(mask.sum().item())


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of masked positions where argmax(logits) equals the target (the Table 2 metric:
    per-symbol accuracy on the second copy)."""
    correct, counted = masked_accuracy_counts(logits, targets, mask)
    if counted == 0:
        raise ValueError("masked_accuracy: mask selects no position")
    return correct / counted
