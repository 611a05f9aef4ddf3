"""Per-block masks and duplicate counts of LSH attention's windows, on (n, m, 2m) logits blocks.

Everything here works one block of windows at a time, so no pairwise (query, key) tensor larger
than a block ever exists: the counts of paper eq. 16 compare one other round at a time into one
uint8 counter per block, never the (R - 1) x (B H R Lp 2m) comparison of all rounds at once.
"""
from __future__ import annotations

from typing import Optional

import torch

from reformer_impl.attention.lsh_layout import Layout, other_rounds, own_round
from reformer_impl.masking import masked_value, self_value


def _block_ids(values: torch.Tensor, w0: int, w1: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(.., G m) per layout row -> the block's query values (.., n, m, 1) and key values (.., n, 1, 2m)."""
    n = w1 - w0
    part = values[..., w0 * m : (w1 + 1) * m]
    queries = part[..., m:].unflatten(-1, (n, m)).unsqueeze(-1)
    stride = part.stride()
    keys = part.as_strided((*part.shape[:-1], n, 1, 2 * m), (*stride[:-1], m * stride[-1], 0, stride[-1]),
                           part.storage_offset())
    return queries, keys


class BlockMasks:
    """Self, causal, padding and same-bucket masks by original position, for blocks of windows.
    A padding query's row is zeroed after the softmax (it attends to nothing), a padding key is
    masked for every real query."""

    def __init__(self, layout: Layout, *, seq_len: int, causal: bool, buckets: Optional[torch.Tensor]):
        self.layout, self.seq_len, self.causal = layout, seq_len, causal
        self.padded = seq_len < layout.slot.shape[-1]
        self.own_bucket = None if buckets is None else own_round(buckets.reshape(layout.slot.shape), layout)

    def apply_(self, logits: torch.Tensor, w0: int, w1: int) -> None:
        """Mask the block's logits (n, m, 2m) of windows [w0, w1) in place."""
        m, dtype = self.layout.chunk_len, logits.dtype
        # A query's own key sits on the diagonal of the window's second half: used only when nothing else is.
        logits.diagonal(offset=m, dim1=-2, dim2=-1).fill_(self_value(dtype))
        masked = masked_value(dtype)
        if self.layout.n_real_chunks == 1:  # the look-back half repeats the query's own chunk: attend to it once
            logits[..., :m] = masked
        q_pos, k_pos = _block_ids(self.layout.positions, w0, w1, m)
        if self.causal:  # also masks every padding key for a real query
            logits.masked_fill_(k_pos > q_pos, masked)
        elif self.padded:
            logits.masked_fill_(k_pos >= self.seq_len, masked)
        if self.own_bucket is not None:
            q_b, k_b = _block_ids(self.own_bucket, w0, w1, m)
            logits.masked_fill_(k_b != q_b, masked)

    def zero_padding_queries_(self, probs: torch.Tensor, w0: int, w1: int) -> None:
        if self.padded:
            q_pos, _ = _block_ids(self.layout.positions, w0, w1, self.layout.chunk_len)
            probs.masked_fill_(q_pos >= self.seq_len, 0)


class DuplicateCounts:
    """N_ij (paper eq. 16): in how many rounds key j falls in query i's window, per block.

    j is in i's window in round r' when chunk_r'(j) is chunk_r'(i) or the one before it (cyclically
    over the real chunks; padding keys and queries are masked, so their counts do not matter).
    It is in round r's by construction, so only the other R - 1 rounds are compared, one at a time.
    With `buckets` (same-bucket attention), only rounds where the two also share a bucket count.
    """

    def __init__(self, layout: Layout, buckets: Optional[torch.Tensor]):
        self.layout = layout
        id_dtype = torch.int16 if layout.n_chunks < 2**14 else torch.int32  # differences fit the type
        self.chunks = other_rounds((layout.slot // layout.chunk_len).to(id_dtype), layout)  # (R - 1, G m)
        self.buckets = None
        if buckets is not None:
            self.buckets = other_rounds(buckets.reshape(layout.slot.shape).to(torch.int32), layout)

    def counts(self, w0: int, w1: int, dtype: torch.dtype) -> torch.Tensor:
        """N for the block's windows [w0, w1): (n, m, 2m) of `dtype`.

        Comparisons against a broadcast operand do not vectorise on CPU, integer arithmetic does:
        a miss is min(|k - q|, 1) (0 where the chunks agree), in the window is 1 - miss_same * miss_before.
        """
        m, n_real, n_other = self.layout.chunk_len, self.layout.n_real_chunks, self.layout.n_rounds - 1
        q_all, k_all = _block_ids(self.chunks, w0, w1, m)  # (R - 1, n, m, 1), (R - 1, n, 1, 2m)
        shape = (w1 - w0, m, 2 * m)
        # N = R - (rounds r' != r where j is not in i's window); R <= 255 fits uint8
        counter = torch.full(shape, n_other + 1, dtype=torch.uint8, device=q_all.device)
        miss = torch.empty(shape, dtype=q_all.dtype, device=q_all.device)
        other = torch.empty_like(miss) if n_real > 1 or self.buckets is not None else None
        if self.buckets is not None:
            qb_all, kb_all = _block_ids(self.buckets, w0, w1, m)
        for r in range(n_other):
            q, k = q_all[r], k_all[r]
            _miss(k, q, miss)
            if n_real > 1:  # or the chunk before (cyclically over the real chunks)
                miss.mul_(_miss(k, (q - 1).remainder_(n_real), other))
            if self.buckets is not None:  # and the same bucket: a miss unless both agree
                hit = miss.neg_().add_(1).mul_(_miss(kb_all[r], qb_all[r], other).neg_().add_(1))
                miss = hit.neg_().add_(1)
            counter.sub_(miss)
        return counter.to(dtype)


def _miss(k: torch.Tensor, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """min(|k - q|, 1) broadcast into `out`: 0 where k == q, else 1."""
    if out.dtype != torch.promote_types(k.dtype, q.dtype):
        out = torch.empty(out.shape, dtype=torch.promote_types(k.dtype, q.dtype), device=out.device)
    return torch.sub(k, q, out=out).abs_().clamp_max_(1)
