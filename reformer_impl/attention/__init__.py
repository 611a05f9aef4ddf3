"""One module per attention kind behind one call signature (B, L, d_model) -> (B, L, d_model)."""
from __future__ import annotations

from reformer_impl.attention.base import Attention
from reformer_impl.attention.full import FullAttention
from reformer_impl.attention.local import LocalAttention
from reformer_impl.attention.lsh import LSHAttention
from reformer_impl.attention.none import NoAttention
from reformer_impl.attention.sdpa import SDPAAttention
from reformer_impl.config import ReformerConfig

_KINDS = {"full": FullAttention, "sdpa": SDPAAttention, "lsh": LSHAttention, "local": LocalAttention, "none": NoAttention}


def build_attention(cfg: ReformerConfig) -> Attention | NoAttention:
    """The attention layer `cfg.attention` names."""
    return _KINDS[cfg.attention](cfg)


__all__ = ["Attention", "FullAttention", "LSHAttention", "LocalAttention", "NoAttention", "SDPAAttention", "build_attention"]
