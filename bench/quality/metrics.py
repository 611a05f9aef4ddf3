"""Bits per byte on held-out bytes: a deterministic pass over fixed windows of a split."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


def bits_per_byte(mean_nats: float) -> float:
    """A mean byte-level cross-entropy in nats, in bits per byte (loss / ln 2)."""
    return mean_nats / LN2


def eval_starts(n_bytes: int, seq_len: int, max_windows: Optional[int] = None) -> list[int]:
    """Starts of the evaluation windows: consecutive, non-overlapping windows of seq_len targets
    (seq_len + 1 bytes, each sharing its last byte with the next window's first) from the split's
    start; with `max_windows`, that many of them evenly spaced (first and last included)."""
    count = (n_bytes - 1) // seq_len
    if count < 1:
        raise ValueError(f"seq_len={seq_len}: the split has only {n_bytes} bytes, too few for one window")
    starts = [i * seq_len for i in range(count)]
    if max_windows is None or max_windows >= count:
        return starts
    if max_windows < 1:
        raise ValueError(f"max_windows={max_windows}: must be >= 1")
    if max_windows == 1:
        return starts[:1]
    return [starts[k * (count - 1) // (max_windows - 1)] for k in range(max_windows)]


@dataclass(frozen=True)
class Evaluation:
    """Held-out result: mean nats per byte, its bits per byte, how many bytes were scored, and each
    window's bits per byte in window order (every window has seq_len targets, so their mean is the
    whole figure): what differences paired by window are computed from."""

    nats_per_byte: float
    bits_per_byte: float
    n_bytes: int
    n_windows: int
    window_bpb: tuple[float, ...] = field(default=(), repr=False)


@torch.no_grad()
def evaluate(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], data: torch.Tensor, *, seq_len: int, batch_size: int,
    max_windows: Optional[int] = None, device: str | torch.device = "cpu",
) -> Evaluation:
    """Score every target byte of the fixed windows of `data` ((N,) uint8) with `logits_fn`
    (tokens (B, seq_len) int64 -> logits (B, seq_len, 256)); the sum runs in float64."""
    starts = eval_starts(data.numel(), seq_len, max_windows)
    offsets = torch.arange(seq_len + 1)
    total, count, per_window = 0.0, 0, []
    for i in range(0, len(starts), batch_size):
        windows = data[torch.tensor(starts[i : i + batch_size])[:, None] + offsets].long().to(device)
        logits = logits_fn(windows[:, :-1])
        losses = F.cross_entropy(logits.flatten(0, 1).double(), windows[:, 1:].flatten(), reduction="none")
        sums = losses.view(windows.shape[0], seq_len).sum(dim=1)
        total += float(sums.sum())
        per_window += [bits_per_byte(v / seq_len) for v in sums.tolist()]
        count += windows.shape[0] * seq_len
    nats = total / count
    return Evaluation(nats_per_byte=nats, bits_per_byte=bits_per_byte(nats), n_bytes=count, n_windows=len(starts),
                      window_bpb=tuple(per_window))
