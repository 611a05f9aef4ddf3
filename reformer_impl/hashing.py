"""Angular LSH (paper sec. 2, Andoni et al. 2015): h(x) = argmax([xR ; -xR]) with R ~ N(0, 1)."""
from __future__ import annotations

import torch


def random_rotations(
    n_heads: int, d_head: int, n_hashes: int, n_buckets: int, generator: torch.Generator, device
) -> torch.Tensor:
    """Fresh rotations, one per head and hash round: (n_heads, d_head, n_hashes, n_buckets // 2)."""
    if n_buckets % 2:
        raise ValueError(f"n_buckets={n_buckets} must be even for angular LSH")
    shape = (n_heads, d_head, n_hashes, n_buckets // 2)
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32)


# Rotated projections held at once: (B, H, L, R, n_buckets/2) is quadratic in L with the paper's
# automatic n_buckets = 2 L / chunk_len (4 GiB at L = 65536, 4 heads, 4 rounds), so the hash runs
# a sequence tile at a time in constant memory. 2^21 floats (8 MiB) also stays below glibc's mmap
# threshold, so on CPU the tiles reuse one block instead of page-faulting fresh memory each time.
TILE_ELEMENTS = 1 << 21


@torch.no_grad()
def hash_vectors(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Bucket ids in [0, n_buckets) of x (B, H, L, d_head) per round: (B, H, n_hashes, L).

    Computed in float32 so the argmax does not depend on the activation dtype; no gradient
    flows through the hash. Each tile is one matmul over batch, heads and rounds.
    """
    b, n_heads, length, d_head = x.shape
    _, _, n_hashes, half = rotations.shape
    rotations = rotations.reshape(n_heads, d_head, n_hashes * half)  # rounds contiguous in the last dim
    tile = max(1, TILE_ELEMENTS // (b * n_heads * n_hashes * half))
    buckets = torch.empty(b, n_heads, length, n_hashes, dtype=torch.long, device=x.device)
    for start in range(0, length, tile):
        rotated = torch.matmul(x[:, :, start : start + tile].float(), rotations)
        rotated = rotated.view(b, n_heads, -1, n_hashes, half)
        # argmax over [xR ; -xR] without building it: the larger of max(xR) and -min(xR) wins.
        top, top_idx = rotated.max(dim=-1)
        bottom, bottom_idx = rotated.min(dim=-1)
        buckets[:, :, start : start + tile] = torch.where(top >= -bottom, top_idx, bottom_idx + half)
    return buckets.transpose(2, 3)  # (B, H, R, L)
