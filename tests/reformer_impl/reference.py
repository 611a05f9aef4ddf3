"""Slow, obviously-correct references the optimised layers are checked against."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lsh_windows(buckets: torch.Tensor, chunk_len: int, seq_len: int) -> torch.Tensor:
    """Explicit (R, Lp, Lp) bool: j is in i's window in round r (same chunk or the chunk before,
    cyclically over the chunks holding real positions) after sorting by (bucket, position) with
    padding (positions >= seq_len) after every real position. buckets: (R, Lp) for one batch row
    and head."""
    n_rounds, lp = buckets.shape
    n_chunks = -(-seq_len // chunk_len)  # real chunks
    windows = torch.zeros(n_rounds, lp, lp, dtype=torch.bool)
    for r in range(n_rounds):
        order = sorted(range(lp), key=lambda p: (p >= seq_len, int(buckets[r, p]), p))
        chunk = torch.empty(lp, dtype=torch.long)
        for slot, p in enumerate(order):
            chunk[p] = slot // chunk_len
        same = chunk[None, :] == chunk[:, None]
        before = chunk[None, :] == (chunk[:, None] - 1) % n_chunks
        windows[r] = same | before if n_chunks > 1 else same
    return windows


def lsh_attention_reference(
    qk, v, buckets, *, seq_len, chunk_len, causal, same_bucket, dup_correction, self_value=-1e5, masked_value=-1e9
):
    """LSH attention through L x L masks, looping over batch, heads and rounds. Shapes as
    lsh_attention_core: qk, v (B, H, Lp, dh), buckets (B, H, R, Lp) -> (B, H, Lp, dh)."""
    b_, h_, lp, _ = qk.shape
    n_rounds = buckets.shape[2]
    pos = torch.arange(lp)
    out = torch.zeros_like(v)
    for b in range(b_):
        for h in range(h_):
            q = qk[b, h]
            logits = q @ F.normalize(q, dim=-1).T
            windows = lsh_windows(buckets[b, h], chunk_len, seq_len)
            if same_bucket:
                windows = windows & (buckets[b, h][:, None, :] == buckets[b, h][:, :, None])
            counts = windows.sum(0)
            outs, lses = [], []
            for r in range(n_rounds):
                lr = logits - counts.clamp(min=1).to(logits.dtype).log() if dup_correction and n_rounds > 1 else logits
                lr = lr.masked_fill(pos[:, None] == pos[None, :], self_value)
                forbidden = (pos[None, :] >= seq_len).expand(lp, lp)
                if causal:
                    forbidden = forbidden | (pos[None, :] > pos[:, None])
                if same_bucket:
                    forbidden = forbidden | (buckets[b, h, r][None, :] != buckets[b, h, r][:, None])
                lr = lr.masked_fill(forbidden, masked_value)
                lr = lr.masked_fill(~lsh_windows(buckets[b, h, r : r + 1], chunk_len, seq_len)[0], float("-inf"))
                lses.append(torch.logsumexp(lr, dim=-1))
                outs.append(torch.softmax(lr, dim=-1) @ v[b, h])
            weights = torch.softmax(torch.stack(lses), dim=0)  # (R, Lp)
            out[b, h] = (torch.stack(outs) * weights[..., None]).sum(0)
    return out


class LiveSavedBytes:
    """Counts bytes autograd saves for backward that are still alive, and their peak, through
    saved_tensors_hooks: device-independent, so memory claims can be tested on CPU."""

    def __init__(self):
        self.live = self.peak = self.total = 0

    class _Box:
        def __init__(self, owner, t):
            self.owner, self.t, self.nbytes = owner, t, t.numel() * t.element_size()
            owner.live += self.nbytes
            owner.total += self.nbytes
            owner.peak = max(owner.peak, owner.live)

        def __del__(self):
            self.owner.live -= self.nbytes

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(lambda t: LiveSavedBytes._Box(self, t), lambda box: box.t)
