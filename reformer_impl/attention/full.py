"""Naive full attention: materialises the L x L scores, the paper's Transformer baseline."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reformer_impl.attention.base import Attention, shared_keys
from reformer_impl.masking import masked_value, self_value


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, causal: bool,
    self_mask: bool, dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T * scale + masks) v on (B, H, L, dh); the obviously-correct O(L^2) form."""
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * scale  # (B, H, L, L)
    length = q.shape[-2]
    pos = torch.arange(length, device=q.device)
    if self_mask:
        logits = logits.masked_fill(pos[:, None] == pos[None, :], self_value(logits.dtype))
    if causal:
        logits = logits.masked_fill(pos[None, :] > pos[:, None], masked_value(logits.dtype))
    probs = F.dropout(logits.softmax(dim=-1), p=dropout_p, training=dropout_p > 0)
    return probs @ v


class FullAttention(Attention):
    """With shared_qk: shared-QK attention, unit keys, self-mask (unless cfg.self_mask is False),
    logits q . k (no 1/sqrt(d))."""

    def attend(self, q, k, v, buckets):
        if self.cfg.shared_qk:
            k, scale, self_mask = shared_keys(q), 1.0, self.cfg.self_mask
        else:
            scale, self_mask = 1.0 / math.sqrt(self.cfg.d_head), False
        out = dense_attention(
            q, k, v, scale=scale, causal=self.cfg.causal, self_mask=self_mask, dropout_p=self.dropout_p
        )
        return out, None
