"""Analytic FLOP and parameter counts against hand arithmetic and against the real modules."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import flops as fl

BASE = {"workload": "attention", "impl": "ours", "dtype": "float32", "batch_size": 1, "d_model": 16, "n_heads": 2}


def test_full_attention_by_hand():
    # L = 64, d = 16 (2 heads of 8), one layer, shared QK (3 projections).
    p = {**BASE, "seq_len": 64, "attention": "full", "shared_qk": True}
    proj = 3 * 2 * 64 * 16 * 16  # q/k, v, out: 2 * L * d * d each
    scores = 2 * 2 * 64 * 64 * 8  # QK^T: 2 heads * L * L * d_head * 2
    values = 2 * 2 * 64 * 64 * 8  # PV
    count = fl.flop_count(p)
    assert count.forward == {"projections": proj, "attention": scores + values, "hashing": 0.0}
    assert count.total == 3 * (proj + scores + values)  # backward: 2x every product


def test_sdpa_causal_kernel_counts_the_lower_triangle():
    p = {**BASE, "seq_len": 64, "attention": "sdpa", "shared_qk": False, "causal": True}
    assert fl.flop_count(p).forward["attention"] == (2 * 2 * 64 * 64 * 8) * 2 / 2
    assert fl.flop_count(p).forward["projections"] == 4 * 2 * 64 * 16 * 16  # q, k, v, out
    masked = {**p, "shared_qk": True}  # an explicit L x L mask: the dense kernel runs every block
    assert fl.flop_count(masked).forward["attention"] == 2 * 2 * 2 * 64 * 64 * 8


def test_lsh_attention_by_hand():
    # L = 128, chunk 32, 2 rounds, n_buckets = 2 * 128 / 32 = 8.
    p = {**BASE, "seq_len": 128, "attention": "lsh", "chunk_len": 32, "n_hashes": 2}
    window = 2 * 32
    per_head_round = 2 * (128 * window * 8 * 2)  # QK^T and PV: every query against 64 keys of 8 dims
    hashing = 2 * 2 * (128 * 8 * (8 // 2) * 2)  # 2 heads, 2 rounds: (L x d_head) @ (d_head x n_buckets/2)
    count = fl.flop_count(p)
    assert count.forward["attention"] == per_head_round * 2 * 2
    assert count.forward["hashing"] == hashing
    assert "hashing" not in count.backward  # the hash is not differentiated
    assert count.total == 3 * (count.forward["projections"] + per_head_round * 4) + hashing


def test_local_attention_counts_padded_chunks_by_hand():
    p = {**BASE, "seq_len": 100, "attention": "local", "chunk_len": 32}  # padded to 128
    assert fl.flop_count(p).forward == {"projections": 3 * 2 * 100 * 16 * 16,
                                        "attention": 2 * 2 * (128 * 64 * 8 * 2), "hashing": 0.0}


def test_model_counts_layers_head_and_recomputation():
    p = {**BASE, "workload": "model", "seq_len": 64, "attention": "full", "d_ff": 32, "n_layers": 2,
         "vocab_size": 50, "reversible": True, "ff_chunks": 1}
    layer = fl.attention_forward(p)
    ff = 2 * 2 * 64 * 16 * 32
    head = 2 * 64 * 16 * 50
    fwd = 2 * (layer["projections"] + layer["attention"] + ff) + head
    count = fl.flop_count(p)
    assert count.total == 3 * fwd + fwd - head  # reversible: every layer's forward once more
    assert fl.flop_count({**p, "reversible": False}).total == 3 * fwd


def _counted(point) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from bench.measure_point import flat_params
    from bench.workloads import build_workload

    workload = build_workload(point)
    with FlopCounterMode(display=False) as counter:
        workload.backward(workload.forward())
    return counter.get_total_flops(), fl.flop_count(flat_params(point), workload.effective()).total


@pytest.mark.parametrize("workload,model", [
    ("attention", {"attention": "full"}),
    ("model", {"attention": "full", "reversible": False}),
    ("model", {"attention": "full", "reversible": False, "ff_chunks": 2}),
])
def test_matches_torch_flop_counter(one_torch_thread, workload, model):
    from bench.point import GridPoint

    point = GridPoint(suite="t", workload=workload, device="cpu", dtype="float32", batch_size=1, seq_len=64,
                      model={"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 2, "vocab_size": 50, **model})
    counted, analytic = _counted(point)
    assert counted == analytic


@pytest.mark.parametrize("model", [
    {"workload": "model", "attention": "lsh", "pos_emb": "axial", "max_seq_len": 512},
    {"workload": "model", "attention": "sdpa", "shared_qk": False, "pos_emb": "absolute", "max_seq_len": 300},
    {"workload": "attention", "attention": "full", "shared_qk": False},
])
def test_param_count_equals_the_modules(model):
    from reformer_impl import ReformerConfig, ReformerLM, build_attention

    fields = {f.name for f in dataclasses.fields(ReformerConfig)}
    params = {"batch_size": 1, "seq_len": 64, "d_model": 32, "n_heads": 4, "d_ff": 48, "n_layers": 3,
              "vocab_size": 70, **model}
    cfg = ReformerConfig(**{k: v for k, v in params.items() if k in fields})
    module = build_attention(cfg) if params["workload"] == "attention" else ReformerLM(cfg)
    assert fl.param_count(params) == sum(p.numel() for p in module.parameters())


def test_defaults_and_axial_shape_follow_reformer_impl():
    from reformer_impl import ReformerConfig
    from reformer_impl.model import axial_shape

    defaults = ReformerConfig()
    for key, value in fl.DEFAULTS.items():
        assert getattr(defaults, key) == value, key
    for n in (1, 2, 100, 4096, 65536):
        assert fl.axial_shape(n) == axial_shape(n)


def test_state_and_input_bytes():
    p = {**BASE, "workload": "model", "seq_len": 64, "attention": "full", "d_ff": 32, "n_layers": 1, "vocab_size": 50}
    assert fl.state_bytes(p, 1000) == 1000 * 4 * 4  # weights, grads, two AdamW moments, fp32
    assert fl.state_bytes({**p, "workload": "attention"}, 1000) == 1000 * 2 * 4
    assert fl.input_bytes(p) == 2 * 64 * 8  # int64 tokens and targets
    assert fl.input_bytes({**p, "workload": "attention"}) == 3 * 64 * 16 * 4


def test_missing_field_is_named():
    with pytest.raises(ValueError, match="d_model"):
        fl.flop_count({"workload": "attention", "attention": "full", "batch_size": 1, "seq_len": 8})
    with pytest.raises(ValueError, match="attention='bogus'"):
        fl.flop_count({**BASE, "seq_len": 8, "attention": "bogus"})


def test_factorised_buckets_hash_with_a_half_plus_b_half_columns_per_round():
    """Two rotations of a/2 and b/2 columns: the hash costs (a + b) / 2 columns, not a * b / 2."""
    params = {"workload": "attention", "attention": "lsh", "batch_size": 1, "seq_len": 4096, "d_model": 256,
              "n_heads": 4, "n_hashes": 2, "chunk_len": 64, "causal": True, "shared_qk": True}
    plain = fl.attention_forward(params)["hashing"]
    # 128 buckets, one rotation of 64 columns: 2 * b * l * d * rounds * 64.
    assert plain == 2.0 * 4096 * 256 * 2 * 64
    listed = fl.attention_forward({**params, "n_buckets": [8, 16]})["hashing"]
    assert listed == 2.0 * 4096 * 256 * 2 * (8 + 16) / 2
    described = fl.attention_forward({**params, "n_buckets": "factorised"},
                                        {"n_buckets": 128, "bucket_factors": [8, 16]})["hashing"]
    assert described == listed
    auto = fl.attention_forward({**params, "n_buckets": "factorised"})["hashing"]
    assert auto < plain  # the factorisation rule of reformer_impl's config, without torch


def test_a_peer_that_factorises_its_buckets_is_counted_with_its_own_factors():
    """HF's layer reports num_buckets as [a, b] at long lengths: counted as two rotations, no crash."""
    params = {"workload": "attention", "attention": "lsh", "impl": "hf", "batch_size": 1, "seq_len": 16384,
              "d_model": 256, "n_heads": 4, "n_hashes": 1, "chunk_len": 64, "causal": True, "shared_qk": True}
    hashing = fl.attention_forward(params, {"n_buckets": [16, 32]})["hashing"]
    assert hashing == 2.0 * 16384 * 256 * 1 * (16 + 32) / 2
