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
    """x (B, H, L, d) gathered along L by index (B, H, R, L') -> (B, H, R, L', d)."""
    b, h, length, d = x.shape
    offsets = (torch.arange(b * h, device=x.device) * length).view(b, h, 1, 1)
    return x.reshape(b * h * length, d)[(index + offsets).reshape(-1)].view(*index.shape, d)


def _look_one_back(t: torch.Tensor, n_chunks: int, chunk_dim: int = -2) -> torch.Tensor:
    """Each chunk followed by the chunk before it (cyclically): (.., C, m, ..) -> (.., C, 2m, ..),
    the chunks along `chunk_dim` (negative), their slots along the next dim."""
    if n_chunks == 1:  # the only chunk is its own predecessor: attend to it once
        return t
    return torch.cat([t, t.roll(1, dims=chunk_dim)], dim=chunk_dim + 1)


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
    w = m if n_chunks == 1 else 2 * m  # keys per query window
    pos = torch.arange(lp, device=qk.device)

    with torch.no_grad():
        # Rounds never mix: each sorts only its own copies, so no bucket offset is needed.
        sticker = (buckets * lp + pos).argsort(dim=-1)  # sorted slot -> original position
        undo = torch.empty_like(sticker).scatter_(-1, sticker, pos.expand_as(sticker))
        q_pos = sticker.to(torch.int32).view(b, h, n_rounds, n_chunks, m)
        k_pos = _look_one_back(q_pos, n_chunks)  # (B, H, R, C, W)
        q_pos, k_pos = q_pos[..., :, None], k_pos[..., None, :]  # (.., m, 1), (.., 1, W)
        forbidden = k_pos >= seq_len  # padding keys
        if causal:
            forbidden = forbidden | (k_pos > q_pos)
        if same_bucket:
            s_buckets = buckets.gather(-1, sticker).view(b, h, n_rounds, n_chunks, m)
            forbidden = forbidden | (_look_one_back(s_buckets, n_chunks)[..., None, :] != s_buckets[..., :, None])
        replace = forbidden | (k_pos == q_pos)  # (B, H, R, C, m, W)
        # Masked keys get -1e9; a query's own key gets -1e5, so it is used only when nothing else is.
        fill = torch.where(forbidden, masked_value(qk.dtype), self_value(qk.dtype)).to(qk.dtype)
        bias = None
        if dup_correction and n_rounds > 1:
            bias = _neg_log_duplicates(buckets, sticker, undo, m, same_bucket, qk.dtype)

    sq = _gather_rows(qk, sticker)  # (B, H, R, Lp, dh)
    sv = _gather_rows(v, sticker)
    keys = _look_one_back(shared_keys(sq).view(b, h, n_rounds, n_chunks, m, dh), n_chunks, -3)
    values = _look_one_back(sv.view(b, h, n_rounds, n_chunks, m, dh), n_chunks, -3)

    # One batched matmul over (B, H, R, C): (m, dh) x (dh, W) -> (m, W); no L x L anywhere.
    logits = torch.bmm(sq.reshape(-1, m, dh), keys.reshape(-1, w, dh).transpose(1, 2))
    logits = logits.view(b, h, n_rounds, n_chunks, m, w)
    if bias is not None:
        logits = logits + bias
    logits = torch.where(replace, fill, logits)
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, H, R, C, m, 1)
    probs = F.dropout(torch.softmax(logits, dim=-1), p=dropout_p, training=dropout_p > 0)
    out = torch.bmm(probs.view(-1, m, w), values.reshape(-1, w, dh))  # (B*H*R*C, m, dh)

    out = _unsort(out.view(b, h, n_rounds, lp, dh), undo)  # back to original order per round
    lse = _unsort(lse.view(b, h, n_rounds, lp, 1), undo)  # (B, H, R, Lp, 1)
    if n_rounds == 1:
        return out[:, :, 0]
    weights = torch.softmax(lse, dim=2)  # paper eq. 14: rounds weighted by their normaliser
    return (out * weights).sum(dim=2)


def _unsort(t: torch.Tensor, undo: torch.Tensor) -> torch.Tensor:
    """t (B, H, R, Lp, d) in sorted order per round -> original order, by `undo` (B, H, R, Lp)."""
    b, h, n_rounds, lp = undo.shape
    rows = t.reshape(b, h * n_rounds, lp, -1)  # each (head, round) is its own group of rows
    return _gather_rows(rows, undo.reshape(b, h * n_rounds, 1, lp)).view(b, h, n_rounds, lp, -1)


def _neg_log_duplicates(buckets, sticker, undo, chunk_len, same_bucket, dtype):
    """-log N_ij (paper eq. 16): in how many rounds key j falls in query i's window, (B, H, R, C, m, W).

    j is in i's window in round r' when chunk_r'(j) is chunk_r'(i) or the chunk before it. Chunk
    ids are int16 with the compared round r' leading, so the comparison runs over W contiguously.
    """
    b, h, n_rounds, lp = buckets.shape
    n_chunks = lp // chunk_len
    chunk_of = (undo // chunk_len).to(torch.int16)  # (B, H, R', Lp): each position's chunk per round
    # (R', B, H, R, Lp): the chunks, in every round r', of the positions sorted by round r
    per_slot = _chunks_of_sorted(chunk_of, sticker)
    q_chunk = per_slot.view(n_rounds, b, h, n_rounds, n_chunks, chunk_len)
    k_chunk = _look_one_back(q_chunk, n_chunks)  # (R', B, H, R, C, W)
    qc = q_chunk[..., :, None]  # (.., m, 1)
    same = k_chunk[..., None, :] == qc
    if n_chunks > 1:
        same = same | (((k_chunk + 1) % n_chunks)[..., None, :] == qc)
    if same_bucket:
        bq = _chunks_of_sorted(buckets.to(torch.int16), sticker).view(n_rounds, b, h, n_rounds, n_chunks, chunk_len)
        same = same & (_look_one_back(bq, n_chunks)[..., None, :] == bq[..., :, None])
    # Summing bools promotes to int64 (8x the bytes); uint8 holds up to 255 rounds.
    counts = same.view(torch.uint8).sum(dim=0, dtype=torch.uint8).clamp_(min=1)  # (B, H, R, C, m, W)
    return counts.to(dtype).log_().neg_()


def _chunks_of_sorted(per_round: torch.Tensor, sticker: torch.Tensor) -> torch.Tensor:
    """per_round (B, H, R', Lp) values by original position -> (R', B, H, R, Lp): for every round r
    and sorted slot, the value of that slot's position in each round r'."""
    b, h, n_rounds, lp = per_round.shape
    src = per_round.permute(2, 0, 1, 3)[:, :, :, None, :].expand(n_rounds, b, h, n_rounds, lp)
    return src.gather(-1, sticker[None].expand(n_rounds, b, h, n_rounds, lp))


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
