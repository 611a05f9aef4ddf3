"""The capacity report from records alone: each configuration's longest fit, peak and time there,
the prediction beside it, the ratio to naive full attention; markdown, CSV and chart written."""
from __future__ import annotations

import json

import pytest

from bench.capacity.report import capacity_frame, write_report
from bench.capacity.runner import finish_record
from bench.capacity.spec import CapacityConfig, CapacityPlan, SearchSpec
from bench.store import RunStore, make_record

COMMON = {"dtype": "float32", "batch_size": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "n_layers": 4,
          "chunk_len": 64, "n_hashes": 2, "ff_chunks": 1, "vocab_size": 64}
PLAN = CapacityPlan(
    suite="capr", profile="cpu", device="cpu", over="seq_len",
    search=SearchSpec(over="seq_len", start=1024, max_value=8192, resolution=0.5, multiple=256),
    memory_budget_gib=1.0, timeout_s=60.0,
    configs=(CapacityConfig("full", {**COMMON, "attention": "full", "reversible": False}),
             CapacityConfig("lsh", {**COMMON, "attention": "lsh", "reversible": True})),
)


def _records():
    out = []
    for config, fits in ((PLAN.configs[0], lambda v: v <= 2048), (PLAN.configs[1], lambda v: True)):
        for value in {"full": (1024, 2048, 4096, 3072), "lsh": (1024, 2048, 4096, 8192)}[config.label]:
            point = PLAN.point(config, value)
            raw = (make_record(point, "ok", metrics={"peak_rss_mib": value / 8, "step_ms": value / 10,
                                                     "baseline_rss_mib": 100.0, "n_params": 10_000})
                   if fits(value) else make_record(point, "oom", "host RSS 1100 MiB exceeded memory_limit_mib=1024; killed"))
            out.append(finish_record(raw, PLAN, config, value, "r"))
    return out


def test_frame_reads_the_search_result_back_from_the_records():
    meta = {"suite_spec": PLAN.to_json(), "environment": {"device_name": "test cpu"}}
    df = capacity_frame(meta, _records()).set_index("configuration")
    assert df.loc["full", "longest_seq_len"] == 2048 and df.loc["full", "limited_by"] == "memory (rss_watchdog)"
    assert df.loc["full", "peak_mib"] == 256 and df.loc["full", "step_ms"] == 204.8
    assert df.loc["lsh", "longest_seq_len"] == 8192 and df.loc["lsh", "limited_by"] == "max_value (search cap)"
    assert df.loc["lsh", "ratio_to_full"] == 4.0 and df.loc["full", "ratio_to_full"] == 1.0
    assert df.loc["full", "table3_row"] == "Transformer" and df.loc["lsh", "table3_row"] == "Reversible LSH Transformer"
    assert df.loc["full", "table3_longest"] > 0 and df.loc["full", "table3_longest"] % 256 == 0
    assert df.loc["full", "limit"] == "memory" and df.loc["lsh", "limit"] == "max_value"
    assert df.loc["full", "predicted"] is None  # a classic search (recorded before calibration): no prediction
    assert df.loc["full", "probes"] == 4 and df.loc["full", "tokens"] == 2048


def test_write_report(tmp_path):
    store = RunStore(tmp_path)
    store.write_run_json({"suite": "capr", "profile": "cpu", "device": "cpu", "kind": "capacity",
                          "suite_spec": json.loads(json.dumps(PLAN.to_json())), "environment": {}})
    for r in _records():
        store.append(r)
    text = write_report(tmp_path).read_text()
    assert "| full " in text and ">= 8,192" in text and "held fixed: d_model=32" in text
    assert (tmp_path / "capacity.png").stat().st_size > 0 and (tmp_path / "capacity.csv").is_file()


# --------------------------------------------------------------------------- a calibrated run

from bench.capacity.planner import Done, next_probe  # noqa: E402
from bench.capacity.searches import config_outcomes, search_for  # noqa: E402

CAL_PLAN = CapacityPlan(
    suite="capc", profile="cpu", device="cpu", over="seq_len",
    search=SearchSpec(over="seq_len", start=2048, max_value=1 << 20, resolution=0.0625, multiple=256),
    memory_budget_gib=1.0, timeout_s=60.0,
    configs=(CapacityConfig("full", {**COMMON, "attention": "full", "reversible": False}),
             CapacityConfig("lsh", {**COMMON, "attention": "lsh", "reversible": True}),
             CapacityConfig("slow", {**COMMON, "attention": "lsh", "reversible": False, "n_hashes": 8})),
)
# what each configuration's probes would measure: peak MiB and wall s at a length, None = OOM
MODELS = {
    "full": (lambda v: 200 + 0.05 * v + 1e-4 * v * v, lambda v: 2.0),
    # convex past 20K, beyond the calibration's reach (its longest probe is half its prediction, 19K)
    "lsh": (lambda v: 250 + 0.02 * min(v, 20000) + 0.06 * max(0, v - 20000), lambda v: 2.0 + 1e-4 * v),
    "slow": (lambda v: 250 + 0.001 * v, lambda v: 2.0 + 0.01 * v),  # the 60 s timeout at 5,800 tokens
}


def _calibrated_records():
    out = []
    for config in CAL_PLAN.configs:
        peak, wall = MODELS[config.label]
        search = search_for(CAL_PLAN, config)
        while not isinstance(step := next_probe(search, config_outcomes(out, CAL_PLAN, config)), Done):
            point, v = CAL_PLAN.point(config, step.value), step.value
            if peak(v) > 1024:
                raw = make_record(point, "oom", f"host RSS {peak(v):.0f} MiB exceeded memory_limit_mib=1024; killed")
            elif wall(v) > 60:
                raw = make_record(point, "timeout", "exceeded timeout_s=60 after 60.0 s; killed")
            else:
                raw = make_record(point, "ok", metrics={"peak_rss_mib": peak(v), "step_ms": 1000 * wall(v) - 500,
                                                        "baseline_rss_mib": 180.0, "n_params": 10_000})
                raw["wall_s"] = wall(v)
            out.append(finish_record(raw, CAL_PLAN, config, v, "r"))
    return out


def test_calibrated_frame_tells_memory_from_time_and_reports_the_prediction_error():
    meta = {"suite_spec": CAL_PLAN.to_json(), "environment": {}}
    df = capacity_frame(meta, _calibrated_records()).set_index("configuration")
    assert df.loc["full", "limit"] == "memory" and df.loc["full", "calibration_probes"] == 3
    assert df.loc["full", "prediction_error"] == pytest.approx(0, abs=0.07)  # a quadratic fits exactly
    lsh = df.loc["lsh"]
    truth = 20000 + (1024 - 250 - 0.02 * 20000) / 0.06  # 26,233 tokens
    assert lsh.limit == "memory" and lsh.longest_seq_len <= truth < lsh.first_failure
    assert lsh.prediction_error == pytest.approx((lsh.predicted - lsh.longest_seq_len) / lsh.longest_seq_len)
    assert lsh.prediction_error > 0.15  # the calibration's slope misled it: the report says by how much
    assert lsh.calibration_probes == 4 and lsh.calibration_longest == 19200  # 512, 1K, 2K, half of 38,700
    assert lsh.table3_longest > lsh.longest_seq_len  # the paper's term: a lower bound on memory
    slow = df.loc["slow"]
    assert slow.limit == "time" and slow.limited_by == "time (timeout 60 s)" and slow.predicted_limit == "time"
    assert slow.longest_seq_len <= 5800 < slow.first_failure


def test_calibrated_report_opens_with_findings(tmp_path):
    store = RunStore(tmp_path)
    store.write_run_json({"suite": "capc", "profile": "cpu", "device": "cpu", "kind": "capacity",
                          "suite_spec": json.loads(json.dumps(CAL_PLAN.to_json())), "environment": {}})
    for r in _calibrated_records():
        store.append(r)
    text = write_report(tmp_path).read_text()
    head = text.split("## Longest length per configuration")[0]
    assert "## Findings" in head and "Stopped by: memory 2, time 1 (of 3 configurations)." in head
    assert "within 15% of the searched longest seq_len for 1 of 2 memory-limited configurations" in head
    assert "worst `lsh`" in head and "the paper's lower bound on memory" in head
    assert "## Prediction error" in text and "time (timeout 60 s)" in text
