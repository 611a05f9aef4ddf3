"""ReformerConfig: the one typed, validated description of a model; its field names are the
project's vocabulary (YAML keys, record columns, plot labels)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

# 'none': the attention branch outputs zeros (a no-attention control: the same model, embeddings,
# feed-forward and head, with nothing mixing positions).
ATTENTION_KINDS = ("full", "sdpa", "lsh", "local", "none")
POS_EMB_KINDS = ("axial", "absolute")
MAX_HASHES = 255  # the per-pair duplicate count (eq. 16) is a uint8 counter: at most 255 rounds
# 'two_stream': RevNet blocks Y1 = X1 + F(X2), Y2 = X2 + G(Y1) (the Reformer's; `reversible` says
# whether the backward recomputes); 'standard': x + F(x) then + G(x), the ordinary Transformer that
# the paper compares reversible layers with (Fig. 5 left).
RESIDUAL_KINDS = ("two_stream", "standard")
# n_buckets = "factorised": the automatic count 2 * padded_len / chunk_len as a product a x b of two
# small rotations (a ~ b ~ its square root), hashing in O(L (a + b)) instead of O(L a b); see
# factor_buckets. An explicit (a, b) (HF's num_buckets=[a, b]) factorises a chosen count.
FACTORISED = "factorised"
# Below this many buckets a product of two rotations saves nothing: "factorised" hashes with one.
MIN_FACTORISED_BUCKETS = 16


@dataclass(frozen=True)
class ReformerConfig:
    d_model: int = 256
    n_heads: int = 4
    # None: d_model // n_heads. An explicit size sets the attention's inner width n_heads * head_size
    # apart from d_model (HF's attention_head_size: google/reformer-crime-and-punishment uses 2 heads
    # of 64 in d_model 256).
    head_size: Optional[int] = None
    d_ff: int = 512
    n_layers: int = 2
    vocab_size: int = 256
    max_seq_len: int = 4096
    attention: str = "lsh"  # 'full' (naive L x L) | 'sdpa' (torch fused) | 'lsh' | 'local' (LSH's chunks by position)
    shared_qk: bool = True
    n_hashes: int = 2
    chunk_len: int = 64
    # None: 2 * padded_len / chunk_len, one rotation, as in the paper; an int: that many, one rotation;
    # (a, b): two rotations of a/2 and b/2 columns, bucket h_a + a * h_b; "factorised": the automatic
    # count as such a product (see FACTORISED). Lists are taken as tuples (YAML has no tuples).
    n_buckets: Union[None, int, tuple[int, int], list[int], Literal["factorised"]] = None
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
    # Shared-QK dense attention ('full', 'sdpa') masks a query's own key unless it has no other
    # (paper sec. 2.2). False drops that mask: the rule a full-attention evaluation of an LSH-trained
    # model may or may not have used (paper Table 2). LSH and local attention always mask.
    self_mask: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.n_buckets, list):  # hashable and equal to the tuple it means
            object.__setattr__(self, "n_buckets", tuple(self.n_buckets))
        validate(self)

    @property
    def d_head(self) -> int:
        return self.head_size if self.head_size is not None else self.d_model // self.n_heads

    @property
    def d_inner(self) -> int:
        """The attention's inner width: queries, keys and values of all heads side by side."""
        return self.n_heads * self.d_head

    def buckets_for(self, padded_len: int) -> int:
        """Bucket count for a padded length: the configured one or 2 * L / chunk_len (even, >= 2);
        for factorised buckets the product a * b."""
        factors = self.bucket_factors(padded_len)
        if factors is not None:
            return factors[0] * factors[1]
        if isinstance(self.n_buckets, int):
            return self.n_buckets
        return max(2, 2 * padded_len // self.chunk_len)

    def bucket_factors(self, padded_len: int) -> Optional[tuple[int, int]]:
        """(a, b) when the hash is a product of two rotations at this padded length, else None."""
        if isinstance(self.n_buckets, tuple):
            return self.n_buckets
        if self.n_buckets == FACTORISED:
            return factor_buckets(max(2, 2 * padded_len // self.chunk_len))
        return None

    def replace(self, **changes) -> "ReformerConfig":
        return dataclasses.replace(self, **changes)


def factor_buckets(n_buckets: int) -> Optional[tuple[int, int]]:
    """Two even factors a <= b with a * b >= n_buckets, a in [sqrt(n)/2, sqrt(n)]: the fewest spare
    buckets, then the most balanced (512 -> (16, 32), 256 -> (16, 16)). None below
    MIN_FACTORISED_BUCKETS, where one rotation is as cheap."""
    if n_buckets < MIN_FACTORISED_BUCKETS:
        return None
    root = math.isqrt(n_buckets)
    best = None
    for a in range(2, root + 1, 2):
        if 2 * a < math.sqrt(n_buckets):
            continue
        b = 2 * math.ceil(n_buckets / (2 * a))
        key = (a * b - n_buckets, b - a)
        if best is None or key < best[0]:
            best = (key, (a, b))
    return best[1]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _refuse(field: str, value, why: str) -> None:
    raise ValueError(f"ReformerConfig.{field}={value!r}: {why}")


def validate(cfg: ReformerConfig) -> None:
    """Refuse an impossible config with a ValueError naming the field and its value."""
    for name in ("d_model", "n_heads", "d_ff", "n_layers", "vocab_size", "max_seq_len"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _refuse(name, value, "must be a positive integer")
    if cfg.head_size is not None and (not _is_int(cfg.head_size) or cfg.head_size < 1):
        _refuse("head_size", cfg.head_size, "must be None or a positive integer")
    if cfg.head_size is None and cfg.d_model % cfg.n_heads:
        _refuse("d_model", cfg.d_model, f"is not divisible by n_heads={cfg.n_heads} (or set head_size)")
    if cfg.attention not in ATTENTION_KINDS:
        _refuse("attention", cfg.attention, f"unknown attention kind; expected one of {ATTENTION_KINDS}")
    if cfg.pos_emb not in POS_EMB_KINDS:
        _refuse("pos_emb", cfg.pos_emb, f"unknown positional embedding; expected one of {POS_EMB_KINDS}")
    if isinstance(cfg.n_hashes, bool) or not isinstance(cfg.n_hashes, int) or cfg.n_hashes < 1:
        _refuse("n_hashes", cfg.n_hashes, "must be an integer >= 1")
    if cfg.n_hashes > MAX_HASHES:
        _refuse("n_hashes", cfg.n_hashes, f"must be <= {MAX_HASHES} (the duplicate counts are kept in uint8)")
    if isinstance(cfg.chunk_len, bool) or not isinstance(cfg.chunk_len, int) or cfg.chunk_len < 1:
        _refuse("chunk_len", cfg.chunk_len, "must be an integer >= 1")
    if isinstance(cfg.ff_chunks, bool) or not isinstance(cfg.ff_chunks, int) or cfg.ff_chunks < 1:
        _refuse("ff_chunks", cfg.ff_chunks, "must be an integer >= 1")
    _validate_buckets(cfg.n_buckets)
    if not isinstance(cfg.dropout, (int, float)) or not 0.0 <= cfg.dropout < 1.0:
        _refuse("dropout", cfg.dropout, "must be in [0, 1)")
    for name in ("shared_qk", "causal", "reversible", "same_bucket", "dup_correction", "self_mask"):
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
    if not cfg.self_mask and not (cfg.shared_qk and cfg.attention in ("full", "sdpa")):
        _refuse("self_mask", cfg.self_mask, "only shared-QK full or sdpa attention can drop the self-mask; "
                "LSH and local attention always mask")
    if cfg.attention == "local" and not cfg.shared_qk:
        _refuse("shared_qk", cfg.shared_qk, "local attention is LSH's windows sorted by position, shared QK; set shared_qk=True")


def _validate_buckets(n_buckets) -> None:
    if n_buckets is None or n_buckets == FACTORISED:
        return
    if isinstance(n_buckets, tuple):
        if len(n_buckets) != 2 or not all(_is_int(f) and f >= 2 and f % 2 == 0 for f in n_buckets):
            _refuse("n_buckets", list(n_buckets), "a factorised count is two even integers [a, b], each >= 2")
        return
    if not _is_int(n_buckets) or n_buckets < 2:
        _refuse("n_buckets", n_buckets, f"must be None, an even integer >= 2, [a, b] or {FACTORISED!r}")
    if n_buckets % 2:
        _refuse("n_buckets", n_buckets, "must be even (angular LSH takes argmax over [xR; -xR])")
