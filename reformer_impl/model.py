"""ReformerLM: embeddings with positions, the reversible stack, final norm and LM head."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from reformer_impl.attention.lsh import lsh_layout
from reformer_impl.config import ReformerConfig
from reformer_impl.feedforward import sequence_chunks
from reformer_impl.profiling import LM_HEAD, stage
from reformer_impl.reversible import ReformerStack, StandardStack


def axial_shape(max_seq_len: int) -> tuple[int, int]:
    """Two factors a1 * a2 >= max_seq_len, a2 the power of two nearest sqrt(max_seq_len)."""
    a2 = 2 ** round(math.log2(math.sqrt(max_seq_len))) if max_seq_len > 1 else 1
    return math.ceil(max_seq_len / a2), a2


class AxialPositionalEmbedding(nn.Module):
    """pos i -> E1[i // a2] + E2[i % a2]: O(sqrt L) parameters instead of O(L) (trax, reformer-pytorch)."""

    def __init__(self, max_seq_len: int, d_model: int):
        super().__init__()
        a1, a2 = axial_shape(max_seq_len)
        self.rows = nn.Parameter(torch.randn(a1, d_model) * 0.02)
        self.cols = nn.Parameter(torch.randn(a2, d_model) * 0.02)

    def forward(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, device=self.rows.device)
        a2 = self.cols.shape[0]
        return self.rows[pos // a2] + self.cols[pos % a2]  # (L, d_model)


class AbsolutePositionalEmbedding(nn.Module):
    def __init__(self, max_seq_len: int, d_model: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, d_model)

    def forward(self, length: int) -> torch.Tensor:
        return self.emb.weight[:length]


class ReformerLM(nn.Module):
    """tokens (B, L) -> logits (B, L, vocab_size). The embedding is duplicated into the two
    reversible streams (X1 = X2); the output is their mean (as reformer-pytorch), then norm and head.
    With residual='standard' one stream runs through ordinary residual blocks instead."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        pos_cls = AxialPositionalEmbedding if cfg.pos_emb == "axial" else AbsolutePositionalEmbedding
        self.pos_emb = pos_cls(cfg.max_seq_len, cfg.d_model)
        self.stack = StandardStack(cfg) if cfg.residual == "standard" else ReformerStack(cfg)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds ReformerConfig.max_seq_len={self.cfg.max_seq_len}")
        x = self.token_emb(tokens) + self.pos_emb(length)
        y = self.stack(x)  # two-stream stacks return the mean of their streams
        del x  # the embedding is not needed past the stack: free it before the head's logits
        with stage(LM_HEAD):
            return self.head(self.norm(y))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean cross-entropy over positions where `mask` (bool, (B, L)) is True, or all positions."""
    losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    if mask is None:
        return losses.mean()
    mask = mask.flatten()
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def describe(cfg: ReformerConfig, seq_len: int) -> dict:
    """What a model of `cfg` really runs at `seq_len`: no silent switch can hide behind a label."""
    info = {
        "attention": cfg.attention,
        "reversible": cfg.reversible,
        "residual": cfg.residual,
        "ff_chunks": len(sequence_chunks(seq_len, cfg.ff_chunks)),
        "shared_qk": cfg.shared_qk,
        "seq_len": seq_len,
        "padded_len": seq_len,
        "n_buckets": None, "n_chunks": None, "chunk_len": None, "n_hashes": None,
    }
    if cfg.attention == "lsh":
        info.update(lsh_layout(cfg, seq_len))
        info["same_bucket"], info["dup_correction"] = cfg.same_bucket, cfg.dup_correction
    elif cfg.attention == "local":  # LSH's chunk layout, one position-sorted round, no buckets
        layout = lsh_layout(cfg, seq_len)
        info.update(padded_len=layout["padded_len"], n_chunks=layout["n_chunks"], chunk_len=cfg.chunk_len)
    return info
