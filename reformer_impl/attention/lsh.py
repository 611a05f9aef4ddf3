"""Shared-QK angular-LSH attention (paper sec. 2-3), vectorised over batch, heads, rounds, chunks.

Per round: sort the positions by (bucket, position), cut the sorted sequence into chunks of
`chunk_len`, let each chunk attend to itself and the chunk before it (cyclically, within its
round, as trax/HF/reformer-pytorch do), mask by original position, then combine the rounds per
query with weights softmax_r(logsumexp of round r's logits) (paper eq. 14). No L x L tensor.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from reformer_impl.attention.base import Attention, shared_keys
from reformer_impl.config import ReformerConfig
from reformer_impl.hashing import hash_vectors, random_rotations
from reformer_impl.masking import masked_value, self_value

# Set while the reversible backward recomputes a layer: the core then runs with autograd
# directly instead of checkpointing itself (the recompute is already the second forward).
_RECOMPUTING = contextvars.ContextVar("reformer_recomputing", default=False)


@contextlib.contextmanager
def recomputing():
    token = _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(token)


def padded_length(seq_len: int, chunk_len: int) -> int:
    return math.ceil(seq_len / chunk_len) * chunk_len


def lsh_layout(cfg: ReformerConfig, seq_len: int) -> dict:
    """What LSH attention really runs for a length: padded length, buckets, chunks per round."""
    lp = padded_length(seq_len, cfg.chunk_len)
    return {
        "padded_len": lp,
        "n_buckets": cfg.buckets_for(lp),
        "n_chunks": lp // cfg.chunk_len,
        "chunk_len": cfg.chunk_len,
        "n_hashes": cfg.n_hashes,
    }


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, ...) gathered along L by index (B, H, R, L') -> (B, H, R, L', ...)."""
    b, h, length = x.shape[:3]
    offsets = (torch.arange(b * h, device=x.device) * length).view(b, h, 1, 1)
    flat = x.reshape(b * h * length, *x.shape[3:])
    return flat[(index + offsets).reshape(-1)].view(*index.shape, *x.shape[3:])


def _look_one_back(t: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """(..., C, m, ...) -> (..., C, 2m, ...): each chunk followed by the chunk before it."""
    if n_chunks == 1:  # the only chunk is its own predecessor: attend to it once
        return t
    return torch.cat([t, t.roll(1, dims=3)], dim=4)


def lsh_attention_core(
    qk: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor, *, seq_len: int, chunk_len: int,
    causal: bool, same_bucket: bool, dup_correction: bool, dropout_p: float,
) -> torch.Tensor:
    """LSH attention on padded inputs.

    qk, v: (B, H, Lp, dh), Lp a multiple of chunk_len; buckets: (B, H, R, Lp) int.
    Positions >= seq_len are padding: never attended to. Returns (B, H, Lp, dh).
    """
    b, h, lp, dh = qk.shape
    n_rounds = buckets.shape[2]
    m, n_chunks = chunk_len, lp // chunk_len
    pos = torch.arange(lp, device=qk.device)

    with torch.no_grad():
        # Rounds never mix: each sorts only its own copies, so no bucket offset is needed.
        sticker = (buckets * lp + pos).argsort(dim=-1)  # sorted slot -> original position
        undo = torch.empty_like(sticker).scatter_(-1, sticker, pos.expand_as(sticker))
        q_pos = sticker.view(b, h, n_rounds, n_chunks, m)  # (B, H, R, C, m)
        k_pos = _look_one_back(q_pos, n_chunks)  # (B, H, R, C, W)
        masked = (k_pos >= seq_len)[..., None, :]  # padding keys, (B, H, R, C, 1, W)
        if causal:
            masked = masked | (k_pos[..., None, :] > q_pos[..., :, None])
        if same_bucket:
            s_buckets = buckets.gather(-1, sticker).view(b, h, n_rounds, n_chunks, m)
            k_buckets = _look_one_back(s_buckets, n_chunks)
            masked = masked | (k_buckets[..., None, :] != s_buckets[..., :, None])
        is_self = k_pos[..., None, :] == q_pos[..., :, None]  # (B, H, R, C, m, W)
        log_dups = _log_duplicates(buckets, sticker, undo, m, same_bucket) if dup_correction and n_rounds > 1 else None

    sq = _gather_rows(qk, sticker).view(b, h, n_rounds, n_chunks, m, dh)
    sv = _gather_rows(v, sticker).view(b, h, n_rounds, n_chunks, m, dh)
    keys = _look_one_back(shared_keys(sq), n_chunks)  # (B, H, R, C, W, dh)
    values = _look_one_back(sv, n_chunks)

    logits = torch.einsum("bhrcid,bhrcjd->bhrcij", sq, keys)  # (B, H, R, C, m, W)
    if log_dups is not None:
        logits = logits - log_dups.to(logits.dtype)
    logits = logits.masked_fill(is_self, self_value(logits.dtype))
    logits = logits.masked_fill(masked, masked_value(logits.dtype))
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    probs = F.dropout(torch.exp(logits - lse), p=dropout_p, training=dropout_p > 0)
    out = torch.einsum("bhrcij,bhrcjd->bhrcid", probs, values)  # (B, H, R, C, m, dh)

    # Back to original order, per round: (B*H*R, Lp, ...) gathered by `undo`.
    out = _unsort(out, undo)  # (B, H, R, Lp, dh)
    lse = _unsort(lse.view(b, h, n_rounds, lp, 1), undo)[..., 0]  # (B, H, R, Lp)
    if n_rounds == 1:
        return out[:, :, 0]
    weights = torch.softmax(lse, dim=2).unsqueeze(-1)  # paper eq. 14, (B, H, R, Lp, 1)
    return (out * weights).sum(dim=2)


def _unsort(t: torch.Tensor, undo: torch.Tensor) -> torch.Tensor:
    """t in sorted order (B, H, R, ..., d) with R*Lp rows per round -> original order (B, H, R, Lp, d)."""
    b, h, n_rounds, lp = undo.shape
    rows = t.reshape(b * h * n_rounds, lp, -1)
    offsets = (torch.arange(b * h * n_rounds, device=t.device) * lp).view(b, h, n_rounds, 1)
    return rows.reshape(b * h * n_rounds * lp, -1)[(undo + offsets).reshape(-1)].view(b, h, n_rounds, lp, -1)


def _log_duplicates(buckets, sticker, undo, chunk_len, same_bucket):
    """log N_ij (paper eq. 16): in how many rounds key j falls in query i's window, (B, H, R, C, m, W)."""
    b, h, n_rounds, lp = buckets.shape
    n_chunks = lp // chunk_len
    chunk_of = (undo // chunk_len).permute(0, 1, 3, 2)  # (B, H, Lp, R'): chunk of each position per round
    q_chunk = _gather_rows(chunk_of, sticker).view(b, h, n_rounds, n_chunks, chunk_len, n_rounds)
    k_chunk = _look_one_back(q_chunk, n_chunks)  # (B, H, R, C, W, R')
    qc, kc = q_chunk[..., :, None, :], k_chunk[..., None, :, :]  # (.., m, 1, R'), (.., 1, W, R')
    together = (kc == qc) | (kc == (qc - 1) % n_chunks)
    if same_bucket:
        by_pos = buckets.permute(0, 1, 3, 2)
        q_b = _gather_rows(by_pos, sticker).view(b, h, n_rounds, n_chunks, chunk_len, n_rounds)
        k_b = _look_one_back(q_b, n_chunks)
        together = together & (k_b[..., None, :, :] == q_b[..., :, None, :])
    return together.sum(dim=-1).clamp(min=1).float().log()


class LSHAttention(Attention):
    """Shared-QK LSH attention; rotations drawn fresh each call from a seeded generator."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__(cfg)
        seed = cfg.hash_seed if cfg.hash_seed is not None else int(torch.randint(0, 2**62, ()).item())
        self.hash_seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def reset_hash_generator(self, seed: Optional[int] = None) -> None:
        """Restart the rotation stream (at `seed`, or the layer's own), e.g. for reproducible eval."""
        if seed is not None:
            self.hash_seed = seed
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.hash_seed)
        return self._generators[key]

    def hash(self, qk: torch.Tensor, n_buckets: int) -> torch.Tensor:
        """Buckets (B, H, R, Lp) of padded queries, from fresh rotations."""
        cfg = self.cfg
        rotations = random_rotations(cfg.n_heads, cfg.d_head, cfg.n_hashes, n_buckets, self._generator(qk.device), qk.device)
        return hash_vectors(qk, rotations)

    def attend(self, q, k, v, buckets):
        cfg = self.cfg
        seq_len = q.shape[-2]
        lp = padded_length(seq_len, cfg.chunk_len)
        if lp != seq_len:  # (B, H, L, dh) -> (B, H, Lp, dh); padding is masked as keys, dropped as queries
            q, v = F.pad(q, (0, 0, 0, lp - seq_len)), F.pad(v, (0, 0, 0, lp - seq_len))
        if buckets is None:
            buckets = self.hash(q.detach(), cfg.buckets_for(lp))
        core = lambda q_, v_: lsh_attention_core(  # noqa: E731
            q_, v_, buckets, seq_len=seq_len, chunk_len=cfg.chunk_len, causal=cfg.causal,
            same_bucket=cfg.same_bucket, dup_correction=cfg.dup_correction, dropout_p=self.dropout_p,
        )
        if torch.is_grad_enabled() and not _RECOMPUTING.get():
            # Keep only the inputs; the per-round logits are rebuilt in the backward.
            out = checkpoint(core, q, v, use_reentrant=False)
        else:
            out = core(q, v)
        return out[:, :, :seq_len], buckets
