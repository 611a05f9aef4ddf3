"""The quality study's baselines and the rules built on them: count-model bpb against hand
computations (and a brute-force counter), the interval of paired differences on synthetic data of
known mean, the "models that learned" gate (a run at bigram level is inconclusive, one well below
it is judged), and the report rendering them (and noting their absence in older runs)."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.quality.baselines import ALPHA, count_baselines, fit_count_model, window_targets
from bench.quality.report import study_verdicts, write_report
from bench.quality.report_frames import AS_TRAINED
from bench.quality.verdicts import (
    AT_NGRAM, LEARNED_MARGIN_BPB, NO_BASELINES, BaselineScore, classify, learned_gate, paired_interval,
    study_verdict, t_quantile,
)

from . import test_quality_report as report_fixture

# ------------------------------------------------------------------------------------ count models


def _bytes(text: bytes) -> np.ndarray:
    return np.frombuffer(text, dtype=np.uint8)


def test_count_models_match_a_hand_computation_on_a_tiny_corpus():
    """Train on b"aab", score the held-out b"ab" that follows it (positions 3 and 4 of b"aabab")."""
    data = _bytes(b"aabab")
    targets = np.array([[3, 4]])  # one window: 'a' (after 'b'), 'b' (after 'a')
    order0, order1 = count_baselines(data, (0, 3), targets, orders=(0, 1))
    # order 0: n(a) = 2, n(b) = 1 of 3 bytes; p = (n + 1/2) / (3 + 128)
    expected0 = (-math.log2(2.5 / 131) - math.log2(1.5 / 131)) / 2
    # order 1: pairs (a, a), (a, b); context 'b' never seen -> 1/256 (8 bits); after 'a': (1 + 1/2) / (2 + 128)
    expected1 = (8.0 - math.log2(1.5 / 130)) / 2
    assert order0.bpb == pytest.approx(expected0, rel=1e-12) and order0.n_bytes == 2
    assert order1.bpb == pytest.approx(expected1, rel=1e-12)
    assert order1.window_bpb == pytest.approx((expected1,))
    # order 2 on b"abcabd" + b"abc": context 'ab' was followed by 'c' once and 'd' once
    data = _bytes(b"abcabdabc")
    (order2,) = count_baselines(data, (0, 6), np.array([[8]]), orders=(2,))
    assert order2.bpb == pytest.approx(-math.log2(1.5 / (2 + 128)), rel=1e-12)
    (order3,) = count_baselines(data, (0, 6), np.array([[8]]), orders=(3,))  # 'dab' unseen: uniform
    assert order3.bpb == pytest.approx(8.0, rel=1e-12)


def test_count_models_agree_with_a_brute_force_counter_for_every_order():
    rng = np.random.default_rng(0)
    data = rng.integers(97, 101, size=3000).astype(np.uint8)  # 4 symbols: every order sees repeats
    train = (0, 2500)
    targets = window_targets(2500, [0, 100, 300], 50)  # three windows of 50 targets in the held-out part
    for order, scored in zip(range(4), count_baselines(data, train, targets)):
        pairs = Counter(tuple(data[i - order:i + 1]) for i in range(order, 2500))
        contexts = Counter()
        for key, n in pairs.items():
            contexts[key[:-1]] += n
        bits = [[-math.log2((pairs[tuple(data[t - order:t + 1])] + ALPHA) /
                            (contexts[tuple(data[t - order:t])] + 256 * ALPHA)) for t in row] for row in targets]
        assert scored.bpb == pytest.approx(float(np.mean(bits)), rel=1e-12), order
        assert scored.window_bpb == pytest.approx([float(np.mean(r)) for r in bits], rel=1e-12)
    # on this 4-symbol source, more context cannot be learned from, only paid for in smoothing
    assert [b.order for b in count_baselines(data, train, targets)] == [0, 1, 2, 3]


def test_window_targets_are_the_evaluations_target_bytes():
    assert window_targets(100, [0, 8], 4).tolist() == [[101, 102, 103, 104], [109, 110, 111, 112]]


def test_count_models_refuse_what_they_cannot_count():
    with pytest.raises(ValueError, match="order=4"):
        fit_count_model(_bytes(b"abcdef"), 4)
    with pytest.raises(ValueError, match="alpha=0"):
        fit_count_model(_bytes(b"abcdef"), 1, alpha=0)
    with pytest.raises(ValueError, match="fewer bytes before it"):
        fit_count_model(_bytes(b"abcdef"), 2).bits(_bytes(b"abcdef"), np.array([1]))

# --------------------------------------------------------------------------------------- interval


def test_t_quantiles_match_the_tables():
    for df, q in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423), (math.inf, 1.95996)):
        assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-4), df
    assert 4.3027 > t_quantile(0.975, 2.5) > 2.7764  # a non-integer df lies between two table rows


def test_one_seed_gives_the_ordinary_t_interval_over_windows_and_one_window_the_one_over_seeds():
    d = np.array([[0.1, 0.3, 0.2, 0.6]])
    ci = paired_interval(d)
    half = t_quantile(0.975, 3) * np.std(d, ddof=1) / 2  # s / sqrt(4)
    assert (ci.mean, ci.lo, ci.hi) == pytest.approx((0.3, 0.3 - half, 0.3 + half))
    assert (ci.n_seeds, ci.n_windows) == (1, 4) and "no seed-to-seed noise" in ci.over
    by_seed = paired_interval(d.T)  # four seeds, means only
    assert (by_seed.lo, by_seed.hi) == pytest.approx((ci.lo, ci.hi)) and (by_seed.n_seeds, by_seed.n_windows) == (4, 1)
    assert paired_interval(np.array([[0.2]])) is None
    flat = paired_interval(np.full((2, 3), 0.05))
    assert (flat.lo, flat.hi) == pytest.approx((0.05, 0.05)) and flat.excludes_zero


def _synthetic(rng, n_seeds: int, n_windows: int, mu: float) -> np.ndarray:
    """d = mu + a_s + b_w + e: seed effects sd 0.02, window effects sd 0.05, noise sd 0.02."""
    return (mu + rng.normal(0, 0.02, (n_seeds, 1)) + rng.normal(0, 0.05, (1, n_windows))
            + rng.normal(0, 0.02, (n_seeds, n_windows)))


def test_the_interval_covers_the_true_mean_and_shrinks_with_more_seeds_and_windows():
    rng = np.random.default_rng(23)
    mu = 0.03
    hits, widths = 0, {}
    for _ in range(300):
        ci = paired_interval(_synthetic(rng, 3, 64, mu))
        hits += ci.lo <= mu <= ci.hi
    assert 0.93 <= hits / 300 <= 0.995  # nominal 95%, a little conservative by construction
    for shape in ((2, 16), (3, 16), (3, 256), (8, 256)):
        widths[shape] = np.median([(lambda c: c.hi - c.lo)(paired_interval(_synthetic(rng, *shape, mu)))
                                   for _ in range(100)])
    assert widths[(2, 16)] > widths[(3, 16)] > widths[(3, 256)] > widths[(8, 256)]
    # a real difference, many seeds and windows: the interval excludes 0 and the rule calls it real
    ci = paired_interval(_synthetic(np.random.default_rng(1), 8, 256, mu))
    assert ci.excludes_zero and ci.lo <= mu <= ci.hi


def test_a_difference_whose_interval_includes_zero_is_noise_even_if_every_seed_agrees():
    d = np.array([[-0.03], [-0.02]])  # two seeds, both below, but one degree of freedom
    ci = paired_interval(d)
    assert ci.lo < 0 < ci.hi
    assert classify([-0.03, -0.02]) == "reproduces"  # the sign rule alone
    assert classify([-0.03, -0.02], interval=ci) == "within noise"
    windows = np.array([[-0.031, -0.029, -0.030, -0.030], [-0.030, -0.031, -0.029, -0.030]])  # seeds agree closely
    tight = paired_interval(windows)
    assert tight.hi < 0 and classify(list(windows.mean(axis=1)), interval=tight) == "reproduces"

# ------------------------------------------------------------------------------- learned or not

SHARED = {"models": ["full-separate-qk", "full"], "baseline": "full-separate-qk"}
COUNTS_STDLIB = [BaselineScore(f"count-order-{k}", v, "count") for k, v in enumerate((4.61, 3.58, 2.73, 2.39))]


def _bpb(ref: float, other: float, control: float) -> dict:
    """Two seeds each; the study's other model differs from the reference by +0.1 on both."""
    return {("full-separate-qk", AS_TRAINED): {0: ref, 1: ref + 0.02},
            ("full", AS_TRAINED): {0: other, 1: other + 0.02},
            ("no-attention", AS_TRAINED): {0: control, 1: control + 0.01}}


def test_a_run_at_bigram_level_is_inconclusive_one_well_below_it_is_judged():
    at_bigram = _bpb(3.59, 3.69, 3.60)  # the old cpu reference: every model beside the order-1 counts
    gate = learned_gate("full-separate-qk", at_bigram, {}, ["no-attention"], COUNTS_STDLIB)
    assert gate.learned is False and gate.count.baseline.name == "count-order-3"
    assert gate.count.below == pytest.approx(2.39 - 3.60) and gate.control.below == pytest.approx(0.005)
    verdict, (part,) = study_verdict("shared_qk", SHARED, {}, at_bigram, {}, gate=gate)
    assert verdict == AT_NGRAM
    assert part.verdict == "does not reproduce"  # what the rule would have said, kept for display only
    learned = _bpb(2.10, 2.20, 3.30)
    gate = learned_gate("full-separate-qk", learned, {}, ["no-attention"], COUNTS_STDLIB)
    assert gate.learned and gate.verdict is None
    assert study_verdict("shared_qk", SHARED, {}, learned, {}, gate=gate)[0] == "does not reproduce"


def test_both_baselines_must_be_beaten_by_the_margin_and_missing_ones_leave_it_inconclusive():
    assert LEARNED_MARGIN_BPB == 0.1
    just = _bpb(2.39 - LEARNED_MARGIN_BPB - 0.01, 2.5, 3.3)  # mean 2.29: exactly 0.1 below order 3
    assert learned_gate("full-separate-qk", just, {}, ["no-attention"], COUNTS_STDLIB).learned
    short = _bpb(2.31, 2.41, 3.3)  # 0.07 below order 3: past the control, not past the counts
    gate = learned_gate("full-separate-qk", short, {}, ["no-attention"], COUNTS_STDLIB)
    assert gate.control.below > 0.9 and gate.learned is False
    near_control = _bpb(2.0, 2.1, 2.05)  # the counts are far above, but attention earns almost nothing
    assert learned_gate("full-separate-qk", near_control, {}, ["no-attention"], COUNTS_STDLIB).learned is False
    for controls, counts in ((["no-attention"], []), ([], COUNTS_STDLIB)):
        gate = learned_gate("full-separate-qk", _bpb(2.0, 2.1, 3.3), {}, controls, counts)
        assert gate.learned is None and gate.verdict == NO_BASELINES
    assert study_verdict("shared_qk", SHARED, {}, _bpb(2.0, 2.1, 3.3), {})[0] == "does not reproduce"  # no gate


def test_the_gate_pairs_the_reference_with_the_count_model_window_by_window():
    windows = {("full-separate-qk", AS_TRAINED): {0: [2.0, 2.4, 2.2], 1: [2.1, 2.5, 2.2]}}
    bpb = {("full-separate-qk", AS_TRAINED): {0: 2.2, 1: 2.2666666666666666}}
    count = BaselineScore("count-order-3", 2.5, "count", [2.3, 2.7, 2.5])
    gate = learned_gate("full-separate-qk", bpb, windows, [], [count])
    assert gate.count.below == pytest.approx(2.5 - 2.2333333333333333)
    assert (gate.count.ci.n_seeds, gate.count.ci.n_windows) == (2, 3)
    by_hand = paired_interval(np.array([[-0.3, -0.3, -0.3], [-0.2, -0.2, -0.3]]))  # reference - counts, per window
    assert (gate.count.ci.lo, gate.count.ci.hi) == pytest.approx((by_hand.lo, by_hand.hi))

# ----------------------------------------------------------------------------------------- report


def _run_dir(tmp_path: Path, records: list[dict], **spec_changes) -> Path:
    d = tmp_path / "runs" / "quality" / "cpu-cpu-test"
    d.mkdir(parents=True)
    spec = {"kind": "quality", "suite": "quality", "profile": "cpu", "description": "tiny", "seq_len": 64,
            "seeds": [0, 1], "data": {"corpus": "stdlib"}, "model": {"d_model": 32},
            "train": {"steps": 40, "batch_size": 8, "lr": 0.002}, "eval": {"windows": 8},
            "models": {**report_fixture.MODELS, "no-attention": {"attention": "none", "reversible": False}},
            "eval_settings": {"lsh-4": {"attention": "lsh", "n_hashes": 4}}, "studies": report_fixture.STUDIES,
            "controls": ["no-attention"], **spec_changes}
    meta = {"kind": "quality", "suite": "quality", "profile": "cpu", "run_id": d.name, "device": "cpu",
            "environment": {}, "suite_spec": spec, "planned": [r["point_id"] for r in records]}
    (d / "run.json").write_text(json.dumps(meta))
    (d / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def _verdicts(run_dir: Path) -> dict[str, str]:
    return pd.read_csv(run_dir / "tables" / "verdicts.csv").set_index("study")["verdict"].to_dict()


def test_the_report_renders_baselines_in_the_final_table_the_pareto_plot_and_each_verdict(tmp_path):
    run_dir = _run_dir(tmp_path, report_fixture._records())
    text = write_report(run_dir).read_text()
    assert "## Baselines" in text and "add-0.5 over the 256-byte alphabet" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text[text.index("## Final table"):text.index("## Baselines")].splitlines()
            if line.startswith("| ") and "baseline)" in line}
    for k, v in report_fixture.COUNTS.items():
        assert rows[f"count-order-{k} (count model, baseline)"][:3] == ["counted (add-0.5)", "–", f"{v:.4f}"]
    assert rows["no-attention (control, baseline)"][:3] == ["as trained", "2", "3.7000"]
    assert "dotted: count models" in text  # the Pareto caption names the reference lines
    assert (run_dir / "plots" / "pareto.png").stat().st_size > 10_000
    # shared_qk's reference full-separate-qk: 2.22 mean, 3.1 - 2.22 below the order-3 counts, 3.7 - 2.22 the control
    assert ("**Learned?** Reference `full-separate-qk` 2.2200 bpb: +1.4800 bpb below the no-attention control "
            "`no-attention` (3.7000") in text and "+0.8800 bpb below the best count model `count-order-3`" in text
    assert "→ yes: its differences are read as a verdict." in text
    assert _verdicts(run_dir)["shared_qk"] == "reproduces"
    assert study_verdicts(json.loads((run_dir / "run.json").read_text())["suite_spec"],
                          report_fixture._records()) == _verdicts(run_dir)
    table = pd.read_csv(run_dir / "tables" / "verdicts.csv").set_index("study")
    assert table.loc["local_control", "below_best_count"] == pytest.approx(3.1 - 2.8)
    assert set(table["learned"]) == {True}


def test_a_report_at_count_model_level_is_inconclusive_and_says_why(tmp_path):
    records = [r for r in report_fixture._records() if r["point_id"] != "baselines-count-models"]
    records.append(report_fixture.count_record({0: 4.6, 1: 3.6, 2: 2.7, 3: 2.25}))  # below full's 2.2 + 0.1
    run_dir = _run_dir(tmp_path, records)
    text = write_report(run_dir).read_text()
    verdicts = _verdicts(run_dir)
    assert verdicts["hash_rounds"] == verdicts["shared_qk"] == AT_NGRAM  # references 2.2 and 2.22 vs 2.25
    assert verdicts["local_control"] == AT_NGRAM  # local (2.8) is above the order-3 counts
    assert "→ no: the models are at n-gram level, so no verdict is drawn." in text
    meta = json.loads((run_dir / "run.json").read_text())
    assert study_verdicts(meta["suite_spec"], records) == verdicts  # what other views of the run read
    assert "(as the rule would call it; not a verdict here)" in text
    assert "_Why it may not at this scale:_" not in text  # no excuses for a verdict that was not drawn


def test_per_window_records_give_intervals_over_seeds_and_windows(tmp_path):
    records = report_fixture._records()
    rng = np.random.default_rng(5)
    text_effect = rng.normal(0, 0.3, 8)  # the same hard and easy windows for every model
    for rec in records:
        if rec["params"].get("role") == "eval":
            bpb = rec["metrics"]["bpb"]
            rec["per_window"] = {"bpb": list(bpb + text_effect - text_effect.mean() + rng.normal(0, 0.001, 8))}
    run_dir = _run_dir(tmp_path, records)
    text = write_report(run_dir).read_text()
    line = next(x for x in text.splitlines() if x.strip().startswith("- lsh-4 minus full, per seed"))
    assert "95% interval of mean d: +0.09" in line and "over 2 seeds x 8 windows" in line
    assert "does not reproduce" in line


def test_an_older_run_without_baselines_renders_with_a_note_and_no_verdict(tmp_path):
    records = [r for r in report_fixture._records(baselines=False)]
    run_dir = _run_dir(tmp_path, records, controls=None,
                       models=report_fixture.MODELS)  # no control among its models, no count-model record
    text = write_report(run_dir).read_text()
    assert "_Baselines are missing:" in text and "**No baselines in these records**" in text
    assert set(_verdicts(run_dir).values()) == {NO_BASELINES}
    assert "## Final table" in text and "## Quality against cost (Pareto)" in text
    assert "This run has no baselines to draw." in text
