"""Mask constants shared by the attention kinds, finite so that fp16/bf16 never produce NaN."""
from __future__ import annotations

import torch

# trax and HF replace a query's logit for itself with -1e5 (not -inf): a position attends to
# itself only when nothing else is allowed (paper, sec. 2 "Shared-QK"). fp16 cannot hold -1e5,
# so, as HF does, half precision uses -1e3 for self and -1e4 for masked keys.
_SELF = {torch.float16: -1e3}
_MASKED = {torch.float16: -1e4}


def self_value(dtype: torch.dtype) -> float:
    return _SELF.get(dtype, -1e5)


def masked_value(dtype: torch.dtype) -> float:
    return _MASKED.get(dtype, -1e9)
