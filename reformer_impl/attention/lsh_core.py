"""LSH attention's core: windowed attention over the sorted layout, a block of windows at a time.

Per block: gather its queries, keys and values, logits, masks, duplicate counts, softmax,
probabilities x values; every pairwise temporary lives for one block only (a few MiB, in cache), and
the full-size buffers are the probabilities the backward keeps and nothing else. Per group of
heads the rounds are combined (paper eq. 14). The hand-written backward walks the same blocks and
scatter-adds the gradients of queries, keys and values by source row, so it holds no full-size
buffer either; it needs the layer's output (g . out), which it keeps as the Function's output.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.autograd.function import once_differentiable

from reformer_impl.attention.lsh_counts import BlockMasks, DuplicateCounts
from reformer_impl.attention.lsh_layout import Layout, own_round, window_view
from reformer_impl.profiling import DUP_COUNTS, GATHER, LSH_BACKWARD, ROUND_COMBINE, WINDOW_ATTENTION, stage

_NORM_EPS = 1e-12  # F.normalize's default, which base.shared_keys uses
# Logits per block of windows (4 MiB in fp32, 128 windows of 64 x 128): one block's temporaries stay
# in cache. One thread runs as fast with 32 to 256 windows a block; with more threads every op is a
# parallel region to join, so fewer, larger blocks lose less to synchronisation (most under load).
BLOCK_ELEMENTS = 1 << 20
# Long, many-round layers take larger blocks, up to 4x, so a step has about this many blocks at most.
MAX_BLOCKS = 32
# Layout rows per group of heads whose round outputs are held before they are combined.
GROUP_ROWS = 1 << 16


def _head_groups(layout: Layout) -> Iterator[tuple[int, int]]:
    per_group = max(1, GROUP_ROWS // layout.head_rows)
    for h0 in range(0, layout.n_heads, per_group):
        yield h0, min(layout.n_heads, h0 + per_group)


def _window_blocks(layout: Layout, h0: int, h1: int) -> Iterator[tuple[int, int]]:
    """Windows whose queries are the heads [h0, h1)'s chunks (all but the group's first, a copy
    whose outputs are never used), in blocks of about BLOCK_ELEMENTS logits."""
    m = layout.chunk_len
    per_head = layout.head_rows // m
    lo, hi = h0 * per_head, h1 * per_head - 1
    size = max(1, BLOCK_ELEMENTS // (2 * m * m))
    size = min(4 * size, max(size, -(-layout.n_query_chunks // MAX_BLOCKS)))
    for w0 in range(lo, hi, size):
        yield w0, min(hi, w0 + size)


def _gather(src: torch.Tensor, rows: torch.Tensor, w0: int, w1: int, m: int) -> torch.Tensor:
    """Source rows of the block's layout rows [w0 m, (w1 + 1) m): ((n + 1) m, d)."""
    return src.index_select(0, rows[w0 * m : (w1 + 1) * m])


def _key_norms(q_src: torch.Tensor) -> torch.Tensor:
    """max(|q|, eps) per source row, (rows, 1): the shared keys' denominators (F.normalize's)."""
    return q_src.norm(dim=-1, keepdim=True).clamp_min_(_NORM_EPS)


def _gather_queries_keys(q_src, denom, rows, w0: int, w1: int, m: int):
    """The block's queries (n, m, dh) and keys ((n + 1) m, dh), k = q / max(|q|, eps) as F.normalize
    computes it, bit for bit: the keys are normalised a block at a time, so no full-size key buffer
    exists, and one gather serves queries and keys."""
    index = rows[w0 * m : (w1 + 1) * m]
    raw = q_src.index_select(0, index)
    return raw[m:].view(w1 - w0, m, -1), raw / denom.index_select(0, index)


def _as_rows(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], bool]:
    """(B, H, Lp, dh) tensors as (rows, dh) without a copy where they are views of (B, Lp, H, dh)
    storage (the projections' and the output projection's layout): then True, rows (b, p, h)."""
    _, h, _, dh = tensors[0].shape
    if h > 1 and all(t.permute(0, 2, 1, 3).is_contiguous() for t in tensors):
        return [t.permute(0, 2, 1, 3).reshape(-1, dh) for t in tensors], True
    return [t.contiguous().view(-1, dh) for t in tensors], False


def _source_rows(layout: Layout, n_heads: int, heads_inner: bool) -> torch.Tensor:
    """layout.rows (head * Lp + position) as row numbers of a (B, Lp, H, dh) source when heads_inner."""
    if not heads_inner:
        return layout.rows
    lp = layout.slot.shape[-1]
    head, pos = layout.rows // lp, layout.rows % lp
    return ((head // n_heads) * lp + pos) * n_heads + head % n_heads


def _from_rows(rows: torch.Tensor, shape, heads_inner: bool) -> torch.Tensor:
    """(rows, dh) (possibly strided rows) -> (B, H, Lp, dh), a view, in the order _as_rows read them."""
    b, h, lp, dh = shape
    if heads_inner:
        return rows.view(b, lp, h, dh).permute(0, 2, 1, 3)
    return rows.view(shape)


def _softmax_block(logits, w0, w1, masks, counts):
    """Masked softmax of one block (n, m, 2m) in place, keys divided by their duplicate counts
    (logits minus log N_ij, as renormalised p / N); returns the log normaliser per query (n, m).
    Half precision runs it in float32."""
    work = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    masks.apply_(work, w0, w1)
    top = work.amax(dim=-1)
    probs = torch.softmax(work, dim=-1)
    lse = top - probs.amax(dim=-1).log()  # the largest probability is exp(top - lse)
    if counts is not None:
        with stage(DUP_COUNTS):
            probs.div_(counts.counts(w0, w1, probs.dtype))
            total = probs.sum(dim=-1, keepdim=True)
            probs.div_(total)
            lse.add_(total.squeeze(-1).log())
    masks.zero_padding_queries_(probs, w0, w1)
    logits.copy_(probs)
    return lse


class _LSHCore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qk, v, layout, seq_len, causal, buckets, dup_correction, dropout_p, keep):
        b, h, lp, dh = qk.shape
        m, n_rounds = layout.chunk_len, layout.n_rounds
        (q_src, v_src), heads_inner = _as_rows(qk, v)
        rows = _source_rows(layout, h, heads_inner)
        denom = _key_norms(q_src)
        masks = BlockMasks(layout, seq_len=seq_len, causal=causal, buckets=buckets)
        counts = DuplicateCounts(layout, buckets) if dup_correction and n_rounds > 1 else None
        n_win = layout.n_query_chunks
        probs = qk.new_empty(n_win, m, 2 * m) if keep else None
        kept = torch.empty((n_win, m, 2 * m), dtype=torch.bool, device=qk.device) if keep and dropout_p > 0 else None
        out = qk.new_empty(b, lp, h, dh)  # heads inner, so the output projection's input is a view of it
        out_heads = out.permute(0, 2, 1, 3)
        weights = None
        for h0, h1 in _head_groups(layout):
            base = h0 * layout.head_rows
            o_rows = qk.new_empty((h1 - h0) * layout.head_rows, dh)
            lse_rows = None
            for w0, w1 in _window_blocks(layout, h0, h1):
                n = w1 - w0
                with stage(GATHER):
                    x_q, x_k = _gather_queries_keys(q_src, denom, rows, w0, w1, m)
                    x_v = _gather(v_src, rows, w0, w1, m)
                with stage(WINDOW_ATTENTION):
                    block = probs[w0:w1] if probs is not None else qk.new_empty(n, m, 2 * m)
                    torch.bmm(x_q, window_view(x_k, n, m).transpose(1, 2), out=block)
                    lse = _softmax_block(block, w0, w1, masks, counts)
                    if lse_rows is None:
                        lse_rows = lse.new_empty(o_rows.shape[0])
                    lse_rows[(w0 + 1) * m - base : (w1 + 1) * m - base] = lse.view(-1)
                    dropped = block
                    if dropout_p > 0:
                        mask = kept[w0:w1] if kept is not None else torch.empty_like(block, dtype=torch.bool)
                        dropped = block * mask.bernoulli_(1 - dropout_p) / (1 - dropout_p)
                    o_block = o_rows[(w0 + 1) * m - base : (w1 + 1) * m - base]
                    torch.bmm(dropped, window_view(x_v, n, m), out=o_block.view(n, m, dh))
            with stage(ROUND_COMBINE):
                w = _combine_rounds(o_rows, lse_rows, layout, h0, h1, out_heads)
                if weights is None:
                    weights = w.new_empty(layout.slot.shape)
                weights[h0:h1] = w
        ctx.layout, ctx.dropout_p, ctx.heads_inner = layout, dropout_p, heads_inner
        if keep:
            ctx.save_for_backward(q_src, v_src, probs, kept, weights, out_heads)
        return out_heads

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        with stage(LSH_BACKWARD):
            return _backward(ctx, grad_out)


def _combine_rounds(o_rows, lse_rows, layout, h0, h1, out_heads):
    """Paper eq. 14 for heads [h0, h1): out = sum_r softmax_r(lse_r) * out_r, written into the
    (B, H, Lp, dh) output; returns the round weights (h1 - h0, R, Lp)."""
    m, n_rounds = layout.chunk_len, layout.n_rounds
    lp = layout.slot.shape[-1]
    local = layout.query_row.view(layout.n_heads, n_rounds, lp)[h0:h1] + (m - h0 * layout.head_rows)
    weights = torch.softmax(lse_rows[local], dim=1)  # (h1 - h0, R, Lp)
    w_o = weights.to(o_rows.dtype)
    for i in range(h1 - h0):
        bh = h0 + i
        dst = out_heads[bh // out_heads.shape[1], bh % out_heads.shape[1]]
        acc = o_rows.index_select(0, local[i, 0])
        if n_rounds > 1:
            acc.mul_(w_o[i, 0].unsqueeze(-1))
            for r in range(1, n_rounds):
                acc.addcmul_(o_rows.index_select(0, local[i, r]), w_o[i, r].unsqueeze(-1))
        dst.copy_(acc)
    return weights


def _backward(ctx, grad_out):
    q_src, v_src, probs, kept, weights, out = ctx.saved_tensors
    layout, dropout_p = ctx.layout, ctx.dropout_p
    b, h, lp, dh = grad_out.shape
    m = layout.chunk_len
    rows = _source_rows(layout, h, ctx.heads_inner)
    (grad,), grad_inner = _as_rows(grad_out)
    grad_rows = _source_rows(layout, h, grad_inner)
    # Softmax and round weights (eq. 14) together: dS = P (dP - w_r (g . out)) per round.
    g_dot_out = _row_dots(grad, grad_inner, out)[grad_rows]
    # Per layout row dO_r = w_r g; zero on the repeated chunks, whose outputs were never used.
    w_rows = own_round(weights.to(grad.dtype), layout)
    w_rows.view(-1, layout.n_chunks + 1, m)[:, 0] = 0
    c_rows = g_dot_out.mul_(w_rows)
    # dq, dk and dv per source row, each contiguous in the source's layout, so dq and dv reach the
    # projections as views; the keys are normalised per block, never held whole.
    denom = _key_norms(q_src)
    acc_q, acc_k, acc_v = (grad.new_zeros(q_src.shape) for _ in range(3))
    for h0, h1 in _head_groups(layout):
        for w0, w1 in _window_blocks(layout, h0, h1):
            n = w1 - w0
            with stage(GATHER):
                x_q, keys = _gather_queries_keys(q_src, denom, rows, w0, w1, m)
                x_v = _gather(v_src, rows, w0, w1, m)
                g_q = _gather(grad, grad_rows, w0 + 1, w1, m).mul_(w_rows[(w0 + 1) * m : (w1 + 1) * m, None])
                g_q = g_q.view(n, m, dh)
            k_win, v_win = window_view(keys, n, m), window_view(x_v, n, m)
            p = probs[w0:w1]
            d_s = torch.bmm(g_q, v_win.transpose(1, 2))  # dP, (n, m, 2m)
            dropped = p
            if kept is not None:
                d_s.mul_(kept[w0:w1]).div_(1 - dropout_p)
                dropped = p * kept[w0:w1] / (1 - dropout_p)
            d_s.sub_(c_rows[(w0 + 1) * m : (w1 + 1) * m].view(n, m, 1)).mul_(p)
            fold = torch.empty(3, n + 1, m, dh, dtype=grad.dtype, device=grad.device)  # dq, dk, dv per row
            fold[0, 0] = 0
            torch.bmm(d_s, k_win, out=fold[0, 1:])
            _fold_windows(torch.bmm(d_s.transpose(1, 2), x_q), fold[1])
            _fold_windows(torch.bmm(dropped.transpose(1, 2), g_q), fold[2])
            index = rows[w0 * m : (w1 + 1) * m]
            for acc, part in zip((acc_q, acc_k, acc_v), fold):
                acc.index_add_(0, index, part.view(-1, dh))
    _keys_to_queries_(acc_k, q_src, denom, acc_q)
    shape = (b, h, lp, dh)
    return (_from_rows(acc_q, shape, ctx.heads_inner), _from_rows(acc_v, shape, ctx.heads_inner),
            None, None, None, None, None, None, None)


def _row_dots(g_rows: torch.Tensor, inner: bool, out: torch.Tensor) -> torch.Tensor:
    """g . out per row of the output gradient as _as_rows gave it ((b, p, h) rows when `inner`, else
    (b, h, p)): one dot per row, with no full-size product in between."""
    if inner:
        o_rows = out.permute(0, 2, 1, 3).reshape(-1, g_rows.shape[-1])  # out is heads inner: a view
    else:
        o_rows = out.reshape(-1, g_rows.shape[-1])
    return torch.bmm(g_rows.unsqueeze(1), o_rows.unsqueeze(2)).view(-1)


def _keys_to_queries_(dk: torch.Tensor, q: torch.Tensor, denom: torch.Tensor, dq: torch.Tensor) -> None:
    """dq += the backward of k = q / max(|q|, eps) (F.normalize) applied to dk, per source row:
    (dk - k (k . dk)) / max(|q|, eps), the radial part only where |q| > eps; dk is overwritten."""
    radial = torch.bmm(q.unsqueeze(1), dk.unsqueeze(2)).view(-1, 1).div_(denom).div_(denom)  # k . dk / |q|
    radial.masked_fill_(denom <= _NORM_EPS, 0)
    dq.add_(dk.addcmul_(q, radial, value=-1).div_(denom))


def _fold_windows(window_grads: torch.Tensor, dst: torch.Tensor) -> None:
    """(n, 2m, d) gradients per window slot -> (n + 1, m, d) per layout row of the block: chunk t
    is the second half of window t - 1 and the first half of window t."""
    n, two_m, d = window_grads.shape
    m = two_m // 2
    halves = window_grads.view(n, 2, m, d)
    dst[0] = halves[0, 0]
    if n > 1:
        torch.add(halves[1:, 0], halves[:-1, 1], out=dst[1:n])
    dst[n] = halves[-1, 1]


def lsh_core(qk, v, layout: Layout, *, seq_len: int, causal: bool, buckets: Optional[torch.Tensor],
             dup_correction: bool, dropout_p: float) -> torch.Tensor:
    """(B, H, Lp, dh) output of LSH attention over `layout`; keeps probabilities only when a
    gradient will be asked for."""
    keep = torch.is_grad_enabled() and (qk.requires_grad or v.requires_grad)
    return _LSHCore.apply(qk, v, layout, seq_len, causal, buckets, dup_correction, dropout_p, keep)
