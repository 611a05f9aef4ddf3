"""The names of every metric a point's record can carry, and how the readings of a point's several
worker processes become one record: torch-free, so the executor and the report can use it."""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from bench.nvml import METRIC_NAMES as NVML_METRICS

PHASES = ("fwd", "bwd", "opt", "step")
TIME_METRICS = tuple(f"{phase}_ms_{stat}" for phase in PHASES for stat in ("median", "q25", "q75"))
# Read in every worker process of a point; the record keeps the median and the spread.
MEMORY_METRICS = (
    "peak_alloc_mib", "peak_reserved_mib", "nvml_device_used_mib", "nvml_process_used_mib",
    "nvml_device_peak_mib", "nvml_process_peak_mib", "peak_rss_mib", "rss_delta_mib",
    "saved_for_backward_mib",
)
SPREAD_METRICS = tuple(f"{name}_{end}" for name in MEMORY_METRICS for end in ("min", "max"))
METRIC_NAMES = (
    *TIME_METRICS, "n_repeats",
    *MEMORY_METRICS, *SPREAD_METRICS, "memory_processes",
    *(n for n in NVML_METRICS if n not in MEMORY_METRICS),
    "predicted_memory_term", "predicted_time_term",
    "n_params", "input_bytes", "flops_fwd_bwd",
)
# With a stage breakdown a timed point also carries `stage_ms.<range name>`, `stage_ms.other` and
# `stage_total_ms` (bench.measure.StageTimes).


def combine_processes(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One point's metrics from the metrics of its worker processes, first (the timing process)
    first: timings and GPU state come from the first; each memory metric becomes the median over
    the processes that read it (null if none did), with `<name>_min` and `<name>_max` beside it."""
    if not runs:
        raise ValueError("combine_processes: no process readings")
    out = dict(runs[0])
    for name in MEMORY_METRICS:
        values = [float(r[name]) for r in runs if r.get(name) is not None]
        out[name] = statistics.median(values) if values else None
        out[f"{name}_min"] = min(values) if values else None
        out[f"{name}_max"] = max(values) if values else None
    out["memory_processes"] = len(runs)
    return out
