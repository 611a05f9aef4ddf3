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


@torch.no_grad()
def hash_vectors(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Bucket ids in [0, n_buckets) of x (B, H, L, d_head) per round: (B, H, n_hashes, L).

    Computed in float32 so the argmax does not depend on the activation dtype; no gradient
    flows through the hash.
    """
    b, n_heads, length, d_head = x.shape
    _, _, n_hashes, half = rotations.shape
    # (B, H, L, d) @ (H, d, R * n_buckets/2): one matmul per head, rounds contiguous in the last dim
    rotated = torch.matmul(x.float(), rotations.reshape(n_heads, d_head, n_hashes * half))
    rotated = rotated.view(b, n_heads, length, n_hashes, half)
    # argmax over [xR ; -xR] without building it: the larger of max(xR) and -min(xR) wins.
    top, top_idx = rotated.max(dim=-1)
    bottom, bottom_idx = rotated.min(dim=-1)
    return torch.where(top >= -bottom, top_idx, bottom_idx + half).transpose(2, 3)  # (B, H, R, L)
