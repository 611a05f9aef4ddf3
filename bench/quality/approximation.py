"""How well LSH attention approximates full attention on one layer's real shared-QK activations.

Two figures per (n_hashes, chunk_len, seed):
- mass recall: the share of full attention's softmax mass (same self and causal masks) that falls on
  keys LSH lets each query see: the union over rounds of its chunk and the chunk before it, within
  its round (cyclic over the chunks holding real positions, as the layer), averaged over queries;
- relative error ||LSH output - full output|| / ||full output|| over every head and position, the
  LSH output coming from reformer_impl's own layer with the same hashing the recall uses.
Dense L x L probabilities per head: meant for analysis lengths (a few thousand), not for training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from reformer_impl.attention.base import shared_keys
from reformer_impl.attention.lsh import LSHAttention
from reformer_impl.config import ReformerConfig
from reformer_impl.masking import masked_value, self_value

_PADDING_KEY = 2**62  # padding sorts after every real position, as in the layer


@dataclass(frozen=True)
class Approximation:
    """One LSH configuration's fidelity on one layer's activations."""

    n_hashes: int
    chunk_len: int
    n_buckets: int
    seed: int
    mass_recall: float
    relative_error: float


def full_attention(q: torch.Tensor, v: torch.Tensor, *, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared-QK full attention on (B, H, L, dh): probabilities (B, H, L, L) and output (B, H, L, dh),
    with full attention's masks (self -1e5, future keys -1e9) and logits q . k (no 1/sqrt(d))."""
    logits = torch.einsum("bhid,bhjd->bhij", q, shared_keys(q))
    pos = torch.arange(q.shape[-2], device=q.device)
    logits = logits.masked_fill(pos[:, None] == pos[None, :], self_value(logits.dtype))
    if causal:
        logits = logits.masked_fill(pos[None, :] > pos[:, None], masked_value(logits.dtype))
    probs = logits.softmax(dim=-1)
    return probs, probs @ v


def lsh_attention(
    q: torch.Tensor, v: torch.Tensor, *, n_hashes: int, chunk_len: int, seed: int, causal: bool,
    n_buckets: Optional[int] = None, same_bucket: bool = False, dup_correction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """reformer_impl's LSH layer on given queries and values (B, H, L, dh): output (B, H, L, dh)
    and the buckets it used (B, H, n_hashes, Lp), from rotations seeded with `seed`."""
    _, n_heads, length, d_head = q.shape
    cfg = ReformerConfig(
        d_model=n_heads * d_head, n_heads=n_heads, max_seq_len=max(length, 1), attention="lsh",
        n_hashes=n_hashes, chunk_len=chunk_len, n_buckets=n_buckets, causal=causal,
        same_bucket=same_bucket, dup_correction=dup_correction, hash_seed=seed,
    )
    layer = LSHAttention(cfg).eval()
    with torch.no_grad():
        return layer.attend(q, None, v, None)


def visible_keys(buckets: torch.Tensor, *, chunk_len: int, seq_len: int, same_bucket: bool = False) -> torch.Tensor:
    """(B, H, L, L) bool: key j lies in query i's window in at least one round. buckets: (B, H, R, Lp)
    as the layer used them; positions >= seq_len are padding, sorted last in every round."""
    lp = buckets.shape[-1]
    pos = torch.arange(lp, device=buckets.device)
    key = torch.where(pos < seq_len, buckets.long() * lp + pos, _PADDING_KEY + pos)
    slot = key.argsort(dim=-1).argsort(dim=-1)  # sorted slot of every position, per round
    chunk = (slot // chunk_len)[..., :seq_len]  # (B, H, R, L)
    n_real = math.ceil(seq_len / chunk_len)
    q_chunk, k_chunk = chunk.unsqueeze(-1), chunk.unsqueeze(-2)  # (B, H, R, L, 1), (B, H, R, 1, L)
    window = q_chunk == k_chunk
    if n_real > 1:
        window |= k_chunk == (q_chunk - 1) % n_real
    if same_bucket:
        b = buckets[..., :seq_len]
        window &= b.unsqueeze(-1) == b.unsqueeze(-2)
    return window.any(dim=2)


def mass_recall(probs: torch.Tensor, visible: torch.Tensor) -> float:
    """Mean over queries of the probability mass on visible keys; probs, visible: (..., L, L)."""
    return float((probs * visible).sum(dim=-1).mean())


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """||approx - exact|| / ||exact|| (Frobenius, over all elements)."""
    return float(torch.linalg.vector_norm(approx - exact) / torch.linalg.vector_norm(exact))


def approximation(
    q: torch.Tensor, v: torch.Tensor, *, n_hashes: int, chunk_len: int, seed: int, causal: bool = True,
    n_buckets: Optional[int] = None, same_bucket: bool = False, dup_correction: bool = True,
) -> Approximation:
    """Mass recall and relative output error of one LSH configuration on (B, H, L, dh) activations."""
    probs, exact = full_attention(q, v, causal=causal)
    out, buckets = lsh_attention(
        q, v, n_hashes=n_hashes, chunk_len=chunk_len, seed=seed, causal=causal, n_buckets=n_buckets,
        same_bucket=same_bucket, dup_correction=dup_correction,
    )
    visible = visible_keys(buckets, chunk_len=chunk_len, seq_len=q.shape[-2], same_bucket=same_bucket)
    used_buckets = n_buckets if n_buckets is not None else ReformerConfig(chunk_len=chunk_len).buckets_for(buckets.shape[-1])
    return Approximation(
        n_hashes=n_hashes, chunk_len=chunk_len, n_buckets=used_buckets, seed=seed,
        mass_recall=mass_recall(probs, visible), relative_error=relative_error(out, exact),
    )


def sweep(
    q: torch.Tensor, v: torch.Tensor, *, n_hashes: Iterable[int], chunk_lens: Iterable[int],
    seeds: Iterable[int], causal: bool = True,
) -> list[Approximation]:
    """approximation() over every (chunk_len, n_hashes, seed), in that nesting order."""
    seeds, n_hashes = list(seeds), list(n_hashes)
    return [approximation(q, v, n_hashes=r, chunk_len=m, seed=s, causal=causal)
            for m in chunk_lens for r in n_hashes for s in seeds]


@torch.no_grad()
def capture_qkv(model: nn.Module, tokens: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared-QK queries and values (B, H, L, dh) of block `layer` of a ReformerLM on `tokens`,
    read from its projections during one evaluation forward."""
    attn = model.stack.blocks[layer].f.attn
    if not attn.cfg.shared_qk:
        raise ValueError(f"ReformerConfig.shared_qk={attn.cfg.shared_qk!r}: LSH approximation needs shared QK")
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        return lambda _module, _inputs, output: seen.setdefault(name, output.detach())

    handles = [attn.to_qk.register_forward_hook(keep("qk")), attn.to_v.register_forward_hook(keep("v"))]
    was_training = model.training
    try:
        model.eval()
        model(tokens)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return attn._heads(seen["qk"]), attn._heads(seen["v"])
