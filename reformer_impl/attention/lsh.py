"""Shared-QK angular-LSH attention (paper sec. 2-3), vectorised over batch, heads, rounds, chunks.

Per round: sort the positions by (bucket, position), padding after every real position, cut the
sorted sequence into chunks of `chunk_len`, let each chunk attend to itself and the chunk before it
(cyclically over the chunks that hold real positions, within its round; trax, HF and
reformer-pytorch look back across rounds), mask by original position, then combine
the rounds per query with weights softmax_r(logsumexp of round r's logits) (paper eq. 14).
No L x L tensor: the windows are overlapping views of one sorted buffer, and a hand-written
backward keeps the window probabilities instead of recomputing them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from reformer_impl.attention.base import Attention, shared_keys
from reformer_impl.config import ReformerConfig
from reformer_impl.hashing import hash_vectors, random_rotations
from reformer_impl.masking import masked_value, self_value

_NORM_EPS = 1e-12  # F.normalize's default, which shared_keys uses


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


@dataclass(frozen=True)
class _Layout:
    """Every (head, round) as a segment of C + 1 chunks in sorted order, the first a copy of the
    round's last chunk with a real position; query chunk j (layout chunk j + 1) attends to layout
    rows [jm, jm + 2m)."""

    rows: torch.Tensor  # (G m,) source row (head * Lp + position) of every layout row
    positions: torch.Tensor  # (G m,) int32 original position of every layout row
    query_row: torch.Tensor  # (BH R Lp,) query row (layout row - m) of (head, round, position)
    key_slots: torch.Tensor  # (BH Lp R 2,) window slots (of G' x 2m) holding each position as a key
    slot: torch.Tensor  # (BH, R, Lp) sorted slot of each position, per round
    n_rounds: int
    n_chunks: int
    chunk_len: int
    n_real_chunks: int  # chunks holding a real position; padding fills the ones after them

    @property
    def n_query_chunks(self) -> int:
        return self.rows.numel() // self.chunk_len - 1

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """(.., G m, d) layout rows -> (.., G', 2m, d) overlapping windows (a view, no copy)."""
        m, g = self.chunk_len, self.n_query_chunks
        *lead, _, d = x.shape
        stride = x.stride()
        return x.as_strided((*lead, g, 2 * m, d), (*stride[:-2], m * stride[-2], stride[-2], stride[-1]))

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """(.., G m, d) layout rows -> (.., G', m, d) query chunks."""
        *lead, _, d = x.shape
        return x[..., self.chunk_len :, :].reshape(*lead, self.n_query_chunks, self.chunk_len, d)


# Sort key of padding: above every real position's bucket * Lp + position, so padding sorts after
# all real tokens whatever its bucket, and never takes a chunk slot from one.
_PADDING_KEY = 2**62


def _sorted_layout(buckets: torch.Tensor, chunk_len: int, seq_len: int) -> _Layout:
    """Sort each round by (bucket, position), padding (positions >= seq_len) last, and lay the
    chunks out for windowed attention. Real positions so take the same slots whatever the padding."""
    b, h, n_rounds, lp = buckets.shape
    m, n_chunks, bh = chunk_len, lp // chunk_len, b * h
    n_real_chunks = max(1, math.ceil(seq_len / m))
    device = buckets.device
    pos = torch.arange(lp, device=device)
    # Rounds never mix: each sorts only its own copies, so no bucket offset is needed.
    key = torch.where(pos < seq_len, buckets.long() * lp + pos, _PADDING_KEY + pos)
    sticker = key.argsort(dim=-1).view(bh, n_rounds, n_chunks, m)
    last_real = sticker[:, :, n_real_chunks - 1 : n_real_chunks]  # the chunk the first one looks back to
    positions = torch.cat([last_real, sticker], dim=2)  # (BH, R, C + 1, m)
    rows = (positions + (torch.arange(bh, device=device) * lp).view(-1, 1, 1, 1)).reshape(-1)
    slot = torch.empty((bh, n_rounds, lp), dtype=torch.long, device=device)
    slot.scatter_(-1, sticker.view(bh, n_rounds, lp), pos.expand(bh, n_rounds, lp))
    segment = torch.arange(bh * n_rounds, device=device).view(bh, n_rounds, 1) * ((n_chunks + 1) * m)
    query_row = (slot + segment).reshape(-1)
    key_slots = _key_slots(query_row + m, n_chunks, n_real_chunks, m)
    key_slots = key_slots.view(bh, n_rounds, lp, 2).transpose(1, 2).reshape(-1)
    return _Layout(rows=rows, positions=positions.reshape(-1).to(torch.int32), query_row=query_row,
                   key_slots=key_slots, slot=slot, n_rounds=n_rounds, n_chunks=n_chunks, chunk_len=m,
                   n_real_chunks=n_real_chunks)


def _key_slots(layout_row: torch.Tensor, n_chunks: int, n_real_chunks: int, m: int) -> torch.Tensor:
    """For each layout row: its slot in its own chunk's window (second half) and in the
    look-back half of the next chunk's, the round's first chunk for its last real one (via the
    copy). Padding-only chunks after the real ones hold keys no one attends to, and look-backs
    no real query uses: their second slot repeats the first (a zero gradient either way)."""
    chunk, i = layout_row // m, layout_row % m
    first = chunk - chunk % (n_chunks + 1)  # the segment's repeated chunk
    own = (chunk - 1) * 2 * m + m + i
    next_window = torch.where(chunk - first == n_real_chunks, first, chunk) * 2 * m + i
    return torch.stack([own, torch.where(chunk - first > n_real_chunks, own, next_window)], dim=-1)


def _layout_per_round(per_round: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """per_round (BH, R', Lp) values by position -> (R', G m): every layout row's value in each round r'."""
    bh, n_rounds, lp = per_round.shape
    return per_round.transpose(0, 1).reshape(n_rounds, bh * lp)[:, layout.rows]


def _duplicate_counts(layout: _Layout, buckets: Optional[torch.Tensor], scratch: Optional[torch.Tensor]) -> torch.Tensor:
    """N_ij (paper eq. 16): in how many rounds key j falls in query i's window, (G', m, 2m) uint8.

    j is in i's window in round r' when chunk_r'(j) is chunk_r'(i) or the one before it (cyclically
    over the real chunks; padding keys and queries are masked, so their counts do not matter).
    It is in round r's by construction, so only the other R - 1 rounds are compared. With
    `buckets` (same-bucket attention), only rounds where the two also share a bucket count.
    """
    m, n_chunks, n_real = layout.chunk_len, layout.n_chunks, layout.n_real_chunks
    id_dtype = torch.int16 if n_chunks < 2**15 else torch.int32
    chunk_ids = _other_rounds((layout.slot // m).to(id_dtype), layout)  # (R - 1, G m, 1)
    q_chunk, k_chunk = layout.queries(chunk_ids), layout.windows(chunk_ids).transpose(-1, -2)  # (R-1, G', m|1, 1|2m)
    shape = torch.broadcast_shapes(q_chunk.shape, k_chunk.shape)
    same = torch.eq(k_chunk, q_chunk, out=_scratch(scratch, shape, torch.bool))
    if n_real > 1:
        same |= k_chunk == (q_chunk - 1) % n_real
    if buckets is not None:
        b_ids = _other_rounds(buckets.reshape(layout.slot.shape), layout)
        same &= layout.windows(b_ids).transpose(-1, -2) == layout.queries(b_ids)
    # Summing bools promotes to int64 (8x the bytes); uint8 holds up to 255 rounds.
    return same.view(torch.uint8).sum(dim=0, dtype=torch.uint8).add_(1)


def _own_round(per_round: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """per_round (BH, R, Lp) values by position -> (G m,): every layout row's value in its own round."""
    bh, n_rounds, _ = per_round.shape
    return per_round.gather(-1, layout.positions.view(bh, n_rounds, -1).long()).view(-1)


def _other_rounds(per_round: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """per_round (BH, R, Lp) values by position -> (R - 1, G m, 1): for every layout row (in its
    round r), its position's values in the rounds r' != r."""
    values = _layout_per_round(per_round, layout)  # (R', G m)
    n_rounds = layout.n_rounds
    bh = layout.slot.shape[0]
    k = torch.arange(n_rounds - 1, device=values.device).view(-1, 1)
    other = k + (k >= torch.arange(n_rounds, device=values.device))  # (R - 1, R): r' for each round r
    index = other.view(n_rounds - 1, 1, n_rounds, 1).expand(n_rounds - 1, bh, n_rounds, values.shape[-1] // (bh * n_rounds))
    return values.view(n_rounds, bh, n_rounds, -1).gather(0, index).reshape(n_rounds - 1, -1, 1)


def _mask_logits_(logits, layout, *, seq_len, causal, buckets) -> list[torch.Tensor]:
    """Self, padding, causal and same-bucket masks by original position, in place on (G', m, 2m).
    A padding query attends to nothing (its output is zero), a padding key to no one.

    Returns the forbidden-key masks (broadcastable bools) so the softmax can zero those keys exactly.
    """
    m, dtype = layout.chunk_len, logits.dtype
    # A query's own key sits on the diagonal of the window's second half: used only when nothing else is.
    logits.diagonal(offset=m, dim1=-2, dim2=-1).fill_(self_value(dtype))
    pos = layout.positions[:, None]
    q_pos, k_pos = layout.queries(pos), layout.windows(pos).transpose(-1, -2)  # (G', m, 1), (G', 1, 2m)
    forbidden = []
    if layout.n_real_chunks == 1:  # the look-back half repeats the query's own chunk: attend to it once
        forbidden.append(torch.arange(2 * m, device=logits.device).view(1, 1, -1) < m)
    if causal:
        forbidden.append(k_pos > q_pos)
    if seq_len < layout.slot.shape[-1]:
        forbidden += [k_pos >= seq_len, q_pos >= seq_len]
    if buckets is not None:
        own = _own_round(buckets.reshape(layout.slot.shape), layout).view(-1, 1)
        forbidden.append(layout.windows(own).transpose(-1, -2) != layout.queries(own))
    for mask in forbidden:
        logits.masked_fill_(mask, masked_value(dtype))
    return forbidden


def _scratch(buffer: Optional[torch.Tensor], shape, dtype: torch.dtype) -> torch.Tensor:
    """A (shape, dtype) tensor over a dead contiguous buffer's bytes when they suffice, else a new
    one: on CPU a fresh large tensor costs its page faults, a reused one does not."""
    nbytes = math.prod(shape) * dtype.itemsize
    if buffer is not None and buffer.is_contiguous() and buffer.numel() * buffer.element_size() >= nbytes:
        return buffer.reshape(-1).view(torch.uint8)[:nbytes].view(dtype).view(shape)
    device = buffer.device if buffer is not None else None
    return torch.empty(shape, dtype=dtype, device=device)


def _softmax_(logits, counts, forbidden, scratch=None):
    """Softmax over the window in place, keys divided by their duplicate counts (i.e. logits
    minus log N_ij); returns the log normaliser per query. Half precision runs it in float32.
    `scratch`: a dead buffer, for the counts as floats."""
    work = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    top = work.amax(dim=-1, keepdim=True)
    # exp is many times slower on inputs that underflow; masked keys are set to exactly 0 below.
    work.sub_(top).clamp_(min=math.log(torch.finfo(work.dtype).tiny) + 1).exp_()
    for mask in forbidden:
        work.masked_fill_(mask, 0)
    if counts is not None:  # dividing by uint8 converts on the fly, several times slower
        work.div_(_scratch(scratch, counts.shape, work.dtype).copy_(counts))
    # Only padding queries have every key masked; their rows become zeros, not NaN.
    total = work.sum(dim=-1, keepdim=True).clamp_(min=torch.finfo(work.dtype).tiny)
    work.div_(total)
    if work is not logits:
        logits.copy_(work)
    return (top + total.log()).squeeze(-1)


class _LSHCore(torch.autograd.Function):
    """Windowed attention over the sorted layout with a hand-written backward that keeps the
    probabilities (B H R Lp 2m) instead of recomputing masks, counts and softmax. Large
    intermediates reuse dead buffers (`out=`): on CPU a fresh buffer costs its page faults."""

    @staticmethod
    def forward(ctx, qk, v, layout, seq_len, causal, buckets, dup_correction, dropout_p):
        b, h, lp, dh = qk.shape
        q_src, v_src = qk.reshape(-1, dh), v.reshape(-1, dh)
        qkv = _gather_qkv(q_src, shared_keys(q_src), v_src, layout.rows)
        x_q, x_k, x_v = qkv
        probs = torch.bmm(layout.queries(x_q), layout.windows(x_k).transpose(1, 2))  # (G', m, 2m)
        forbidden = _mask_logits_(probs, layout, seq_len=seq_len, causal=causal, buckets=buckets)
        scratch = qkv[:2]  # queries and keys are dead from here
        counts = _duplicate_counts(layout, buckets, scratch) if dup_correction and layout.n_rounds > 1 else None
        lse = _softmax_(probs, counts, forbidden, scratch)
        del forbidden, counts
        kept, dropped = None, probs
        if dropout_p > 0:
            kept = torch.empty_like(probs, dtype=torch.bool).bernoulli_(1 - dropout_p)
            dropped = _dropout(probs, kept, dropout_p)
        n_q, m, n_rounds = layout.n_query_chunks, layout.chunk_len, layout.n_rounds
        out_rows = torch.bmm(dropped, layout.windows(x_v), out=x_q[: n_q * m].view(n_q, m, dh)).view(-1, dh)
        del dropped
        per_round = torch.index_select(out_rows, 0, layout.query_row, out=x_k[: layout.query_row.numel()])
        per_round = per_round.view(b * h, n_rounds, lp, dh)
        weights = torch.softmax(lse.view(-1)[layout.query_row].view(b * h, n_rounds, lp), dim=1)
        if n_rounds == 1:
            out = per_round[:, 0].clone()
        else:  # paper eq. 14: rounds weighted by their normaliser
            out = per_round.mul_(weights.unsqueeze(-1).to(per_round.dtype)).sum(dim=1)
        out = out.view(b, h, lp, dh)
        ctx.layout, ctx.dropout_p = layout, dropout_p
        ctx.save_for_backward(q_src, v_src, probs, kept, weights)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q_src, v_src, probs, kept, weights = ctx.saved_tensors
        layout, dropout_p = ctx.layout, ctx.dropout_p
        b, h, lp, dh = grad_out.shape
        n_q, m = layout.n_query_chunks, layout.chunk_len
        grad = grad_out.contiguous().view(-1, dh)
        k_src = shared_keys(q_src)
        qkv = _gather_qkv(q_src, k_src, v_src, layout.rows)
        x_q, x_k, x_v = qkv
        # Per layout row dO_r = w_r g; zero on the repeated chunks, whose outputs were never used.
        w_rows = _own_round(weights.to(grad.dtype), layout)
        w_rows.view(-1, layout.n_chunks + 1, m)[:, 0] = 0
        w_rows = w_rows.view(-1, 1)
        g_chunks = grad.index_select(0, layout.rows).mul_(w_rows)[m:].view(n_q, m, dh)
        dlogits = torch.bmm(g_chunks, layout.windows(x_v).transpose(1, 2))  # dP, (G', m, 2m)
        dropped = probs
        if kept is not None:
            dlogits.mul_(kept).div_(1 - dropout_p)
            dropped = _dropout(probs, kept, dropout_p)
        # Softmax and round weights (eq. 14) together: dS = P (dP - w_r (g . out)), where
        # g . out = sum over rounds of rowsum(P dP), so `out` need not be kept.
        dlogits.mul_(probs)
        per_position = _sum_rounds(dlogits.sum(dim=-1).view(-1, 1), layout, out=None).view(-1)  # g . out
        c_rows = per_position.index_select(0, layout.rows).mul_(w_rows.view(-1))[m:]
        dlogits.addcmul_(probs, c_rows.view(n_q, m, 1), value=-1)
        # x_v is dead from here, then x_q and x_k: their buffers take the next results.
        dq_rows = torch.bmm(dlogits, layout.windows(x_k), out=x_v[: n_q * m].view(n_q, m, dh)).view(-1, dh)
        window_grads = torch.bmm(dlogits.transpose(1, 2), layout.queries(x_q))  # dK per window slot
        del dlogits
        dk = _sum_window_grads(window_grads, layout, out=qkv[:2])
        dq = _sum_rounds(dq_rows, layout, out=window_grads.view(-1, dh))
        window_grads = torch.bmm(dropped.transpose(1, 2), g_chunks, out=window_grads)  # dV per window slot
        dv = _sum_window_grads(window_grads, layout, out=qkv[:2])
        # k = q / max(|q|, eps) (F.normalize): its backward, added to the query path's.
        norm = q_src.norm(dim=-1, keepdim=True)
        radial = torch.where(norm > _NORM_EPS, (k_src * dk).sum(-1, keepdim=True), torch.zeros_like(norm))
        dq = dq.add_((dk - k_src * radial) / norm.clamp_min(_NORM_EPS))
        shape = (b, h, lp, dh)
        return dq.view(shape), dv.view(shape), None, None, None, None, None, None


def _dropout(probs, kept, p):
    """Probabilities with the dropout mask `kept` applied, scaled by 1 / (1 - p); a new tensor."""
    return probs * kept / (1 - p)


def _gather_qkv(q_src, k_src, v_src, rows):
    """Queries, keys and values of every layout row: one (3, G m, d) buffer, whose parts later
    steps reuse."""
    buffer = q_src.new_empty(3, rows.numel(), q_src.shape[-1])
    for src, part in zip((q_src, k_src, v_src), buffer):
        torch.index_select(src, 0, rows, out=part)
    return buffer


def _sum_rounds(query_grads, layout, *, out):
    """(G' m, d) per query row -> (BH Lp, d) per position, summed over rounds."""
    bh, n_rounds, lp = layout.slot.shape
    if out is None:
        per_round = query_grads.index_select(0, layout.query_row)
    else:
        per_round = torch.index_select(query_grads, 0, layout.query_row, out=out[: layout.query_row.numel()])
    return per_round.view(bh, n_rounds, lp, -1).sum(dim=1).view(bh * lp, -1)


def _sum_window_grads(window_grads, layout, *, out):
    """(G', 2m, d) per window slot -> (BH Lp, d) per position: a key's slot in its own chunk's
    window and in the next chunk's look-back (for a round's last real chunk: the first chunk's, via
    the repeated chunk), summed over both and over rounds. `out`: a dead (>= 2 BH R Lp, d) buffer."""
    bh, n_rounds, lp = layout.slot.shape
    slots = layout.key_slots
    rows = window_grads.view(-1, window_grads.shape[-1])
    pairs = torch.index_select(rows, 0, slots, out=out.reshape(-1, rows.shape[-1])[: slots.numel()])
    return pairs.view(bh * lp, n_rounds * 2, -1).sum(dim=1)


def lsh_attention_core(
    qk: torch.Tensor, v: torch.Tensor, buckets: torch.Tensor, *, seq_len: int, chunk_len: int,
    causal: bool, same_bucket: bool, dup_correction: bool, dropout_p: float,
) -> torch.Tensor:
    """LSH attention on padded inputs.

    qk, v: (B, H, Lp, dh), Lp a multiple of chunk_len; buckets: (B, H, R, Lp) int.
    Positions >= seq_len are padding, whatever their buckets: sorted after every real position,
    never attended to, their outputs zero. Returns (B, H, Lp, dh).
    """
    with torch.no_grad():
        layout = _sorted_layout(buckets, chunk_len, seq_len)
    return _LSHCore.apply(
        qk.contiguous(), v.contiguous(), layout, seq_len, causal, buckets if same_bucket else None,
        dup_correction, dropout_p,
    )


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
        batch, n_heads, seq_len, _ = q.shape
        if batch == 0 or seq_len == 0:  # nothing to hash or attend; an empty output, as dense attention's
            empty_buckets = torch.zeros(batch, n_heads, cfg.n_hashes, seq_len, dtype=torch.long, device=q.device)
            return q * v, empty_buckets  # (B, H, L, dh) with no elements, still connected to q and v
        lp = padded_length(seq_len, cfg.chunk_len)
        if buckets is None:  # padding gets a bucket of its own after the real ones (the core sorts it last anyway)
            n_buckets = cfg.buckets_for(lp)
            buckets = F.pad(self.hash(q.detach(), n_buckets), (0, lp - seq_len), value=n_buckets)
        if lp != seq_len:  # (B, H, L, dh) -> (B, H, Lp, dh); padding is masked as keys, dropped as queries
            q, v = F.pad(q, (0, 0, 0, lp - seq_len)), F.pad(v, (0, 0, 0, lp - seq_len))
        out = lsh_attention_core(
            q, v, buckets, seq_len=seq_len, chunk_len=cfg.chunk_len, causal=cfg.causal,
            same_bucket=cfg.same_bucket, dup_correction=cfg.dup_correction, dropout_p=self.dropout_p,
        )
        return out[:, :, :seq_len], buckets
