"""Table 3 rows and terms, and the log-log exponent fit."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.complexity import (
    Dims, ROWS, dims_for, fit_loglog, fit_offset_power, fit_tail, is_power_law_axis, pick_row, predicted_exponent,
    table3_terms, tail_mask,
)

MODEL = {"workload": "model", "batch_size": 2, "seq_len": 1024, "d_model": 64, "d_ff": 256,
         "n_heads": 4, "n_layers": 6, "n_hashes": 4, "chunk_len": 32, "reversible": False, "ff_chunks": 1}


def params(**changes):
    return {**MODEL, "attention": "lsh", **changes}


@pytest.mark.parametrize(
    "attention, reversible, chunked, row",
    [
        ("full", False, False, "Transformer"),
        ("sdpa", False, True, "Transformer"),
        ("full", True, False, "Reversible Transformer"),
        ("full", True, True, "Chunked Reversible Transformer"),
        ("lsh", False, False, "LSH Transformer"),
        ("lsh", False, True, "LSH Transformer"),
        ("lsh", True, True, "Reformer"),
        ("lsh", True, False, "Reversible LSH Transformer"),
    ],
)
def test_pick_row(attention, reversible, chunked, row):
    assert pick_row(attention, reversible, chunked).name == row


def test_only_the_derived_row_is_marked_not_in_paper():
    assert [name for name, row in ROWS.items() if not row.in_paper] == ["Reversible LSH Transformer"]


def test_unknown_attention_is_refused_by_name():
    with pytest.raises(ValueError, match="attention='local'"):
        pick_row("local", False, False)


B, L, D_MODEL, D_FF, N_H, N_L, N_R, C = 2, 1024, 64, 256, 4, 6, 4, 64  # c = 2 * chunk_len
LSH_TERM = B * N_H * N_R * L * C
FULL_TERM = B * N_H * L**2
FULL = {"n_hashes": None, "chunk_len": None}


@pytest.mark.parametrize(
    "changes, row, memory, time",
    [
        ({"attention": "full", **FULL}, "Transformer",
         max(B * L * D_FF, FULL_TERM) * N_L, (B * L * D_FF + FULL_TERM) * N_L),
        ({"attention": "full", "reversible": True, **FULL}, "Reversible Transformer",
         max(B * L * D_FF, FULL_TERM), (B * N_H * L * D_FF + FULL_TERM) * N_L),  # the paper's n_h, as printed
        ({"attention": "full", "reversible": True, "ff_chunks": 4, **FULL}, "Chunked Reversible Transformer",
         max(B * L * D_MODEL, FULL_TERM), (B * N_H * L * D_FF + FULL_TERM) * N_L),
        ({}, "LSH Transformer", max(B * L * D_FF, LSH_TERM) * N_L, (B * L * D_FF + LSH_TERM) * N_L),
        ({"reversible": True, "ff_chunks": 4}, "Reformer",
         max(B * L * D_MODEL, LSH_TERM), (B * L * D_FF + LSH_TERM) * N_L),
        ({"reversible": True}, "Reversible LSH Transformer",
         max(B * L * D_FF, LSH_TERM), (B * L * D_FF + LSH_TERM) * N_L),
    ],
)
def test_terms_by_hand(changes, row, memory, time):
    """Every row's memory and time term, written out from Table 3 (the chunked reversible one too)."""
    terms = table3_terms(params(**changes))
    assert (terms.row, terms.memory, terms.time) == (row, memory, time)


def test_chunked_rows_drop_d_ff_from_memory():
    """With d_ff far above the attention term, only the chunked rows lose it."""
    wide = {"d_ff": 2**20, "seq_len": 256}
    chunked = table3_terms(params(attention="full", reversible=True, ff_chunks=4, **FULL, **wide))
    plain = table3_terms(params(attention="full", reversible=True, **FULL, **wide))
    assert plain.memory == B * 256 * 2**20 and chunked.memory == max(B * 256 * D_MODEL, B * N_H * 256**2)


def test_attention_workload_is_one_layer_without_feed_forward():
    p = {"workload": "attention", "attention": "full", "batch_size": 1, "seq_len": 8, "d_model": 16,
         "n_heads": 2, "d_ff": None, "n_layers": None, "reversible": None, "ff_chunks": None}
    dims, row = dims_for(p)
    assert row.name == "Transformer"
    assert dims == Dims(b=1, l=8, d_model=16, d_ff=16, n_h=2, n_l=1, n_r=1, c=0)
    assert table3_terms(p).memory == max(1 * 8 * 16, 1 * 2 * 64)


def test_lsh_without_chunk_len_is_refused():
    with pytest.raises(ValueError, match="chunk_len"):
        table3_terms(params(chunk_len=None))


def test_missing_field_is_named():
    p = params()
    del p["n_heads"]
    with pytest.raises(ValueError, match="n_heads"):
        table3_terms(p)


def test_fit_recovers_a_power_law():
    x = [2, 4, 8, 16, 32]
    fit = fit_loglog(x, [3 * v**2 for v in x])
    assert fit.slope == pytest.approx(2.0)
    assert math.exp(fit.intercept) == pytest.approx(3.0)
    assert fit.r2 == pytest.approx(1.0) and fit.n == 5


def test_fit_r2_drops_with_noise_and_flat_series_fit_zero():
    rng = np.random.default_rng(0)
    x = np.array([1, 2, 4, 8, 16, 32], dtype=float)
    noisy = fit_loglog(x, x * np.exp(rng.normal(0, 0.5, x.size)))
    assert 0 < noisy.r2 < 1
    flat = fit_loglog(x, np.full(x.size, 7.0))
    assert flat.slope == pytest.approx(0.0, abs=1e-12) and flat.r2 == 1.0


def test_two_points_have_no_r2():
    fit = fit_loglog([2, 4], [3, 7])
    assert fit.n == 2 and fit.r2 is None


def test_tail_fit_uses_the_largest_sizes_where_the_leading_term_dominates():
    """a + b*x^2: the all-points slope is dragged down by the constant, the tail's is close to 2."""
    x = [256, 512, 1024, 2048, 4096, 8192]
    y = [5e5 + v**2 for v in x]
    assert fit_loglog(x, y).slope < 1.6
    tail = fit_tail(x, y)
    assert tail.n == 3 and (tail.x_min, tail.x_max) == (2048, 8192)
    assert tail.slope == pytest.approx(2.0, abs=0.15) and tail.r2 > 0.99
    assert list(tail_mask(x)) == [False, False, False, True, True, True]
    assert list(tail_mask(list(range(1, 10)))) == [False] * 4 + [True] * 5  # upper half, rounded up
    assert fit_tail([1, 2], [1, 4]).n == 2  # fewer than three: all of them


def test_offset_power_fit_recovers_the_exponent_past_a_constant():
    x = [1, 2, 4, 8, 16]
    assert fit_offset_power(x, [8 + 4 * v for v in x]) == pytest.approx(1.0, abs=0.02)
    assert fit_offset_power(x, [100 + 0.5 * v**2 for v in x]) == pytest.approx(2.0, abs=0.05)
    assert fit_offset_power([1, 2, 4], [1, 2, 4]) is None  # three parameters need four sizes


def test_fit_drops_non_positive_points_and_needs_two_x():
    fit = fit_loglog([1, 2, 4, 0], [1, 2, 4, 5])
    assert fit.n == 3 and fit.slope == pytest.approx(1.0)
    with pytest.raises(ValueError, match="distinct positive x"):
        fit_loglog([4, 4], [1, 2])
    with pytest.raises(ValueError, match="x has 2 values, y has 1"):
        fit_loglog([1, 2], [1])


def test_predicted_exponents_match_the_paper_claims():
    lengths = [1024, 2048, 4096, 8192]
    full = [params(attention="full", seq_len=l) for l in lengths]
    lsh = [params(seq_len=l) for l in lengths]
    assert predicted_exponent(full, "seq_len", "memory") == pytest.approx(2.0)
    assert predicted_exponent(lsh, "seq_len", "memory") == pytest.approx(1.0)
    depth = [1, 2, 4, 8]
    plain = [params(n_layers=n) for n in depth]
    rev = [params(n_layers=n, reversible=True, ff_chunks=4) for n in depth]
    assert predicted_exponent(plain, "n_layers", "memory") == pytest.approx(1.0)
    assert predicted_exponent(rev, "n_layers", "memory") == pytest.approx(0.0)
    assert predicted_exponent(rev, "n_layers", "time") == pytest.approx(1.0)


def test_fixed_tokens_time_is_flat_for_lsh_and_linear_for_full():
    """Paper Fig. 5 right: batch_size * seq_len fixed; full attention slows with length, LSH does not."""
    tokens = 2**15
    full = [params(attention="full", seq_len=l, batch_size=tokens // l) for l in (1024, 2048, 4096)]
    lsh = [params(seq_len=l, batch_size=tokens // l) for l in (1024, 2048, 4096)]
    assert predicted_exponent(lsh, "seq_len", "time") == pytest.approx(0.0, abs=1e-12)
    assert 0.5 < predicted_exponent(full, "seq_len", "time") <= 1.0


def test_predicted_exponent_refuses_unknown_term():
    with pytest.raises(ValueError, match="term='speed'"):
        predicted_exponent([params()], "seq_len", "speed")


@pytest.mark.parametrize(
    "values, ok",
    [([1, 2, 4], True), ([np.int64(8), np.int64(16)], True), ([True, False], False),
     ([1, 1], False), ([0, 2], False), (["a", "b"], False), ([1.5, float("nan")], False)],
)
def test_is_power_law_axis(values, ok):
    assert is_power_law_axis(values) is ok
