"""measure(point): build the point's workload, time it and read its memory; the record's params,
effective and metrics (see the record contract). Called by bench.worker in a fresh process per point.

Exceptions propagate on purpose: the worker turns torch.OutOfMemoryError / MemoryError into `oom`,
WorkloadUnavailable into `skipped` and anything else into `error`.
"""
from __future__ import annotations

import dataclasses
import gc
import importlib
import os
from typing import Any, Sequence

import torch

from bench import measure as m
from bench import nvml
from bench import flops, stages as st
from bench.complexity import table3_terms
from bench.point import GridPoint
from bench.workloads import Workload, build_workload
import reformer_impl
from reformer_impl import ReformerConfig

POINT_PARAMS = ("workload", "impl", "device", "dtype", "batch_size", "seq_len")
ALL_PHASES = m.PHASES
# Set (to 1) to record the stage times of one extra profiled iteration at every timed point
# (`bench run --breakdown` sets it for the run's workers); a GridPoint's `breakdown: true` (a suite
# or study key) does the same per point.
BREAKDOWN_ENV = "BENCH_BREAKDOWN"


def flat_params(point: GridPoint) -> dict[str, Any]:
    """workload, impl, device, dtype, batch_size, seq_len and every ReformerConfig field as the grid
    canonicalised it: a field dropped as irrelevant to this point (e.g. n_hashes for full attention)
    is null, so it never splits a table or a plot."""
    params: dict[str, Any] = {key: getattr(point, key) for key in POINT_PARAMS}
    for f in dataclasses.fields(ReformerConfig):
        params[f.name] = point.model.get(f.name)
    return params


def predicted_terms(params: dict[str, Any]) -> dict[str, Any]:
    """Table 3's memory and time terms for the point, null where its attention kind has no row."""
    try:
        terms = table3_terms(params)
    except ValueError:
        return {"predicted_memory_term": None, "predicted_time_term": None, "table3_row": None}
    return {"predicted_memory_term": terms.memory, "predicted_time_term": terms.time, "table3_row": terms.row}


def saved_for_backward_mib(workload: Workload) -> float:
    """Bytes autograd keeps from one forward for the backward, parameters excluded."""
    workload.zero_grad()
    with m.SavedTensorCounter(exclude=workload.module.parameters()) as counter:
        out = workload.forward()
    del out  # frees the graph and everything it saved
    return counter.mib


def prime(point: GridPoint, profiled: bool = False) -> bool:
    """Run a tiny copy of the point's workload once, so one-time costs (library imports, code pages,
    thread pools, allocator arenas, the CUDA context; `profiled`: the profiler's) land before the RSS
    baseline instead of in `rss_delta_mib`. False if the tiny copy failed; the real build then
    reports the problem."""
    chunk = point.model.get("chunk_len") or 32
    tiny = dataclasses.replace(point, batch_size=1, seq_len=min(point.seq_len, 2 * chunk))
    try:
        workload = build_workload(tiny)
        m.run_untimed(workload.iteration, point.device, 1)
        if profiled:
            st.profile_stages(lambda: m.run_untimed(workload.iteration, point.device, 1), point.device, stage_names())
    except Exception:
        return False
    finally:
        workload = None
        gc.collect()
        m.trim_host_heap()
        if m.is_cuda(point.device):
            torch.cuda.empty_cache()
    return True


def wants_breakdown(point: GridPoint, breakdown: bool | None = None) -> bool:
    """Whether to profile one extra iteration: the argument, else the point's `breakdown` field or
    $BENCH_BREAKDOWN (either asks for it)."""
    if breakdown is not None:
        return breakdown
    return point.breakdown is True or os.environ.get(BREAKDOWN_ENV, "").strip() not in ("", "0", "false", "no")


def stage_names() -> Sequence[str] | None:
    """reformer_impl's public stage range names, or None (then every user-annotated range counts)."""
    names = getattr(reformer_impl, "STAGES", None)
    if not names:
        try:
            names = getattr(importlib.import_module("reformer_impl.profiling"), "STAGES", None)
        except ImportError:
            names = None
    return tuple(names) if names else None


def size_metrics(point: GridPoint, params: dict[str, Any], workload: Workload,
                 described: dict[str, Any]) -> dict[str, Any]:
    """n_params of the module measured, input bytes, and (our models) the analytic FLOPs of fwd + bwd."""
    out: dict[str, Any] = {"n_params": sum(p.numel() for p in workload.module.parameters()),
                           "input_bytes": None, "flops_fwd_bwd": None}
    if point.impl == "ours" or point.workload == "attention":
        try:
            out["input_bytes"] = flops.input_bytes(params)
            out["flops_fwd_bwd"] = flops.flop_count(params, described).total
        except ValueError:
            pass
    return out


def measure(point: GridPoint, *, timing: bool = True, breakdown: bool | None = None) -> dict[str, Any]:
    """Measure one point: prime, baseline RSS, build, warm-up, `repeats` timed iterations (GPU
    state read before and after them), one forward under saved-tensor hooks, one untimed iteration
    between memory-peak resets with NVML sampled during it, then with `breakdown` one more
    iteration under torch.profiler for its stage times (after the memory reading, so the
    profiler's buffers are not in the peak).
    `timing=False` (the point's extra memory processes) skips the timed iterations (and the
    breakdown) and mmaps large allocations from the start. Returns {params, effective, metrics}."""
    params = flat_params(point)
    profiled = timing and wants_breakdown(point, breakdown)
    # Nothing is timed in a memory-only process, so glibc mmaps every large allocation from the start:
    # its reading is then of live memory only, with no heap blocks the warm-up freed and kept.
    mmapped_from_start = not timing and m.mmap_large_allocations()
    primed = prime(point, profiled)
    reader = m.open_nvml(point.device)  # after prime: NVML sees this process once it has a context
    try:
        baseline_rss = m.current_rss_mib()
        workload = build_workload(point)
        if timing:
            state_start = reader.state() if reader is not None else None
            stats = m.time_phases(workload.iteration, point.device, repeats=point.repeats, warmup=point.warmup)
            state_end = reader.state() if reader is not None else None
        else:
            m.run_untimed(workload.iteration, point.device, point.warmup)
        saved = saved_for_backward_mib(workload)
        memory = m.read_memory(workload.iteration, point.device, baseline_rss, nvml_reader=reader)
        # After the memory reading: the profiler's own buffers would otherwise count in the peak.
        stages = (st.profile_stages(lambda: m.run_untimed(workload.iteration, point.device, 1), point.device,
                                   stage_names()) if profiled else None)
    finally:
        if reader is not None:
            reader.close()

    terms = predicted_terms(params)
    described = workload.effective()
    metrics: dict[str, Any] = {
        **memory.as_metrics(),
        "saved_for_backward_mib": saved,
        "predicted_memory_term": terms["predicted_memory_term"],
        "predicted_time_term": terms["predicted_time_term"],
        **size_metrics(point, params, workload, described),
    }
    if timing:
        metrics.update(m.phase_metrics(stats, ALL_PHASES))
        if stages is not None:
            metrics.update(stages.as_metrics())
        metrics.update(nvml.state_metrics(state_start, state_end))  # all null on CPU
    effective = {
        **described,
        "table3_row": terms["table3_row"],
        "phases": list(workload.phases),
        "rss_peak_scope": memory.rss_peak_scope,
        "rss_large_allocs_mmapped": memory.rss_large_allocs_mmapped,
        "rss_mmapped_from_start": mmapped_from_start,
        "primed": primed,
        "torch_threads": torch.get_num_threads(),
    }
    return {"params": params, "effective": effective, "metrics": metrics}
