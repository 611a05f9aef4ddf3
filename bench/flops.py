"""Analytic FLOPs and parameter counts of a point, from its params alone (the Table 3 time term made
concrete). Pure: no torch, no I/O.

Counted: matrix products only (a multiply-add is 2 FLOPs), by stage and per layer and hash round.
Forward: projections (q/k shared or not, v, out), attention (full: QK^T and PV over L x L; LSH and
local: over each chunk's window of 2 * chunk_len keys, per round), hashing (the rotation matmul
into n_buckets / 2 directions, n_buckets = 2 * L_padded / chunk_len by default: O(L^2 / c)),
feed-forward (two d_model x d_ff products) and the LM head. Backward: 2x the forward of every
differentiable product (the input and the weight gradient); hashing has none. Reversible layers
recompute attention and feed-forward (not the hash: buckets are replayed) in the backward; a
checkpointed feed-forward chunk (ff_chunks > 1, not reversible) recomputes its first product (torch's
non-reentrant checkpoint stops there). Left out: softmax, norms, masks, sorting, gathers and the
optimizer (linear in parameters). LSH and local attention count each query's 2 * chunk_len keys, the
algorithm's work; our kernel also runs the windows of each round's repeated look-back chunk, (C + 1) / C
of it for C chunks per round, which the count leaves out.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from bench.loader import reformer_config_class

# ReformerConfig's defaults for fields a canonical point drops (tests check they still agree).
DEFAULTS = {"shared_qk": True, "n_hashes": 2, "chunk_len": 64, "n_buckets": None, "causal": True,
            "reversible": True, "ff_chunks": 1, "pos_emb": "axial", "max_seq_len": 4096,
            "residual": "two_stream", "vocab_size": 256, "n_layers": 2, "d_ff": 512}
STAGES = ("projections", "attention", "hashing", "feed_forward", "lm_head")


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward + backward by stage: `forward`, `backward` (gradients) and `recompute`
    (forwards run again in the backward), each {stage: FLOPs} summed over layers and rounds."""

    forward: Mapping[str, float]
    backward: Mapping[str, float]
    recompute: Mapping[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.forward.values()) + sum(self.backward.values()) + sum(self.recompute.values())

    def by_stage(self) -> dict[str, float]:
        """forward + backward + recompute per stage."""
        out = {s: 0.0 for s in STAGES}
        for part in (self.forward, self.backward, self.recompute):
            for k, v in part.items():
                out[k] = out.get(k, 0.0) + v
        return {k: v for k, v in out.items() if v}


def _get(params: Mapping[str, Any], key: str) -> Any:
    value = params.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if key not in DEFAULTS:
            raise ValueError(f"params[{key!r}] is missing; the FLOP count needs it")
        return DEFAULTS[key]
    return value


def inner_width(params: Mapping[str, Any]) -> int:
    """The attention's inner width n_heads * head_size (d_model when head_size is not set)."""
    head_size = params.get("head_size")
    if head_size is None or (isinstance(head_size, float) and math.isnan(head_size)):
        return int(_get(params, "d_model"))
    return int(_get(params, "n_heads")) * int(head_size)


def padded(length: int, chunk_len: int) -> int:
    return math.ceil(length / chunk_len) * chunk_len


def attention_forward(params: Mapping[str, Any], effective: Optional[Mapping[str, Any]] = None) -> dict[str, float]:
    """One attention layer's forward FLOPs: projections, attention core and hashing."""
    eff = effective or {}
    b, length = int(_get(params, "batch_size")), int(_get(params, "seq_len"))
    d_model, d = int(_get(params, "d_model")), inner_width(params)  # d: every head's width together
    kind = str(eff.get("attention") or _get(params, "attention"))
    shared = bool(_get(params, "shared_qk")) if params.get("impl", "ours") == "ours" else True
    if kind == "none":  # the no-attention control computes nothing
        return {"projections": 0.0, "attention": 0.0, "hashing": 0.0}
    out = {"projections": 2.0 * b * length * d_model * d * (3 if shared else 4)}
    if kind in ("full", "sdpa"):
        dense = 4.0 * b * length * length * d  # QK^T and PV, every head: 2 * 2 * b * h * l^2 * d_head
        # SDPA with is_causal (no explicit mask) runs a kernel that skips the blocks above the diagonal.
        skips = kind == "sdpa" and not shared and bool(_get(params, "causal"))
        out["attention"] = dense / 2 if skips else dense
        out["hashing"] = 0.0
        return out
    if kind not in ("lsh", "local"):
        raise ValueError(f"attention={kind!r}: no FLOP count for this attention kind")
    chunk = int(eff.get("chunk_len") or _get(params, "chunk_len"))
    rounds = 1 if kind == "local" else int(eff.get("n_hashes") or _get(params, "n_hashes"))
    lp = int(eff.get("padded_len") or padded(length, chunk))
    # Each of lp queries per round sees 2 * chunk keys: QK^T and PV, 2 * 2 * b * lp * 2c * d.
    out["attention"] = 8.0 * b * rounds * lp * chunk * d
    if kind == "local":
        out["hashing"] = 0.0
        return out
    # (b, h, l, d_head) x (d_head, rounds * columns) per head: 2 * b * l * d * rounds * columns, with
    # n_buckets / 2 columns for one rotation and a / 2 + b / 2 for factorised buckets (a, b).
    out["hashing"] = 2.0 * b * length * d * rounds * hash_columns(params, eff, lp, chunk)
    return out


def hash_columns(params: Mapping[str, Any], eff: Mapping[str, Any], padded_len: int, chunk: int) -> float:
    """Rotation columns per round and head: n_buckets / 2, or (a + b) / 2 for factorised buckets."""
    factors = eff.get("bucket_factors")
    configured = params.get("n_buckets")
    for given in (eff.get("n_buckets"), configured):  # a peer's own (a, b) list, e.g. HF's at long lengths
        if factors is None and isinstance(given, (list, tuple)):
            factors = given
    if factors is None and configured == "factorised":
        factors = _config_module().factor_buckets(max(2, 2 * padded_len // chunk))
    if factors:
        return (int(factors[0]) + int(factors[1])) / 2
    described = eff.get("n_buckets")
    n_buckets = described if isinstance(described, int) else (configured if isinstance(configured, int) else None)
    return int(n_buckets or max(2, 2 * padded_len // chunk)) / 2


def _config_module() -> Any:
    """reformer_impl's config module (torch-free), for its bucket factorisation rule."""
    return sys.modules[reformer_config_class().__module__]


def flop_count(params: Mapping[str, Any], effective: Optional[Mapping[str, Any]] = None) -> FlopCount:
    """The FLOPs of one forward + backward of the point (attention layer alone, or the whole model)."""
    layer = attention_forward(params, effective)
    hashing = layer.pop("hashing")
    if params.get("workload") == "attention":
        fwd = {**layer, "hashing": hashing}
        return FlopCount(forward=fwd, backward={k: 2 * v for k, v in layer.items()})
    if params.get("workload") not in ("model", "train_step"):
        raise ValueError(f"workload={params.get('workload')!r}: FLOPs are counted for attention and model")
    b, length, d = int(_get(params, "batch_size")), int(_get(params, "seq_len")), int(_get(params, "d_model"))
    n_l, d_ff, vocab = int(_get(params, "n_layers")), int(_get(params, "d_ff")), int(_get(params, "vocab_size"))
    ff = 4.0 * b * length * d * d_ff
    per_layer = {**layer, "feed_forward": ff}
    fwd = {k: v * n_l for k, v in per_layer.items()}
    fwd["hashing"] = hashing * n_l
    fwd["lm_head"] = 2.0 * b * length * d * vocab
    bwd = {k: 2 * v for k, v in fwd.items() if k != "hashing"}
    reversible = bool(_get(params, "reversible")) and _get(params, "residual") == "two_stream"
    if reversible:
        recompute = {k: v * n_l for k, v in per_layer.items()}
    elif int(_get(params, "ff_chunks")) > 1:  # the checkpoint stops once w2's input is rebuilt: w1 only
        recompute = {"feed_forward": ff / 2 * n_l}
    else:
        recompute = {}
    return FlopCount(forward=fwd, backward=bwd, recompute=recompute)


# --------------------------------------------------------------------------- parameters and bytes


def axial_shape(max_seq_len: int) -> tuple[int, int]:
    """reformer_impl.model.axial_shape, repeated here torch-free (a test keeps them equal)."""
    a2 = 2 ** round(math.log2(math.sqrt(max_seq_len))) if max_seq_len > 1 else 1
    return math.ceil(max_seq_len / a2), a2


def attention_params(params: Mapping[str, Any]) -> int:
    if params.get("attention") == "none":
        return 0
    d, inner = int(_get(params, "d_model")), inner_width(params)
    shared = bool(_get(params, "shared_qk"))
    return (3 if shared else 4) * d * inner + d  # qk (or q, k), v, out weights; out bias


def layer_params(params: Mapping[str, Any]) -> int:
    """One block: attention with its norm, feed-forward with its norm."""
    d, d_ff = int(_get(params, "d_model")), int(_get(params, "d_ff"))
    return 2 * d + attention_params(params) + 2 * d + d * d_ff + d_ff + d_ff * d + d


def param_count(params: Mapping[str, Any]) -> int:
    """Parameters of our point's module (the attention layer, or the ReformerLM), from its config."""
    if params.get("workload") == "attention":
        return attention_params(params)
    d, vocab = int(_get(params, "d_model")), int(_get(params, "vocab_size"))
    max_len = int(_get(params, "max_seq_len"))
    pos = sum(axial_shape(max_len)) * d if _get(params, "pos_emb") == "axial" else max_len * d
    return vocab * d + pos + int(_get(params, "n_layers")) * layer_params(params) + 2 * d + d * vocab + vocab


DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def state_bytes(params: Mapping[str, Any], n_params: Optional[int] = None) -> float:
    """Bytes of the weights, their gradients and (model workload) AdamW's two moments: 4 copies of
    every parameter in the model's dtype, 2 for the attention layer alone (no optimizer)."""
    n = param_count(params) if n_params is None else int(n_params)
    copies = 2 if params.get("workload") == "attention" else 4
    return float(n * copies * DTYPE_BYTES.get(str(params.get("dtype") or "float32"), 4))


def input_bytes(params: Mapping[str, Any]) -> float:
    """Bytes of the inputs a step holds: tokens and targets (int64) for the model; for the
    attention layer the input, its gradient and the output gradient (B, L, d_model) each."""
    b, length = int(_get(params, "batch_size")), int(_get(params, "seq_len"))
    if params.get("workload") == "attention":
        size = DTYPE_BYTES.get(str(params.get("dtype") or "float32"), 4)
        return float(3 * b * length * int(_get(params, "d_model")) * size)
    return float(2 * b * length * 8)
