"""The column-to-label table covers every metric column a record can hold, with units."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.measure
from bench.report import labels
from bench.report.frames import FIXED_KEYS, LOAD_KEYS, ORDERED, PARAM_KEYS

ROOT = Path(__file__).resolve().parents[2]
# The record fields CONTRACTS item 3 adds (branch measure), for the time before METRIC_NAMES exists.
CONTRACT_METRICS = (
    "memory_processes", "nvml_device_peak_mib", "nvml_process_peak_mib", "sm_clock_mhz_start", "sm_clock_mhz_end",
    "mem_clock_mhz_start", "mem_clock_mhz_end", "temperature_c_start", "temperature_c_end", "power_w_start",
    "power_w_end", "throttle_reasons_start", "throttle_reasons_end", "throttled",
    *(f"{m}{s}" for m in ("peak_rss_mib", "rss_delta_mib", "saved_for_backward_mib", "peak_alloc_mib")
      for s in ("", "_min", "_max")),
)


def metric_names() -> set[str]:
    names = set(getattr(bench.measure, "METRIC_NAMES", ()))
    for path in ROOT.glob("results/*/*/records.jsonl"):
        for line in path.read_text().splitlines():
            names.update((json.loads(line).get("metrics") or {}).keys())
    return names | set(CONTRACT_METRICS)


def test_every_metric_column_has_a_label():
    missing = sorted(n for n in metric_names() if not labels.has_label(n))
    assert not missing, f"no label for {missing}"


@pytest.mark.parametrize("column", sorted({*PARAM_KEYS, *FIXED_KEYS, *LOAD_KEYS, *ORDERED}))
def test_every_axis_and_load_column_has_a_label(column):
    assert labels.has_label(column)


def test_quantities_carry_their_units():
    assert labels.label("seq_len") == "sequence length (tokens)"
    assert labels.label("rss_delta_mib").endswith("(MiB)") and labels.label("step_ms_median").endswith("(ms)")
    assert labels.label("peak_rss_mib_max") == "peak resident memory of the process, highest over processes (MiB)"
    assert labels.short("saved_for_backward_mib") == "bytes saved for the backward pass"
    for name in metric_names():
        if name.endswith(("_mib", "_mib_min", "_mib_max")):
            assert labels.label(name).endswith("(MiB)"), name
        if "_ms_" in name:
            assert labels.label(name).endswith("(ms)"), name


def test_value_labels_read_as_words():
    assert labels.value_label("attention", "lsh") == "LSH"
    assert labels.value_label("n_hashes", 1.0) == "1 hash round"
    assert labels.value_label("n_hashes", 8) == "8 hash rounds"
    assert labels.value_label("reversible", False) == "not reversible"
    assert labels.value_label("d_ff", 4096.0) == "d_ff = 4096"
