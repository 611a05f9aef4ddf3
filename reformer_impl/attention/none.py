"""No attention: the branch outputs zeros, so nothing mixes positions (a control, not a model).

The same blocks, embeddings, feed-forward and head as every other kind, so a quality study can
ask how much of a model's score its attention earns. It holds no projections: a model of this
kind has only the parameters that do not attend.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from reformer_impl.config import ReformerConfig


class NoAttention(nn.Module):
    """(B, L, d_model) -> zeros of the same shape; no buckets."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.cfg = cfg

    def compute(self, x: torch.Tensor, buckets: Optional[torch.Tensor] = None):
        return torch.zeros_like(x), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compute(x)[0]
