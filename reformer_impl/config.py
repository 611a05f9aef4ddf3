"""ReformerConfig: the one typed, validated description of a model; its field names are the
project's vocabulary (YAML keys, record columns, plot labels)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

ATTENTION_KINDS = ("full", "sdpa", "lsh", "local")
POS_EMB_KINDS = ("axial", "absolute")
# 'two_stream': RevNet blocks Y1 = X1 + F(X2), Y2 = X2 + G(Y1) (the Reformer's; `reversible` says
# whether the backward recomputes); 'standard': x + F(x) then + G(x), the ordinary Transformer that
# the paper compares reversible layers with (Fig. 5 left).
RESIDUAL_KINDS = ("two_stream", "standard")


@dataclass(frozen=True)
class ReformerConfig:
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 512
    n_layers: int = 2
    vocab_size: int = 256
    max_seq_len: int = 4096
    attention: str = "lsh"  # 'full' (naive L x L) | 'sdpa' (torch fused) | 'lsh' | 'local' (LSH's chunks by position)
    shared_qk: bool = True
    n_hashes: int = 2
    chunk_len: int = 64
    n_buckets: Optional[int] = None  # None: 2 * padded_len / chunk_len, as in the paper
    causal: bool = True
    reversible: bool = True
    ff_chunks: int = 1
    dropout: float = 0.0
    # Paper eqs. 4-6: attend only within the same bucket. Off by default, as trax and HF: the
    # window is already bucket-sorted, and extra keys cost nothing and rarely hurt.
    same_bucket: bool = False
    # Paper eq. 16: subtract log N_ij so a key found by several rounds is not over-counted.
    # On by default, as the paper and the paper-era trax configs.
    dup_correction: bool = True
    pos_emb: str = "axial"
    hash_seed: Optional[int] = None  # None: drawn from torch's global RNG when the layer is built
    residual: str = "two_stream"  # see RESIDUAL_KINDS

    def __post_init__(self) -> None:
        validate(self)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def buckets_for(self, padded_len: int) -> int:
        """Bucket count for a padded length: the configured one or 2 * L / chunk_len (even, >= 2)."""
        if self.n_buckets is not None:
            return self.n_buckets
        return max(2, 2 * padded_len // self.chunk_len)

    def replace(self, **changes) -> "ReformerConfig":
        return dataclasses.replace(self, **changes)


def _refuse(field: str, value, why: str) -> None:
    raise ValueError(f"ReformerConfig.{field}={value!r}: {why}")


def validate(cfg: ReformerConfig) -> None:
    """Refuse an impossible config with a ValueError naming the field and its value."""
    for name in ("d_model", "n_heads", "d_ff", "n_layers", "vocab_size", "max_seq_len"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _refuse(name, value, "must be a positive integer")
    if cfg.d_model % cfg.n_heads:
        _refuse("d_model", cfg.d_model, f"is not divisible by n_heads={cfg.n_heads}")
    if cfg.attention not in ATTENTION_KINDS:
        _refuse("attention", cfg.attention, f"unknown attention kind; expected one of {ATTENTION_KINDS}")
    if cfg.pos_emb not in POS_EMB_KINDS:
        _refuse("pos_emb", cfg.pos_emb, f"unknown positional embedding; expected one of {POS_EMB_KINDS}")
    if isinstance(cfg.n_hashes, bool) or not isinstance(cfg.n_hashes, int) or cfg.n_hashes < 1:
        _refuse("n_hashes", cfg.n_hashes, "must be an integer >= 1")
    if isinstance(cfg.chunk_len, bool) or not isinstance(cfg.chunk_len, int) or cfg.chunk_len < 1:
        _refuse("chunk_len", cfg.chunk_len, "must be an integer >= 1")
    if isinstance(cfg.ff_chunks, bool) or not isinstance(cfg.ff_chunks, int) or cfg.ff_chunks < 1:
        _refuse("ff_chunks", cfg.ff_chunks, "must be an integer >= 1")
    if cfg.n_buckets is not None:
        if isinstance(cfg.n_buckets, bool) or not isinstance(cfg.n_buckets, int) or cfg.n_buckets < 2:
            _refuse("n_buckets", cfg.n_buckets, "must be None or an even integer >= 2")
        if cfg.n_buckets % 2:
            _refuse("n_buckets", cfg.n_buckets, "must be even (angular LSH takes argmax over [xR; -xR])")
    if not isinstance(cfg.dropout, (int, float)) or not 0.0 <= cfg.dropout < 1.0:
        _refuse("dropout", cfg.dropout, "must be in [0, 1)")
    for name in ("shared_qk", "causal", "reversible", "same_bucket", "dup_correction"):
        if not isinstance(getattr(cfg, name), bool):
            _refuse(name, getattr(cfg, name), "must be true or false")
    if cfg.hash_seed is not None and (
        isinstance(cfg.hash_seed, bool) or not isinstance(cfg.hash_seed, int) or not 0 <= cfg.hash_seed < 2**63
    ):  # torch.Generator.manual_seed takes a 64-bit seed; refused here, not at build or run time
        _refuse("hash_seed", cfg.hash_seed, "must be None or an integer in [0, 2**63)")
    if cfg.residual not in RESIDUAL_KINDS:
        _refuse("residual", cfg.residual, f"unknown residual structure; expected one of {RESIDUAL_KINDS}")
    if cfg.residual == "standard" and cfg.reversible:
        _refuse("reversible", cfg.reversible, "ordinary residual layers (residual='standard') cannot be inverted; "
                "set reversible=False, or residual='two_stream'")
    if cfg.attention == "lsh" and not cfg.shared_qk:
        _refuse("shared_qk", cfg.shared_qk, "LSH attention hashes one shared query/key projection; set shared_qk=True")
    if cfg.attention == "local" and not cfg.shared_qk:
        _refuse("shared_qk", cfg.shared_qk, "local attention is LSH's windows sorted by position, shared QK; set shared_qk=True")
