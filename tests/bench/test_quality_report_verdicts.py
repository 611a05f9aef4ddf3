"""The quality verdicts: the paired rule on synthetic differences (each outcome, both directions,
one seed, seeds that disagree), each claim kind built from bpb per seed, the same-function check
and the templated reasons."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.quality.report_frames import AS_TRAINED
from bench.quality.verdicts import (
    CLAIMS, COINCIDE_BPB, MIN_REAL_BPB, classify, coincidence, paired, same_function_pairs, study_verdict,
    why_context, why_not,
)


def bpb(**by_model: tuple[float, ...]) -> dict[tuple[str, str], dict[int, float]]:
    """As-trained bpb per model and seed (seed = position), keyword names with '_' for '-'."""
    return {(m.replace("_", "-"), AS_TRAINED): dict(enumerate(v)) for m, v in by_model.items()}


# ------------------------------------------------------------------------------------- paired rule

def test_every_seed_one_sign_and_mean_past_the_threshold_is_real_in_either_direction():
    assert classify([-0.02, -0.03]) == "reproduces"
    assert classify([0.02, 0.03]) == "does not reproduce"
    assert classify([2.0 - 2.01, 3.0 - 3.01]) == "reproduces"  # exactly the threshold, float-rounded
    assert MIN_REAL_BPB == 0.01


def test_seeds_that_disagree_in_sign_are_noise_however_large_the_mean():
    assert classify([-0.5, 0.1]) == "within noise"
    assert classify([0.5, -0.1]) == "within noise"
    assert classify([-0.02, 0.0]) == "within noise"  # a zero is no sign


def test_one_sign_below_the_threshold_is_noise():
    assert classify([-0.004, -0.009]) == "within noise"
    assert classify([0.004, 0.009]) == "within noise"


def test_one_seed_is_judged_by_the_threshold_alone():
    assert classify([-0.02]) == "reproduces"
    assert classify([0.02]) == "does not reproduce"
    assert classify([-0.005]) == "within noise"
    assert classify([]) == "not measured"


def test_pairing_removes_a_seed_effect_shared_by_both_models():
    # seed 0 is 0.4 bpb below seed 1 for both models: the unpaired ranges overlap, the pairs agree
    a, b = {0: 6.60, 1: 7.00}, {0: 6.63, 1: 7.02}
    d = paired(a, b)
    assert d.seeds == (0, 1) and d.diffs == pytest.approx((-0.03, -0.02))
    assert (d.mean, d.lo, d.hi) == pytest.approx((-0.025, -0.03, -0.02))
    assert d.outcome == "reproduces"
    assert paired({0: 1.0, 2: 1.0}, {1: 1.0}) is None
    assert paired({0: 1.0, 1: 2.0, 2: 3.0}, {1: 1.5, 2: 2.5}).seeds == (1, 2)  # only the common seeds


# ---------------------------------------------------------------------------------------- claims

SHARED = {"models": ["full-separate-qk", "full"], "baseline": "full-separate-qk"}
LOCAL = {"models": ["local", "lsh-1", "lsh-2"], "baseline": "local"}
DEPTH = {"models": ["full-1-layer", "full", "full-4-layers"], "baseline": "full", "x": "n_layers"}
DEPTH_X = {"full-1-layer": 1, "full": 2, "full-4-layers": 4}


def test_not_worse_claim_counts_noise_and_better_as_reproduced_worse_as_not():
    noise = bpb(full=(6.6, 7.05), full_separate_qk=(6.65, 7.0))  # signs disagree
    verdict, (part,) = study_verdict("shared_qk", SHARED, {}, noise, {})
    assert verdict == "reproduces"
    assert part.comparisons[0].outcome == "within noise" and part.comparisons[0].supports
    assert study_verdict("shared_qk", SHARED, {}, bpb(full=(6.6, 7.0), full_separate_qk=(6.62, 7.03)), {})[0] \
        == "reproduces"
    verdict, (part,) = study_verdict("shared_qk", SHARED, {}, bpb(full=(6.7, 7.1), full_separate_qk=(6.6, 7.0)), {})
    assert verdict == "does not reproduce"
    c = part.comparisons[0]
    assert (c.name, c.versus) == ("full", "full-separate-qk") and c.diff == pytest.approx(0.1)
    assert (c.a.lo, c.a.hi) == (6.7, 7.1)  # the unpaired spread rides along for display


def test_better_claim_needs_every_model_to_beat_the_reference_on_every_seed():
    def verdict(lsh_2: tuple[float, ...]) -> str:
        return study_verdict("local_control", LOCAL, {}, bpb(local=(3.0, 3.4), lsh_1=(2.9, 3.3), lsh_2=lsh_2), {})[0]

    assert verdict((2.9, 3.3)) == "reproduces"
    assert verdict((2.9, 3.45)) == "within noise"
    assert verdict((3.1, 3.5)) == "does not reproduce"


def test_monotone_claim_compares_neighbours_in_x_order_not_list_order():
    good = bpb(full_1_layer=(3.0, 3.4), full=(2.0, 2.4), full_4_layers=(1.0, 1.4))
    verdict, (part,) = study_verdict("depth", DEPTH, DEPTH_X, good, {})
    assert verdict == "reproduces"
    assert [(c.name, c.versus) for c in part.comparisons] == [("full", "full-1-layer"), ("full-4-layers", "full")]
    worse_deeper = bpb(full_1_layer=(3.0, 3.4), full=(2.0, 2.4), full_4_layers=(2.5, 2.9))
    assert study_verdict("depth", DEPTH, DEPTH_X, worse_deeper, {})[0] == "does not reproduce"
    flat = bpb(full_1_layer=(3.0, 3.4), full=(2.0, 2.4), full_4_layers=(1.995, 2.398))
    assert study_verdict("depth", DEPTH, DEPTH_X, flat, {})[0] == "within noise"


def test_hash_rounds_parts_rounds_approach_full_and_gain_from_more_rounds_at_evaluation():
    study = {"models": ["lsh-1", "lsh-8", "full"], "baseline": "full", "x": "n_hashes", "eval": ["lsh-8"]}
    x_of = {"lsh-1": 1, "lsh-8": 8, "full": None}
    settings = {"lsh-8": {"attention": "lsh", "n_hashes": 8}}
    numbers = bpb(lsh_1=(3.0, 3.1), lsh_8=(2.0, 2.1), full=(2.05, 2.08))  # lsh-8 vs full: signs disagree
    numbers[("lsh-1", "lsh-8")] = {0: 2.5, 1: 2.6}
    numbers[("full", "lsh-8")] = {0: 9.0, 1: 9.1}  # full attention's weights under LSH: not part of the claim
    verdict, parts = study_verdict("hash_rounds", study, x_of, numbers, settings)
    assert [p.part.kind for p in parts] == ["monotone", "approaches", "eval_gain"]
    assert [p.verdict for p in parts] == ["reproduces", "reproduces", "reproduces"] and verdict == "reproduces"
    assert [(c.name, c.versus) for c in parts[1].comparisons] == [("lsh-8", "full")]
    assert parts[1].comparisons[0].outcome == "within noise"
    assert [(c.name, c.versus) for c in parts[2].comparisons] == [("lsh-1 evaluated as lsh-8", "lsh-1 as trained")]
    numbers[("lsh-1", "lsh-8")] = {0: 3.5, 1: 3.6}  # more rounds at evaluation hurt
    verdict, parts = study_verdict("hash_rounds", study, x_of, numbers, settings)
    assert parts[2].verdict == "does not reproduce" and verdict == "does not reproduce"


def test_missing_models_or_seeds_are_not_measured_and_unknown_studies_have_no_rule():
    verdict, (part,) = study_verdict("shared_qk", SHARED, {}, bpb(full=(2.0,)), {})
    assert verdict == "not measured" and part.comparisons == ()
    no_common = {("full", AS_TRAINED): {0: 2.0}, ("full-separate-qk", AS_TRAINED): {1: 2.1}}
    assert study_verdict("shared_qk", SHARED, {}, no_common, {})[0] == "not measured"
    assert study_verdict("my_study", SHARED, {}, bpb(full=(2.0,), full_separate_qk=(1.0,)), {})[0] == "no rule"


def test_reversible_claim_sets_both_two_stream_models_against_the_standard_residual():
    study = {"models": ["full-standard-residual", "full-not-reversible", "full"], "baseline": "full-standard-residual"}
    numbers = bpb(full_standard_residual=(6.6, 7.0), full_not_reversible=(6.603, 7.004), full=(6.603, 7.004))
    verdict, (part,) = study_verdict("reversible", study, {}, numbers, {})
    assert [(c.name, c.versus) for c in part.comparisons] == [("full-not-reversible", "full-standard-residual"),
                                                              ("full", "full-standard-residual")]
    assert verdict == "reproduces"  # +0.0035 on every seed: below the threshold, so not worse
    numbers = bpb(full_standard_residual=(6.6, 7.0), full_not_reversible=(6.7, 7.1), full=(6.7, 7.1))
    assert study_verdict("reversible", study, {}, numbers, {})[0] == "does not reproduce"


# ------------------------------------------------------------------------------------ same function

CONFIGS = {"full": {"attention": "full", "reversible": True, "residual": "two_stream"},
           "full-not-reversible": {"attention": "full", "reversible": False, "residual": "two_stream"},
           "full-standard-residual": {"attention": "full", "reversible": False, "residual": "standard"}}


def test_same_function_pairs_differ_in_the_field_alone_the_set_one_first():
    models = ["full-standard-residual", "full-not-reversible", "full"]
    assert same_function_pairs(models, CONFIGS, "reversible") == [("full", "full-not-reversible")]
    (pair,) = same_function_pairs(models, CONFIGS, "residual")  # not a yes/no field: either order
    assert set(pair) == {"full-not-reversible", "full-standard-residual"}
    assert same_function_pairs(["full", "absent"], CONFIGS, "reversible") == []


def _curves(shift: float) -> pd.DataFrame:
    """Curves of models a and b, b's held-out values moved by `shift`; held-out every 20 steps."""
    valid = lambda m, sd, st: 7.0 - st / 10 + sd + (shift if m == "b" else 0.0) if st % 20 == 0 else math.nan
    return pd.DataFrame([{"model": m, "seed": sd, "step": st, "train_bpb": 8.0 - st / 10 + sd,
                          "valid_bpb": valid(m, sd, st)}
                         for m in ("a", "b") for sd in (0, 1) for st in (10, 20, 30, 40)])


def test_coincidence_reports_the_largest_gap_and_the_memory_beside_it():
    trains = pd.DataFrame({"model": ["a", "a", "b", "b"], "saved_for_backward_mib": [0.25, 0.25, 2.5, 2.5]})
    finals = {("a", AS_TRAINED): {0: 7.0, 1: 7.2}, ("b", AS_TRAINED): {0: 7.0, 1: 7.2}}
    c = coincidence("a", "b", _curves(0.0), finals, trains)
    assert (c.n_points, c.valid_max, c.train_max, c.final_max, c.verdict) == (4, 0.0, 0.0, 0.0, "identical")
    assert (c.memory_a, c.memory_b) == (0.25, 2.5)
    assert coincidence("a", "b", _curves(COINCIDE_BPB / 10), finals, trains).verdict == "coincide to float rounding"
    c = coincidence("a", "b", _curves(0.01), finals, trains)
    assert c.verdict == "differ" and c.valid_max == pytest.approx(0.01)
    assert coincidence("a", "c", _curves(0.0), finals, trains).verdict == "not measured"


# ------------------------------------------------------------------------------------------ why not

def test_why_not_quotes_the_runs_own_settings_and_drops_reasons_that_do_not_apply():
    spec = {"seq_len": 256, "seeds": [0, 1], "model": {"chunk_len": 32, "d_model": 128},
            "train": {"steps": 300, "batch_size": 8}}
    (local,) = CLAIMS["local_control"]
    text = " ".join(why_not(local, why_context(spec)))
    assert "300 steps of 8 windows of 256 bytes (614,400 bytes" in text
    assert "up to 64 preceding bytes (25% of the sequence)" in text and "2 seed(s)" in text
    long = {**spec, "seq_len": 4096, "seeds": [0, 1, 2]}
    text = " ".join(why_not(local, why_context(long)))
    assert "preceding bytes" not in text and "seed(s)" not in text and "300 steps" in text
    assert why_not(local, {}) == []  # nothing known: nothing invented
