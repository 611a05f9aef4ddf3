"""Angular LSH (paper sec. 2, Andoni et al. 2015): h(x) = argmax([xR ; -xR]) with R ~ N(0, 1).

Factorised (HF's num_buckets=[a, b]): two independent rotations of a/2 and b/2 columns per round,
h(x) = h_a(x) + a * h_b(x), a x b buckets for the cost of a + b columns. As each factor's hash is
angular, h(-x) = (h_a + a/2) mod a + a * ((h_b + b/2) mod b), the plain hash's relation per factor.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

Buckets = Union[int, tuple[int, ...]]


def _factors(n_buckets: Buckets) -> tuple[int, ...]:
    factors = tuple(n_buckets) if isinstance(n_buckets, (tuple, list)) else (n_buckets,)
    for f in factors:
        if f % 2 or f < 2:
            raise ValueError(f"n_buckets={n_buckets} must be even (each factor) for angular LSH")
    return factors


def random_rotations(
    n_heads: int, d_head: int, n_hashes: int, n_buckets: Buckets, generator: torch.Generator, device
) -> torch.Tensor:
    """Fresh rotations, one per head and hash round: (n_heads, d_head, n_hashes, sum of factors / 2);
    for one factor (n_heads, d_head, n_hashes, n_buckets // 2), as the paper's single rotation."""
    shape = (n_heads, d_head, n_hashes, sum(f // 2 for f in _factors(n_buckets)))
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


# Rotated projections held at once: (B, H, L, R, n_buckets/2) is quadratic in L with the paper's
# automatic n_buckets = 2 L / chunk_len (4 GiB at L = 65536, 4 heads, 4 rounds), so the hash runs
# a sequence tile at a time in constant memory. 2^21 floats (8 MiB) also stays below glibc's mmap
# threshold, so on CPU the tiles reuse one block instead of page-faulting fresh memory each time.
TILE_ELEMENTS = 1 << 21


def _argmax_signed(rotated: torch.Tensor) -> torch.Tensor:
    """argmax over [r ; -r] along the last dim without building it: the column of the largest |r|,
    on the negative side where that r is negative (one index-tracking reduction instead of two;
    an exact tie |max r| = |min r| goes to the smaller column)."""
    half = rotated.shape[-1]
    idx = rotated.abs().argmax(dim=-1)
    negative = rotated.gather(-1, idx.unsqueeze(-1)).squeeze(-1) < 0
    return idx.add_(negative, alpha=half)


@torch.no_grad()
def hash_vectors(x: torch.Tensor, rotations: torch.Tensor, factors: Optional[tuple[int, ...]] = None) -> torch.Tensor:
    """Bucket ids in [0, n_buckets) of x (B, H, L, d_head) per round: (B, H, n_hashes, L).

    `factors` (a, b): the rotations' columns are a/2 then b/2, bucket h_a + a * h_b; None: one
    rotation of n_buckets / 2 columns. Computed in float32 so the argmax does not depend on the
    activation dtype; no gradient flows through the hash. Each tile is one matmul over batch, heads
    and rounds.
    """
    b, n_heads, length, d_head = x.shape
    _, _, n_hashes, cols = rotations.shape
    factors = factors or (2 * cols,)
    if sum(f // 2 for f in factors) != cols:
        raise ValueError(f"rotations have {cols} columns, factors {factors} need {sum(f // 2 for f in factors)}")
    rotations = rotations.reshape(n_heads, d_head, n_hashes * cols)  # rounds contiguous in the last dim
    tile = max(1, TILE_ELEMENTS // (b * n_heads * n_hashes * cols))
    buckets = torch.empty(b, n_heads, length, n_hashes, dtype=torch.long, device=x.device)
    for start in range(0, length, tile):
        rotated = torch.matmul(x[:, :, start : start + tile].float(), rotations)
        rotated = rotated.view(b, n_heads, -1, n_hashes, cols)
        out = buckets[:, :, start : start + tile]
        col, scale = 0, 1
        for f in factors:
            part = _argmax_signed(rotated[..., col : col + f // 2])
            if scale == 1:
                out.copy_(part)
            else:
                out.add_(part, alpha=scale)
            col, scale = col + f // 2, scale * f
    return buckets.transpose(2, 3)  # (B, H, R, L)
