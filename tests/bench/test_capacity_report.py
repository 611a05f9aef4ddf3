"""The capacity report from records alone: each configuration's longest fit, peak and time there,
the prediction beside it, the ratio to naive full attention; markdown, CSV and chart written."""
from __future__ import annotations

import json

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
    assert df.loc["full", "longest_seq_len"] == 2048 and df.loc["full", "limited_by"] == "oom (rss_watchdog)"
    assert df.loc["full", "peak_mib"] == 256 and df.loc["full", "step_ms"] == 204.8
    assert df.loc["lsh", "longest_seq_len"] == 8192 and df.loc["lsh", "limited_by"] == "search max_value"
    assert df.loc["lsh", "ratio_to_full"] == 4.0 and df.loc["full", "ratio_to_full"] == 1.0
    assert df.loc["full", "table3_row"] == "Transformer" and df.loc["lsh", "table3_row"] == "Reversible LSH Transformer"
    assert df.loc["full", "predicted"] > 0 and df.loc["full", "predicted"] % 256 == 0
    assert df.loc["full", "probes"] == 4 and df.loc["full", "tokens"] == 2048


def test_write_report(tmp_path):
    store = RunStore(tmp_path)
    store.write_run_json({"suite": "capr", "profile": "cpu", "device": "cpu", "kind": "capacity",
                          "suite_spec": json.loads(json.dumps(PLAN.to_json())), "environment": {}})
    for r in _records():
        store.append(r)
    text = write_report(tmp_path).read_text()
    assert "| full " in text and ">= 8192" in text and "held fixed: d_model=32" in text
    assert (tmp_path / "capacity.png").stat().st_size > 0 and (tmp_path / "capacity.csv").is_file()
