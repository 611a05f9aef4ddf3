"""The sorted chunk layout LSH attention runs on: every (head, round) as a segment of C + 1 chunks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Sort key of padding: above every real position's bucket * Lp + position, so padding sorts after
# all real tokens whatever its bucket, and never takes a chunk slot from one.
PADDING_KEY = 2**62


def padded_length(seq_len: int, chunk_len: int) -> int:
    return math.ceil(seq_len / chunk_len) * chunk_len


@dataclass(frozen=True)
class Layout:
    """Every (head, round) as a segment of C + 1 chunks in sorted order, the first a copy of the
    round's last chunk with a real position. Window w covers layout chunks w and w + 1 and belongs
    to the queries of chunk w + 1 (layout rows [wm, wm + 2m), queries [wm + m, wm + 2m))."""

    rows: torch.Tensor  # (G m,) source row (head * Lp + position) of every layout row
    positions: torch.Tensor  # (G m,) int32 original position of every layout row
    query_row: torch.Tensor  # (BH R Lp,) query row (layout row - m) of (head, round, position)
    slot: torch.Tensor  # (BH, R, Lp) sorted slot of each position, per round
    n_rounds: int
    n_chunks: int
    chunk_len: int
    n_real_chunks: int  # chunks holding a real position; padding fills the ones after them

    @property
    def n_query_chunks(self) -> int:
        return self.rows.numel() // self.chunk_len - 1

    @property
    def n_heads(self) -> int:
        """Batch rows times heads (BH)."""
        return self.slot.shape[0]

    @property
    def head_rows(self) -> int:
        """Layout rows of one head: its R segments of C + 1 chunks."""
        return self.n_rounds * (self.n_chunks + 1) * self.chunk_len

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """(.., G m, d) layout rows -> (.., G', 2m, d) overlapping windows (a view, no copy)."""
        return window_view(x, self.n_query_chunks, self.chunk_len)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """(.., G m, d) layout rows -> (.., G', m, d) query chunks."""
        *lead, _, d = x.shape
        return x[..., self.chunk_len :, :].reshape(*lead, self.n_query_chunks, self.chunk_len, d)


def window_view(x: torch.Tensor, n_windows: int, m: int) -> torch.Tensor:
    """(.., (n + 1) m, d) rows -> (.., n, 2m, d): window w is rows [wm, wm + 2m) (a view, no copy)."""
    *lead, _, d = x.shape
    stride = x.stride()
    return x.as_strided((*lead, n_windows, 2 * m, d), (*stride[:-2], m * stride[-2], stride[-2], stride[-1]),
                        x.storage_offset())


def sorted_layout(buckets: torch.Tensor, chunk_len: int, seq_len: int) -> Layout:
    """Sort each round by (bucket, position), padding (positions >= seq_len) last, and lay the
    chunks out for windowed attention. Real positions so take the same slots whatever the padding."""
    b, h, n_rounds, lp = buckets.shape
    m, n_chunks, bh = chunk_len, lp // chunk_len, b * h
    n_real_chunks = max(1, math.ceil(seq_len / m))
    device = buckets.device
    pos = torch.arange(lp, device=device)
    # Rounds never mix: each sorts only its own copies, so no bucket offset is needed.
    key = torch.where(pos < seq_len, buckets.long() * lp + pos, PADDING_KEY + pos)
    sticker = key.argsort(dim=-1).view(bh, n_rounds, n_chunks, m)
    last_real = sticker[:, :, n_real_chunks - 1 : n_real_chunks]  # the chunk the first one looks back to
    positions = torch.cat([last_real, sticker], dim=2)  # (BH, R, C + 1, m)
    rows = (positions + (torch.arange(bh, device=device) * lp).view(-1, 1, 1, 1)).reshape(-1)
    slot = torch.empty((bh, n_rounds, lp), dtype=torch.long, device=device)
    slot.scatter_(-1, sticker.view(bh, n_rounds, lp), pos.expand(bh, n_rounds, lp))
    segment = torch.arange(bh * n_rounds, device=device).view(bh, n_rounds, 1) * ((n_chunks + 1) * m)
    query_row = (slot + segment).reshape(-1)
    return Layout(rows=rows, positions=positions.reshape(-1).to(torch.int32), query_row=query_row, slot=slot,
                  n_rounds=n_rounds, n_chunks=n_chunks, chunk_len=m, n_real_chunks=n_real_chunks)


def layout_per_round(per_round: torch.Tensor, layout: Layout) -> torch.Tensor:
    """per_round (BH, R', Lp) values by position -> (R', G m): every layout row's value in each round r'."""
    bh, n_rounds, lp = per_round.shape
    return per_round.transpose(0, 1).reshape(n_rounds, bh * lp)[:, layout.rows]


def own_round(per_round: torch.Tensor, layout: Layout) -> torch.Tensor:
    """per_round (BH, R, Lp) values by position -> (G m,): every layout row's value in its own round."""
    bh, n_rounds, _ = per_round.shape
    return per_round.gather(-1, layout.positions.view(bh, n_rounds, -1).long()).view(-1)


def other_rounds(per_round: torch.Tensor, layout: Layout) -> torch.Tensor:
    """per_round (BH, R, Lp) values by position -> (R - 1, G m): for every layout row (in its
    round r), its position's values in the rounds r' != r, in increasing r'."""
    values = layout_per_round(per_round, layout)  # (R', G m)
    n_rounds = layout.n_rounds
    bh = layout.slot.shape[0]
    k = torch.arange(n_rounds - 1, device=values.device).view(-1, 1)
    other = k + (k >= torch.arange(n_rounds, device=values.device))  # (R - 1, R): r' for each round r
    index = other.view(n_rounds - 1, 1, n_rounds, 1).expand(n_rounds - 1, bh, n_rounds, values.shape[-1] // (bh * n_rounds))
    return values.view(n_rounds, bh, n_rounds, -1).gather(0, index).reshape(n_rounds - 1, -1)
