"""Table 3's memory term solved for the longest length under a budget."""
from __future__ import annotations

import pytest

from bench.capacity.predict import predict_longest, predicted_bytes

FULL = {"attention": "full", "reversible": False, "ff_chunks": 1, "dtype": "float32", "batch_size": 1,
        "seq_len": 1024, "d_model": 32, "d_ff": 64, "n_heads": 2, "n_layers": 2}
LSH = {**FULL, "attention": "lsh", "n_hashes": 2, "chunk_len": 64}


def test_bytes_by_hand():
    # Transformer row: max(b l d_ff, b n_h l^2) n_l = 2 * 1024^2 * 2 elements, 4 bytes each;
    # 1000 params x 4 copies x 4 bytes; 1024 tokens x 16 bytes of int64 tokens and targets; 1 MiB overhead.
    total, row = predicted_bytes(FULL, n_params=1000, overhead_bytes=2**20)
    assert row == "Transformer"
    assert total == 4 * 2 * 1024**2 * 2 + 16 * 1000 + 16 * 1024 + 2**20


@pytest.mark.parametrize("params", [FULL, LSH, {**LSH, "reversible": True, "ff_chunks": 8}])
def test_longest_is_the_last_multiple_under_the_budget(params):
    budget = 300 * 2**20
    pred = predict_longest(params, "seq_len", budget, n_params=5000, overhead_bytes=2**20, multiple=64)
    assert pred.value % 64 == 0
    assert predicted_bytes({**params, "seq_len": pred.value}, 5000, 2**20)[0] <= budget
    assert predicted_bytes({**params, "seq_len": pred.value + 64}, 5000, 2**20)[0] > budget
    assert pred.bytes_at_value == predicted_bytes({**params, "seq_len": pred.value}, 5000, 2**20)[0]


def test_quadratic_full_attention_gains_half_what_linear_lsh_gains():
    # Without weights or overhead, 16x the budget buys full attention (l^2) 4x the length, LSH (l) 16x.
    small, big = 2**24, 2**28
    full = [predict_longest(FULL, "seq_len", b, 0, 0, 1).value for b in (small, big)]
    lsh = [predict_longest(LSH, "seq_len", b, 0, 0, 1).value for b in (small, big)]
    assert full[1] / full[0] == pytest.approx(4, rel=0.01)
    assert lsh[1] / lsh[0] == pytest.approx(16, rel=0.01)


def test_batch_search_and_nothing_fits():
    pred = predict_longest(FULL, "batch_size", 2**30, n_params=0)
    one = predicted_bytes(FULL, 0)[0]
    assert pred.value == int(2**30 // one)
    assert predict_longest(FULL, "seq_len", 10, n_params=10**6).value is None
    with pytest.raises(ValueError, match="over"):
        predict_longest(FULL, "n_layers", 2**30, 0)
