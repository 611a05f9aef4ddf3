"""One table from record column to the words a reader sees (with units), and value labels for
series. Every plot axis, legend, caption and table heading in the report is taken from here."""
from __future__ import annotations

import math
from typing import Any

# Column -> label with its unit. Params first, then metrics, then the load and GPU-state fields.
LABELS: dict[str, str] = {
    # params
    "workload": "workload", "impl": "implementation", "device": "device", "dtype": "dtype",
    "batch_size": "batch size (sequences)", "seq_len": "sequence length (tokens)",
    "tokens_per_batch": "tokens per batch", "attention": "attention kind", "n_layers": "layers",
    "reversible": "reversible layers", "ff_chunks": "feed-forward chunks", "d_ff": "d_ff (feed-forward width)",
    "d_model": "d_model (model width)", "n_heads": "attention heads", "n_hashes": "hash rounds",
    "chunk_len": "LSH chunk length (tokens)", "n_buckets": "LSH buckets", "causal": "causal",
    "vocab_size": "vocabulary size", "shared_qk": "shared QK", "pos_emb": "position embedding",
    "torch": "torch version",
    # time (milliseconds)
    "step_ms_median": "time per step, forward + backward (+ optimizer) (ms)",
    "step_ms_q25": "time per step, 25th percentile (ms)", "step_ms_q75": "time per step, 75th percentile (ms)",
    "fwd_ms_median": "forward time (ms)", "fwd_ms_q25": "forward time, 25th percentile (ms)",
    "fwd_ms_q75": "forward time, 75th percentile (ms)",
    "bwd_ms_median": "backward time (ms)", "bwd_ms_q25": "backward time, 25th percentile (ms)",
    "bwd_ms_q75": "backward time, 75th percentile (ms)",
    "opt_ms_median": "optimizer step time (ms)", "opt_ms_q25": "optimizer step time, 25th percentile (ms)",
    "opt_ms_q75": "optimizer step time, 75th percentile (ms)",
    "n_repeats": "timed repeats", "wall_s": "wall time of the point (s)",
    # memory (MiB = 2^20 bytes)
    "peak_alloc_mib": "peak allocated GPU memory (MiB)", "peak_reserved_mib": "peak reserved GPU memory (MiB)",
    "nvml_device_used_mib": "GPU memory used, whole device, NVML (MiB)",
    "nvml_process_used_mib": "GPU memory used by the process, NVML (MiB)",
    "nvml_device_peak_mib": "peak GPU memory, whole device, NVML (MiB)",
    "nvml_process_peak_mib": "peak GPU memory of the process, NVML (MiB)",
    "peak_rss_mib": "peak resident memory of the process (MiB)",
    "rss_delta_mib": "peak resident memory above the pre-build baseline (MiB)",
    "saved_for_backward_mib": "bytes saved for the backward pass (MiB)",
    "memory_processes": "processes that read the memory",
    "predicted_memory_term": "Table 3 memory term (elements)", "predicted_time_term": "Table 3 time term (operations)",
    # GPU state (NVML)
    "sm_clock_mhz_start": "SM clock at start (MHz)", "sm_clock_mhz_end": "SM clock at end (MHz)",
    "mem_clock_mhz_start": "memory clock at start (MHz)", "mem_clock_mhz_end": "memory clock at end (MHz)",
    "temperature_c_start": "GPU temperature at start (°C)", "temperature_c_end": "GPU temperature at end (°C)",
    "power_w_start": "GPU power at start (W)", "power_w_end": "GPU power at end (W)",
    "throttle_reasons_start": "throttle reasons at start", "throttle_reasons_end": "throttle reasons at end",
    "throttled": "GPU throttled",
    # machine load around the point
    "loadavg_1m": "load average, 1 min", "other_cpu_frac": "CPU share used by other processes",
    "steal_frac": "CPU steal share", "under_load": "measured under load",
    # capacity probes (one training step each)
    "step_ms": "time of the training step (ms)", "fwd_ms": "forward time of the step (ms)",
    "bwd_ms": "backward time of the step (ms)", "opt_ms": "optimizer step time (ms)",
    "baseline_rss_mib": "resident memory before the model is built (MiB)", "n_params": "parameters",
    "oom_tried_mib": "allocation that failed (MiB)", "oom_allowed_mib": "memory allowed by the budget (MiB)",
    "oom_allocated_mib": "allocated when the allocation failed (MiB)",
    "oom_reserved_unallocated_mib": "reserved but unallocated when it failed (MiB)",
    "oom_device_total_mib": "GPU memory, total (MiB)", "oom_device_free_mib": "GPU memory free when it failed (MiB)",
    "oom_process_in_use_mib": "GPU memory of the process when it failed (MiB)",
    # duplication task
    "accuracy": "accuracy on the second half", "train_accuracy": "training accuracy",
    "eval_loss": "evaluation loss", "final_loss": "final training loss", "eval_s": "evaluation time (s)",
    "train_s": "training time (s)", "eval_tokens": "evaluated tokens", "steps_done": "training steps",
    # quality (byte-level language models)
    "bpb": "held-out bits per byte", "nats_per_byte": "held-out nats per byte", "eval_bytes": "evaluated bytes",
    "eval_windows": "evaluated windows", "approximation_rows": "approximation rows",
    **{f"count_order_{k}_bpb": f"held-out bits per byte of the order-{k} count model" for k in range(4)},
}
# Spread columns (`m_min`, `m_max`) are labelled from their metric.
LABELS.update({
    # sizes and rates (bench.flops, bench.report.derived)
    "input_bytes": "bytes of the step's inputs", "flops_fwd_bwd": "analytic FLOPs of forward + backward",
    "state_mib": "weights + gradients + optimizer state (MiB)", "input_mib": "inputs (MiB)",
    "gflop": "analytic GFLOP of forward + backward", "achieved_gflops": "achieved rate (GFLOP/s)",
    "pct_of_peak": "share of the measured matmul rate (%)",
    "stage_total_ms": "profiled step, wall time (ms)",
})
# Stage columns of a profiled step, one per record_function range name.
PREFIX_LABELS = {"stage_ms.": ("time in stage {} of the profiled step (ms)"),
                 "stage_share.": ("share of stage {} in the profiled step")}
SPREAD_SUFFIXES = {"_min": "lowest over processes", "_max": "highest over processes"}

VALUE_LABELS: dict[str, dict[Any, str]] = {
    "attention": {"full": "full (naive)", "sdpa": "full (fused SDPA)", "lsh": "LSH", "local": "local (LSH's chunks by position)", "none": "no attention (control)"},
    "workload": {"attention": "one attention layer", "model": "whole model"},
    "impl": {"ours": "ours", "reformer_pytorch": "reformer-pytorch", "hf": "Hugging Face"},
    "reversible": {True: "reversible", False: "not reversible"},
}
UNIT_WORDS = {"n_hashes": ("hash round", "hash rounds"), "n_layers": ("layer", "layers"),
              "ff_chunks": ("chunk", "chunks"), "n_heads": ("head", "heads")}


def label(column: str) -> str:
    """The label of a record column, with its unit; the column name itself when it has none."""
    if column in LABELS:
        return LABELS[column]
    for prefix, text in PREFIX_LABELS.items():
        if column.startswith(prefix):
            return text.format(column.removeprefix(prefix))
    for suffix, words in SPREAD_SUFFIXES.items():
        base = column.removesuffix(suffix)
        if column.endswith(suffix) and base in LABELS:
            text = LABELS[base]
            return text.replace(" (", f", {words} (", 1) if " (" in text else f"{text}, {words}"
    return column


def has_label(column: str) -> bool:
    """Whether the table (or a spread suffix on a column it holds) labels `column`."""
    return column in LABELS or column.startswith(tuple(PREFIX_LABELS)) or any(column.endswith(sfx) and column.removesuffix(sfx) in LABELS
                                   for sfx in SPREAD_SUFFIXES)


def short(column: str) -> str:
    """The label without its unit, for titles and captions."""
    text = label(column)
    return text.split(" (")[0] if text.endswith(")") else text


def plain(value: Any) -> Any:
    """None for missing (NaN included); integral floats back to int (pandas' upcast next to NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def value_label(column: str, value: Any) -> str:
    """How a series value reads in a legend: 'LSH', '4 hash rounds', 'reversible', 'd_ff = 4096'."""
    value = plain(value)
    if value is None:
        return f"no {short(column)}"
    if column in VALUE_LABELS and value in VALUE_LABELS[column]:
        return VALUE_LABELS[column][value]
    if column in UNIT_WORDS:
        one, many = UNIT_WORDS[column]
        return f"{value} {one if value == 1 else many}"
    return f"{column} = {value}"
