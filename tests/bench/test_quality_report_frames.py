"""The quality report's frames: spreads over seeds, the final table (training cost and load on the
as-trained row), the Pareto front, coinciding curves and the load summary."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.quality.report_frames import (
    AS_TRAINED, AXES, bpb_by_seed, coinciding, final_table, load_summary, loaded_models, model_configs,
    pareto_front, spread, train_frame,
)


def test_spread_is_mean_min_max_and_sample_std_ignoring_missing():
    sp = spread([1.0, None, 2.0, float("nan"), 4.0])
    assert (sp.n, sp.lo, sp.hi) == (3, 1.0, 4.0)
    assert sp.mean == pytest.approx(7 / 3) and sp.range == 3.0
    assert sp.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    one = spread([5.0])
    assert one.range == 0.0 and one.std is None
    assert spread([None, float("nan")]) is None


def test_pareto_front_keeps_points_nothing_beats_on_both_axes_in_x_order():
    xs = [1.0, 2.0, 3.0, 4.0, 2.0, float("nan"), 2.0]
    ys = [5.0, 3.0, 4.0, 1.0, 3.5, 0.0, 3.0]
    assert pareto_front(xs, ys) == [0, 1, 6, 3]  # 2 and 4 dominated by 1; identical 1 and 6 both kept
    assert pareto_front([1.0], [1.0]) == [0]


def _trains(loads: list) -> pd.DataFrame:
    return pd.DataFrame([{"model": "a", "seed": sd, "step_ms": 10.0 + sd, "saved_for_backward_mib": 1.0,
                          "peak_alloc_mib": None, "n_params": 100, "under_load": load,
                          "other_cpu_frac": None if load is None else (0.4 if load else 0.01)}
                         for sd, load in enumerate(loads)])


def test_final_table_puts_training_cost_and_load_on_the_as_trained_row_only():
    evals = pd.DataFrame([{"model": "a", "setting": st, "seed": sd, "bpb": 2.0 + sd + (st != AS_TRAINED)}
                          for st in (AS_TRAINED, "lsh-8") for sd in (0, 1)])
    t = final_table(evals, _trains([False, True]), ["a", "absent"], ["lsh-8"]).set_index("setting")
    assert list(t.index) == [AS_TRAINED, "lsh-8"]
    assert t.loc[AS_TRAINED, "bpb_mean"] == 2.5
    assert (t.loc["lsh-8", "bpb_min"], t.loc["lsh-8", "bpb_max"]) == (3.0, 4.0)
    assert t.loc[AS_TRAINED, "step_ms"] == 10.5 and math.isnan(t.loc["lsh-8", "step_ms"])
    assert math.isnan(t.loc[AS_TRAINED, "peak_alloc_mib"])
    assert t.loc[AS_TRAINED, "under_load"] and not t.loc["lsh-8", "under_load"]
    quiet = final_table(evals, _trains([False, False]), ["a"], ["lsh-8"])
    assert not quiet["under_load"].any()


def test_load_summary_counts_only_trainings_whose_record_says():
    trains = _trains([True, False, None])
    assert load_summary(trains) == (1, 2, 0.4)
    assert loaded_models(trains) == {"a"}
    assert load_summary(_trains([None])) == (0, 0, None)


def test_train_frame_reads_residual_and_load_from_the_records():
    rec = {"point_id": "t", "status": "ok", "params": {"train_model": "std", "seed": 0, "role": "train",
                                                       "residual": "standard", "reversible": False},
           "metrics": {"step_ms_median": 5.0}, "load": {"under_load": True, "other_cpu_frac": 0.3}}
    old = {**rec, "point_id": "u", "params": {**rec["params"], "train_model": "old"}, "load": None}
    t = train_frame([rec, old]).set_index("model")
    assert "residual" in AXES and t.loc["std", "residual"] == "standard"
    assert t.loc["std", "under_load"] and t.loc["std", "other_cpu_frac"] == 0.3
    assert t.loc["old", "under_load"] is None


def test_bpb_by_seed_and_model_configs():
    evals = pd.DataFrame([{"model": "a", "setting": AS_TRAINED, "seed": sd, "bpb": 2.0 + sd} for sd in (0, 1)])
    assert bpb_by_seed(evals) == {("a", AS_TRAINED): {0: 2.0, 1: 3.0}}
    spec = {"model": {"d_model": 8, "reversible": True}, "models": {"a": {"reversible": False}, "b": None}}
    assert model_configs(spec) == {"a": {"d_model": 8, "reversible": False}, "b": {"d_model": 8, "reversible": True}}


def test_coinciding_finds_models_whose_mean_curves_are_drawn_on_top_of_each_other():
    rows = [{"model": m, "seed": sd, "step": st, "valid_bpb": v + sd}
            for m, v in (("a", 2.0), ("b", 2.0), ("c", 2.5)) for sd in (0, 1) for st in (10, 20)]
    curves = pd.DataFrame(rows)
    assert coinciding(curves, ["a", "b", "c"]) == [["a", "b"]]
    assert coinciding(curves, ["a", "c"]) == []


def _curves(values):
    """A long curves frame from {(model, seed): {step: valid_bpb}} (training rows carry no valid_bpb)."""
    rows = [{"model": m, "seed": s, "step": step, "train_s": step / 10, "train_bpb": 3.0, "valid_bpb": v}
            for (m, s), by_step in values.items() for step, v in by_step.items()]
    rows.append({"model": "a", "seed": 0, "step": 50, "train_s": 5.0, "train_bpb": 3.0, "valid_bpb": math.nan})
    return pd.DataFrame(rows)


def test_curve_gap_pairs_seeds_and_steps_both_models_have():
    from bench.quality.report_frames import curve_gap

    curves = _curves({("a", 0): {250: 3.0, 500: 2.6, 750: 2.4}, ("a", 1): {250: 3.2, 500: 2.8, 750: 2.5},
                      ("a", 2): {250: 9.0, 500: 9.0, 750: 9.0},  # b has no seed 2: left out
                      ("b", 0): {250: 2.9, 500: 2.4, 750: 2.3, 1000: 2.2}, ("b", 1): {250: 3.0, 500: 2.6, 750: 2.4}})
    gap = curve_gap(curves, "a", "b")
    assert list(gap.index) == [250, 500, 750]  # 1000: a was not validated there; 50: no valid_bpb
    assert gap.tolist() == pytest.approx([0.15, 0.2, 0.1])
    assert curve_gap(curves, "a", "missing").empty


def test_gap_text_says_whether_the_gap_closes_over_training():
    from bench.quality.report import gap_text

    steps = [250, 500, 750, 1000, 1250, 1500, 1750, 2000]
    def run(gaps):
        return _curves({("a", 0): {s: 2.5 + g for s, g in zip(steps, gaps)}, ("b", 0): dict.fromkeys(steps, 2.5)})
    closing = gap_text(run([0.3, 0.25, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02]), "a", "b")
    assert "+0.300 at step 250" in closing and "+0.020 at step 2000" in closing and "narrowing" in closing
    assert "widening" in gap_text(run([0.0, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.12]), "a", "b")
    assert "steady" in gap_text(run([0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.101, 0.102]), "a", "b")
    assert gap_text(run([0.1] * 8).iloc[:1], "a", "b") is None  # one validated step: no trend
