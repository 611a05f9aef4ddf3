"""Shared-QK angular-LSH attention (paper sec. 2-3), vectorised over batch, heads, rounds, chunks.

Per round: sort the positions by (bucket, position), padding after every real position, cut the
sorted sequence into chunks of `chunk_len`, let each chunk attend to itself and the chunk before it
(cyclically over the chunks that hold real positions, within its round; trax, HF and
reformer-pytorch look back across rounds), mask by original position, then combine
the rounds per query with weights softmax_r(logsumexp of round r's logits) (paper eq. 14).
No L x L tensor: the windows are overlapping views of sorted rows, computed a block at a time
(lsh_core), and a hand-written backward keeps the window probabilities instead of recomputing them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from reformer_impl.attention.base import Attention
from reformer_impl.attention.lsh_core import lsh_core
from reformer_impl.attention.lsh_layout import padded_length, sorted_layout
from reformer_impl.config import ReformerConfig
from reformer_impl.hashing import hash_vectors, random_rotations
from reformer_impl.profiling import HASH, SORT, stage

__all__ = ["LSHAttention", "lsh_attention_core", "lsh_layout", "padded_length"]


def lsh_layout(cfg: ReformerConfig, seq_len: int) -> dict:
    """What LSH attention really runs for a length: padded length, buckets (and, when the hash is
    a product of two rotations, its factors [a, b]; else None), chunks per round."""
    lp = padded_length(seq_len, cfg.chunk_len)
    factors = cfg.bucket_factors(lp)
    return {
        "padded_len": lp,
        "n_buckets": cfg.buckets_for(lp),
        "bucket_factors": None if factors is None else list(factors),
        "n_chunks": lp // cfg.chunk_len,
        "chunk_len": cfg.chunk_len,
        "n_hashes": cfg.n_hashes,
    }


def lsh_attention_core(
    qk: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor, *, seq_len: int, chunk_len: int,
    causal: bool, same_bucket: bool, dup_correction: bool, dropout_p: float,
) -> torch.Tensor:
    """LSH attention on padded inputs.

    qk, v: (B, H, Lp, dh), Lp a multiple of chunk_len; buckets: (B, H, R, Lp) int.
    Positions >= seq_len are padding, whatever their buckets: sorted after every real position,
    never attended to, their outputs zero. Returns (B, H, Lp, dh).
    """
    with torch.no_grad(), stage(SORT):
        layout = sorted_layout(buckets, chunk_len, seq_len)
    return lsh_core(qk, v, layout, seq_len=seq_len, causal=causal,
                    buckets=buckets if same_bucket else None, dup_correction=dup_correction, dropout_p=dropout_p)


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

    def hash_rng_state(self) -> dict:
        """The rotation stream's position (seed and per-device generator states), for checkpoints."""
        return {"hash_seed": self.hash_seed, "generators": {k: g.get_state() for k, g in self._generators.items()}}

    def load_hash_rng_state(self, state: dict) -> None:
        """Continue the rotation stream from `hash_rng_state()`, so a resumed run hashes as an unbroken one."""
        self.reset_hash_generator(state["hash_seed"])
        for device, gen_state in state["generators"].items():
            self._generator(torch.device(device)).set_state(gen_state)

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.hash_seed)
        return self._generators[key]

    def hash(self, qk: torch.Tensor, n_buckets) -> torch.Tensor:
        """Buckets (B, H, R, L) of queries, from fresh rotations; `n_buckets` an even count (one
        rotation) or factors (a, b) (two rotations, bucket h_a + a * h_b)."""
        cfg = self.cfg
        factors = tuple(n_buckets) if isinstance(n_buckets, (tuple, list)) else None
        with stage(HASH):
            rotations = random_rotations(cfg.n_heads, cfg.d_head, cfg.n_hashes, n_buckets, self._generator(qk.device), qk.device)
            return hash_vectors(qk, rotations, factors)

    def attend(self, q, k, v, buckets):
        cfg = self.cfg
        batch, n_heads, seq_len, _ = q.shape
        if batch == 0 or seq_len == 0:  # nothing to hash or attend; an empty output, as dense attention's
            empty_buckets = torch.zeros(batch, n_heads, cfg.n_hashes, seq_len, dtype=torch.long, device=q.device)
            return q * v, empty_buckets  # (B, H, L, dh) with no elements, still connected to q and v
        lp = padded_length(seq_len, cfg.chunk_len)
        if buckets is None:  # padding gets a bucket of its own after the real ones (the core sorts it last anyway)
            n_buckets = cfg.buckets_for(lp)
            factors = cfg.bucket_factors(lp)
            buckets = F.pad(self.hash(q.detach(), factors or n_buckets), (0, lp - seq_len), value=n_buckets)
        if lp != seq_len:  # (B, H, L, dh) -> (B, H, Lp, dh); padding is masked as keys, dropped as queries
            q, v = F.pad(q, (0, 0, 0, lp - seq_len)), F.pad(v, (0, 0, 0, lp - seq_len))
        out = lsh_attention_core(
            q, v, buckets, seq_len=seq_len, chunk_len=cfg.chunk_len, causal=cfg.causal,
            same_bucket=cfg.same_bucket, dup_correction=cfg.dup_correction, dropout_p=self.dropout_p,
        )
        return out[:, :, :seq_len], buckets
