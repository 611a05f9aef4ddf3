"""The findings block is computed from the records: it changes when they change, and the vs_layers
explanation of the committed memory reference is the weights + optimizer share from n_params."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from bench import flops as fl

from bench.report.crossover import crossover_table
from bench.report.derived import add_derived
from bench.report.exponents import exponent_table
from bench.report.findings import findings_markdown, grid_findings, stage_finding
from bench.report.frames import StudyView, load_run, ok_frame, study_view

ROOT = Path(__file__).resolve().parents[2]
MEMORY_REFERENCE = ROOT / "results" / "memory" / "reference-cpu"


def _record(attention, seq_len, ms, mib, n_hashes=None):
    params = {"workload": "attention", "impl": "ours", "device": "cpu", "dtype": "float32", "batch_size": 1,
              "seq_len": seq_len, "d_model": 16, "n_heads": 2, "attention": attention, "n_hashes": n_hashes,
              "chunk_len": 32 if attention == "lsh" else None, "shared_qk": True}
    return {"status": "ok", "point_id": f"{attention}{seq_len}", "studies": ["s"], "params": params,
            "metrics": {"step_ms_median": ms, "fwd_ms_median": ms / 3, "bwd_ms_median": 2 * ms / 3,
                        "rss_delta_mib": mib}, "load": {"under_load": False}}


def _findings(records, env=None) -> str:
    df = add_derived(ok_frame(records), env or {})
    view = study_view(df, "s", {"grid": {"attention": [], "seq_len": []}}, "cpu")
    views = [view]
    text = findings_markdown(grid_findings(views, exponent_table(views), crossover_table(views), env or {}, "cpu"))
    return text


def _records(lsh_ms):
    out = []
    for n in (256, 512, 1024, 2048):
        out.append(_record("full", n, n**2 / 1e3, n**2 / 1e4))
        out.append(_record("lsh", n, lsh_ms(n), n / 10, n_hashes=2))
    return out


def test_findings_follow_the_records():
    slow = _findings(_records(lambda n: n / 0.4))  # lsh/full time = 2500 / n: crosses at 2,500, not measured
    fast = _findings(_records(lambda n: n / 2))  # 500 / n: crosses at 500
    assert slow != fast
    assert "no crossover, not within 256-2,048 tokens; full (naive) costs less throughout" in slow
    assert "LSH costs less than full (naive) from about 500 tokens (between 256 and 512)" in fast
    assert re.search(r"at 2,048 tokens LSH takes 0\.24x full \(naive\)'s time", fast)
    assert "fitted exponent vs Table 3's" in fast and "(agrees)" in fast
    assert "no matmul calibration" in fast


def test_share_of_peak_uses_the_calibration():
    text = _findings(_records(lambda n: n / 2), env={"matmul_gflops": {"float32": 100.0}})
    assert "of the 100 GFLOP/s float32 matmul rate measured for this run" in text


@pytest.mark.skipif(not (MEMORY_REFERENCE / "records.jsonl").exists(), reason="memory reference not committed")
def test_vs_layers_reversible_gap_is_the_optimizer_share_within_20_percent():
    run = load_run(MEMORY_REFERENCE)
    df = add_derived(ok_frame(run.records), run.environment)
    specs = run.meta["suite_spec"]["studies"]
    view = study_view(df, "vs_layers", specs["vs_layers"], run.device)
    exps = exponent_table([view])
    row = exps[(exps["series"] == "reversible=True") & (exps["metric"] == "rss_delta_mib")].iloc[0]
    assert row["flag"] == "GAP"
    assert "AdamW moments" in row["explanation"] and "unexplained" not in row["explanation"]
    assert "as Table 3's" in row["explanation"]
    text = findings_markdown(grid_findings([view], exps, crossover_table([view]), run.environment, run.device))
    measured, computed = map(float, re.search(
        r"reversible growth of ([\d.]+) MiB per layer .* = ([\d.]+) MiB", text).groups())
    assert abs(computed - measured) / measured <= 0.20
    # The records carry n_params (measure_point); the count the report derives from the config agrees.
    layer_rows = [r for r in run.records if r["status"] == "ok" and "vs_layers" in r["studies"]]
    assert layer_rows and all(r["metrics"]["n_params"] == fl.param_count(r["params"]) for r in layer_rows)
    per_layer = view.frame.sort_values("n_layers")["n_params"].diff().dropna().unique()
    assert len(per_layer) >= 1 and all(v % 723_456 == 0 for v in per_layer)


def test_unexplained_when_no_figure_accounts_for_the_gap():
    from bench.report.explain import explain_gap

    tail = pd.DataFrame({"seq_len": [1024, 2048, 4096], "rss_delta_mib": [10.0, 40.0, 160.0]})
    assert explain_gap(tail, "seq_len", "rss_delta_mib", 2.0, 1.0).startswith("unexplained")
    tail["state_mib"], tail["input_mib"] = [5.0, 5.0, 5.0], 0.0
    tail["saved_for_backward_mib"] = [1.0, 2.0, 4.0]
    text = explain_gap(tail, "seq_len", "rss_delta_mib", 2.0, 1.0)
    assert "transient" in text  # cited, but the saved bytes do not follow Table 3 either: no claim


def test_a_study_plotted_against_a_category_gets_no_stage_growth_finding():
    """A slope needs a numeric x: stage times along attention kinds give no stage finding (no crash)."""
    frame = pd.DataFrame({"attention": ["full", "lsh"], "stage_total_ms": [10.0, 20.0],
                          "stage_ms.reformer.hash": [1.0, 8.0]})
    numeric = frame.assign(seq_len=[1024, 4096])
    args = dict(description="", series=(), hue=None, style=None, metrics=(), fitted=(), logx=True, logy=True)
    assert stage_finding(StudyView(name="kinds", frame=frame, x="attention", **args)) is None
    grows = stage_finding(StudyView(name="lengths", frame=numeric, x="seq_len", **args))
    assert grows is not None and "hash" in grows.text


def test_the_peak_over_saved_ratio_is_computed_per_series_from_the_records():
    records = []
    for n_hashes, saved in ((1, 100.0), (2, 150.0), (8, 400.0)):
        r = _record("lsh", 4096, 10.0 * n_hashes, 300.0 + 100 * n_hashes, n_hashes=n_hashes)
        r["metrics"]["saved_for_backward_mib"] = saved
        r["point_id"] += f"h{n_hashes}"
        records.append(r)
    df = add_derived(ok_frame(records), {})
    view = study_view(df, "s", {"grid": {"n_hashes": []}}, "cpu")
    text = findings_markdown(grid_findings([view], exponent_table([view]), crossover_table([view]), {}, "cpu"))
    # 400 / 100 at 1 round, 1100 / 400 at 8 rounds
    assert re.search(r"over saved-for-backward bytes: 4\.00x at 1 hash round, 2\.75x at 8 hash rounds\.", text), text


def test_a_slower_tail_says_whether_the_growing_part_matches_table_3():
    """RSS = 200 + 10 n_r MiB: the tail's log-log slope is well below Table 3's 1 (the constant has
    not faded by 32 rounds), the exponent of a + b x^p is 1; a truly sublinear series says so too."""
    def text(mib):
        records = []
        for r in (1, 2, 4, 8, 16, 32):
            rec = _record("lsh", 2048, 10.0 * r, mib(r), n_hashes=r)
            rec["point_id"] = f"lsh{r}"
            records.append(rec)
        df = add_derived(ok_frame(records), {})
        view = study_view(df, "s", {"grid": {"n_hashes": []}}, "cpu")
        return findings_markdown(grid_findings([view], exponent_table([view]), crossover_table([view]), {}, "cpu"))

    linear = text(lambda r: 200 + 10 * r)
    assert re.search(r"peak memory against hash rounds: fitted exponent vs Table 3's: all points 0\.\d\d vs 1\.00 "
                     r"\(grows slower; with a constant set apart, a \+ b·x\^p over every point: p = 1\.00, agrees\)", linear)
    sublinear = text(lambda r: 200 + 40 * r**0.5)
    assert "p = 0.50, still slower" in sublinear
