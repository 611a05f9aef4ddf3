"""One capacity probe in one fresh process: `python -m bench.capacity.probe --budget-mib N` reads a
GridPoint (workload train_step) on stdin, runs one warm step on a short prefix and then one full
training step under the budget, and prints the worker's record line (bench.worker).

The budget: on a GPU, torch.cuda.set_per_process_memory_fraction(budget / device total), so the
caching allocator raises OutOfMemoryError past it (an `oom` row, message parsed by the parent); the
CUDA context is outside it. On CPU, the worker's resident memory (RSS): the parent's watchdog kills
a worker over it while it runs, and this process checks its own peak RSS (ru_maxrss) after the step,
catching a peak between two watchdog polls. RLIMIT_AS is not used: torch and its thread pools
reserve address space they never touch, so an address-space limit fails far below the same RSS.
Where the profile fixes glibc's mmap threshold (BENCH_CAPACITY_MMAP_THRESHOLD_KIB), it is set before the
model is built, so every large tensor is its own mapping and RSS follows the live ones.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from bench import measure as m
from bench.capacity.budget import BEFORE_MODEL, BUDGET_ENV, MMAP_THRESHOLD_ENV
from bench.measure_point import flat_params
from bench.point import GridPoint
from bench.worker import main as worker_main
from bench.workloads import build_workload


class BudgetExceeded(MemoryError):
    """The step finished but its peak RSS was over the budget (the worker records it as `oom`)."""


def set_cuda_budget(budget_mib: float) -> float:
    """Cap this process's caching allocator at budget_mib; returns the fraction of the device set."""
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    fraction = min(1.0, budget_mib * 2**20 / total)
    torch.cuda.set_per_process_memory_fraction(fraction)
    return fraction


def measure_probe(point: GridPoint, budget_mib: float, mmap_threshold_kib: int | None = None) -> dict[str, Any]:
    """Run the probe; raises on OOM (the worker turns it into a row), else params, effective, metrics.
    `mmap_threshold_kib`: glibc's threshold fixed first (None: the allocator's default)."""
    cuda = m.is_cuda(point.device)
    fraction = set_cuda_budget(budget_mib) if cuda else None
    mmapped = m.mmap_large_allocations(mmap_threshold_kib * 1024) if mmap_threshold_kib is not None else False
    baseline_rss = m.current_rss_mib()
    workload = build_workload(point)
    n_params = sum(p.numel() for p in workload.module.parameters())
    assert workload.warm is not None, "a capacity probe needs the train_step workload"
    workload.warm()
    m.synchronize(point.device)
    m.reset_gpu_peak(point.device)
    clock = m.PhaseClock(point.device)
    workload.iteration(clock)
    m.synchronize(point.device)
    phases = clock.collect()
    peak_rss = max(m.peak_rss_mib(), m.current_rss_mib())  # the kernel updates ru_maxrss lazily
    gpu = m.gpu_peaks_mib(point.device)
    if not cuda and peak_rss > budget_mib:
        raise BudgetExceeded(f"peak RSS {peak_rss:.0f} MiB exceeded the budget of {budget_mib:.0f} MiB "
                             f"(read after the step)")
    metrics = {
        **{f"{name}_ms": ms for name, ms in phases.items()},  # fwd_ms, bwd_ms, opt_ms, step_ms
        "peak_alloc_mib": gpu["peak_alloc_mib"],
        "peak_reserved_mib": gpu["peak_reserved_mib"],
        "peak_rss_mib": peak_rss,
        "baseline_rss_mib": baseline_rss,
        "n_params": n_params,
    }
    effective = {**workload.effective(), "cuda_memory_fraction": fraction,
                 "torch_threads": torch.get_num_threads(), "rss_large_allocs_mmapped": mmapped}
    return {"params": flat_params(point), "effective": effective, "metrics": metrics}


def check_footprint(point: GridPoint, budget_mib: float) -> None:
    """On CPU, a worker already over the budget before its model is built: no length can fit, and
    its row says so (not a bare "nothing fits")."""
    held = m.current_rss_mib()
    if not m.is_cuda(point.device) and held > budget_mib:
        raise BudgetExceeded(f"the worker held {held:.0f} MiB {BEFORE_MODEL}, above the budget of "
                             f"{budget_mib:.0f} MiB: the budget is below the worker's own footprint")


def measure(point: GridPoint, timing: bool = True) -> dict[str, Any]:
    """The fork server's entry point for probes: the budget comes from BENCH_CAPACITY_BUDGET_MIB;
    the worker's own footprint is checked against it first."""
    budget_mib = float(os.environ[BUDGET_ENV])
    threshold = os.environ.get(MMAP_THRESHOLD_ENV)
    check_footprint(point, budget_mib)
    return measure_probe(point, budget_mib, int(threshold) if threshold else None)


def main(argv: list[str] | None = None) -> int:
    """One probe by hand: a GridPoint JSON on stdin, its record line on stdout."""
    parser = argparse.ArgumentParser(prog="python -m bench.capacity.probe")
    parser.add_argument("--budget-mib", type=float, required=True)
    parser.add_argument("--mmap-threshold-kib", type=int, default=None)
    args = parser.parse_args(argv)
    os.environ[BUDGET_ENV] = f"{args.budget_mib:g}"
    if args.mmap_threshold_kib is not None:
        os.environ[MMAP_THRESHOLD_ENV] = str(args.mmap_threshold_kib)
    return worker_main(measure)


if __name__ == "__main__":
    sys.exit(main())
