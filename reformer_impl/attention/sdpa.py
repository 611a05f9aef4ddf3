"""torch's fused scaled_dot_product_attention: the modern dense baseline (flash/mem-efficient kernels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reformer_impl.attention.base import Attention, shared_keys
from reformer_impl.masking import masked_value, self_value


class SDPAAttention(Attention):
    """Plain QKV attention through SDPA. With shared_qk the self-mask needs an explicit L x L
    float mask, which rules out the flash kernel: use shared_qk=False for the fast baseline."""

    def attend(self, q, k, v, buckets):
        if not self.cfg.shared_qk:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p, is_causal=self.cfg.causal)
            return out, None
        length = q.shape[-2]
        pos = torch.arange(length, device=q.device)
        bias = torch.zeros(length, length, device=q.device, dtype=q.dtype)
        if self.cfg.self_mask:
            bias = bias.masked_fill(pos[:, None] == pos[None, :], self_value(q.dtype))
        if self.cfg.causal:
            bias = bias.masked_fill(pos[None, :] > pos[:, None], masked_value(q.dtype))
        # The self-mask value replaces the logit in the reference; adding it differs by q.k <= |q|,
        # negligible against 1e5, and exact where the mask matters (causal, masked keys).
        out = F.scaled_dot_product_attention(
            q, shared_keys(q), v, attn_mask=bias, dropout_p=self.dropout_p, scale=1.0
        )
        return out, None
