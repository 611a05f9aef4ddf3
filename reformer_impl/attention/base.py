"""What every attention kind shares: projections with the same names, one call signature."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from reformer_impl.config import ReformerConfig


class Attention(nn.Module):
    """(B, L, d_model) -> (B, L, d_model). Subclasses implement `attend` on (B, H, L, d_head).

    With shared_qk one projection `to_qk` gives queries and keys (keys are the normalised
    queries), so a state dict moves unchanged between 'full' and 'lsh'.
    """

    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.cfg = cfg
        d, inner = cfg.d_model, cfg.d_inner
        if cfg.shared_qk:
            self.to_qk = nn.Linear(d, inner, bias=False)
        else:
            self.to_q = nn.Linear(d, inner, bias=False)
            self.to_k = nn.Linear(d, inner, bias=False)
        self.to_v = nn.Linear(d, inner, bias=False)
        self.to_out = nn.Linear(inner, d)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, l, _ = t.shape
        return t.view(b, l, self.cfg.n_heads, self.cfg.d_head).transpose(1, 2)  # (B, H, L, dh)

    def compute(self, x: torch.Tensor, buckets: Optional[torch.Tensor] = None):
        """Attention output and the LSH buckets it used (None for dense kinds).

        Passing `buckets` replays a previous hashing (the reversible backward needs this).
        """
        v = self._heads(self.to_v(x))
        if self.cfg.shared_qk:
            q = self._heads(self.to_qk(x))
            k = None
        else:
            q, k = self._heads(self.to_q(x)), self._heads(self.to_k(x))
        out, buckets = self.attend(q, k, v, buckets)
        b, h, l, dh = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, l, h * dh)), buckets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compute(x)[0]

    def attend(self, q, k, v, buckets):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dropout_p(self) -> float:
        return self.cfg.dropout if self.training else 0.0


def shared_keys(q: torch.Tensor) -> torch.Tensor:
    """Shared-QK keys: k_j = q_j / ||q_j|| (paper sec. 2)."""
    return F.normalize(q, dim=-1)
