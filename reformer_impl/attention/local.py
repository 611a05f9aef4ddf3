"""Local attention: LSH attention's chunks and one-chunk look-back, sorted by position, not by hash.

The control a reviewer asks for first: does hashing beat a fixed local window of the same size?
Everything but the sort key is LSH attention's (one round): shared QK with unit keys, the
self-mask, padding after the real positions, causal masking by position, and the look-back of the
first chunk to the last chunk holding a real position (cyclic, as LSH; transformers'
LocalSelfAttention wraps the same way). With `causal` the wrapped keys all lie in the future and
are masked, so each query sees the keys of its own chunk and the chunk before it, up to itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reformer_impl.attention.base import Attention
from reformer_impl.attention.lsh import lsh_attention_core, padded_length


def local_attention_core(
    qk: torch.Tensor, v: torch.Tensor, *, seq_len: int, chunk_len: int, causal: bool, dropout_p: float,
) -> torch.Tensor:
    """Local shared-QK attention on padded inputs.

    qk, v: (B, H, Lp, dh), Lp a multiple of chunk_len; positions >= seq_len are padding (never
    attended to, zero output). Query i sees the keys of chunk i // chunk_len and the chunk before
    it. Returns (B, H, Lp, dh).
    """
    b, h, lp, _ = qk.shape
    # One bucket for every position: LSH's sort by (bucket, position) becomes a sort by position.
    buckets = torch.zeros(b, h, 1, lp, dtype=torch.long, device=qk.device)
    return lsh_attention_core(
        qk, v, buckets, seq_len=seq_len, chunk_len=chunk_len, causal=causal,
        same_bucket=False, dup_correction=False, dropout_p=dropout_p,
    )


class LocalAttention(Attention):
    """Shared-QK attention over position-sorted chunks; no hashing, so no buckets to replay."""

    def attend(self, q, k, v, buckets):
        cfg = self.cfg
        seq_len = q.shape[-2]
        if q.shape[0] == 0 or seq_len == 0:  # an empty output still connected to q and v, as LSH's
            return q * v, None
        lp = padded_length(seq_len, cfg.chunk_len)
        if lp != seq_len:  # (B, H, L, dh) -> (B, H, Lp, dh); padding is masked as keys, dropped as queries
            q, v = F.pad(q, (0, 0, 0, lp - seq_len)), F.pad(v, (0, 0, 0, lp - seq_len))
        out = local_attention_core(
            q, v, seq_len=seq_len, chunk_len=cfg.chunk_len, causal=cfg.causal, dropout_p=self.dropout_p
        )
        return out[:, :, :seq_len], None
