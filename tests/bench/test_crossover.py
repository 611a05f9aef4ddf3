"""Crossover detection on synthetic series with known crossings, and the pairs a study yields."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.report.crossover import crossings, crossover_table, describe
from bench.report.frames import ok_frame, study_view

X = [256, 512, 1024, 2048, 4096]


def test_no_crossing_says_not_within_the_span():
    ratio = [3.0, 2.5, 2.0, 1.5, 1.2]
    assert crossings(X, ratio) == []
    text = describe("LSH", "SDPA", "step_ms_median", X, ratio, [])
    assert "not within 256-4,096 tokens" in text and "SDPA costs less throughout" in text


def test_one_crossing_is_bracketed_and_interpolated_in_log_log():
    # ratio = (x / 1000)^-1 crosses 1 at exactly x = 1000, between 512 and 1024.
    ratio = [1000 / x for x in X]
    (c,) = crossings(X, ratio)
    assert (c.lo, c.hi) == (512, 1024)
    assert c.estimate == pytest.approx(1000, rel=1e-9)
    assert c.a_wins_above and not c.under_load and not c.within_noise
    assert "time: LSH costs less than full from about 1,000 tokens (between 512 and 1,024)" in describe(
        "LSH", "full", "step_ms_median", X, ratio, [c])


def test_two_crossings_in_order():
    ratio = [2.0, 0.5, 0.5, 0.5, 2.0]  # a wins in the middle only
    first, second = crossings(X, ratio)
    assert (first.lo, first.hi, first.a_wins_above) == (256, 512, True)
    assert (second.lo, second.hi, second.a_wins_above) == (2048, 4096, False)
    assert first.estimate == pytest.approx(math.sqrt(256 * 512))  # symmetric in log space


def test_a_point_under_load_marks_its_crossing_only():
    ratio = [2.0, 0.5, 0.5, 0.5, 2.0]
    loaded = [False, False, False, True, False]
    first, second = crossings(X, ratio, loaded=loaded)
    assert not first.under_load and second.under_load
    assert "measured under load" in describe("a", "b", "step_ms_median", X, ratio, [first, second])


def test_a_crossing_inside_the_noise_says_so():
    (c,) = crossings(X, [1.5, 1.02, 0.9, 0.5, 0.3], noise=[0.0, 0.05, 0.0, 0.0, 0.0])
    assert (c.lo, c.hi) == (512, 1024) and c.within_noise


def test_equal_costs_are_a_tie_not_a_winner():
    text = describe("LSH", "full", "saved_for_backward_mib", X, [1.0, 1.01, 0.995, 1.0, 1.0], [])
    assert text == "saved-for-backward bytes, LSH vs full: the same within 2% at every length in 256-4,096 tokens."


def test_unsorted_input_and_mismatched_lengths():
    (c,) = crossings(list(reversed(X)), list(reversed([1000 / x for x in X])))
    assert (c.lo, c.hi) == (512, 1024)
    with pytest.raises(ValueError, match="5 lengths but 4 ratios"):
        crossings(X, [1, 2, 3, 4])


def _record(attention, seq_len, ms, mib, loaded=False, n_hashes=None):
    params = {"workload": "attention", "impl": "ours", "device": "cpu", "dtype": "float32", "batch_size": 1,
              "seq_len": seq_len, "d_model": 16, "n_heads": 2, "attention": attention, "n_hashes": n_hashes,
              "chunk_len": 32 if attention == "lsh" else None}
    return {"status": "ok", "point_id": f"{attention}{n_hashes}{seq_len}", "studies": ["s"], "params": params,
            "metrics": {"step_ms_median": ms, "rss_delta_mib": mib}, "load": {"under_load": loaded}}


def test_study_pairs_each_lsh_round_count_with_each_dense_kind():
    records = []
    for n in X:
        records.append(_record("full", n, n**2 / 1e4, n**2 / 1e4))
        records.append(_record("sdpa", n, n**1.5 / 1e3, n / 100))
        for h in (1, 4):
            records.append(_record("lsh", n, h * n / 50, h * n / 50, loaded=(n == 512), n_hashes=h))
    view = study_view(ok_frame(records), "s", {"grid": {"attention": [], "n_hashes": [], "seq_len": []}}, "cpu")
    table = crossover_table([view])
    assert set(zip(table["a_key"], table["b_key"])) == {
        (f"attention=lsh, n_hashes={h}", f"attention={k}") for h in (1, 4) for k in ("full", "sdpa")}
    one = table[(table["a_key"] == "attention=lsh, n_hashes=1") & (table["b_key"] == "attention=full")
                & (table["metric"] == "step_ms_median")].iloc[0]
    # lsh/full = (n / 50) / (n^2 / 1e4) = 200 / n: crosses at 200 < 256, so LSH wins at every length.
    assert one["estimate"] is None or pd.isna(one["estimate"])
    assert "LSH, 1 hash round costs less throughout" in one["finding"]
    four = table[(table["a_key"] == "attention=lsh, n_hashes=4") & (table["b_key"] == "attention=full")
                 & (table["metric"] == "step_ms_median")].iloc[0]
    assert (four["lo"], four["hi"], four["estimate"]) == (512, 1024, 800)  # 800 / n crosses 1 at 800
    assert bool(four["under_load"])  # 512 was measured under load
