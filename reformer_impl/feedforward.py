"""Position-wise feed-forward and its chunked form (paper sec. 4): the [B, L, d_ff] intermediate
exists for one chunk at a time, in the forward and in the backward."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from reformer_impl.config import ReformerConfig
from reformer_impl.profiling import FEED_FORWARD, stage


class FeedForward(nn.Module):
    """dropout(W2 gelu(W1 norm(x))): the G branch of a reversible block, position-wise."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with stage(FEED_FORWARD):
            h = F.gelu(self.w1(self.norm(x)))
            h = F.dropout(h, p=self.dropout, training=self.training)
            return F.dropout(self.w2(h), p=self.dropout, training=self.training)


def sequence_chunks(length: int, n_chunks: int) -> list[slice]:
    """The slices `torch.chunk` would cut a sequence of `length` into (at most n_chunks)."""
    size = max(1, -(-length // n_chunks))
    return [slice(s, min(s + size, length)) for s in range(0, length, size)] or [slice(0, 0)]  # empty: one empty chunk


class ChunkedFeedForward(nn.Module):
    """Runs `ff` over `n_chunks` sequence chunks. With autograd each chunk is checkpointed, so the
    backward too rebuilds one chunk's intermediate at a time; the reversible backward uses
    `ff` and `sequence_chunks` directly."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.ff = FeedForward(cfg)
        self.n_chunks = cfg.ff_chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_chunks == 1:
            return self.ff(x)
        parts = [x[:, s] for s in sequence_chunks(x.shape[1], self.n_chunks)]
        if torch.is_grad_enabled():
            return torch.cat([checkpoint(self.ff, p, use_reentrant=False) for p in parts], dim=1)
        return torch.cat([self.ff(p) for p in parts], dim=1)
