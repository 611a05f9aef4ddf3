"""Measuring cores, kept apart from the model: phase timers, summary statistics and memory readings.

Knows nothing of reformer_impl. Every reading that needs a GPU or NVML is guarded and returns None
where it does not apply, so this module imports and runs on a CPU-only machine; CUDA is touched
only when a function is called with device 'cuda'.
"""
from __future__ import annotations

import ctypes
import os
import resource
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import psutil
import torch

from bench import nvml
from bench.metrics import METRIC_NAMES, PHASES  # noqa: F401  (the record's metric names)

MIB = 2**20


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class TimingStats:
    """Median and interquartile range of repeated timings, in milliseconds."""

    median_ms: float
    q25_ms: float
    q75_ms: float
    n: int

    def as_metrics(self, name: str) -> dict[str, float]:
        """Record columns for one phase: `<name>_ms_median`, `_q25`, `_q75`."""
        return {
            f"{name}_ms_median": self.median_ms,
            f"{name}_ms_q25": self.q25_ms,
            f"{name}_ms_q75": self.q75_ms,
        }


def summarize(samples_ms: Sequence[float]) -> TimingStats:
    """Median, 25th and 75th percentile (linear interpolation, numpy's default) of the samples."""
    values = np.asarray(list(samples_ms), dtype=float)
    if values.size == 0:
        raise ValueError("summarize: samples_ms is empty; need at least one timing")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"summarize: samples_ms has non-finite values: {values.tolist()}")
    q25, median, q75 = np.percentile(values, [25, 50, 75])
    return TimingStats(median_ms=float(median), q25_ms=float(q25), q75_ms=float(q75), n=int(values.size))


# --------------------------------------------------------------------------- timers


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def synchronize(device: str) -> None:
    """Wait for queued GPU work; nothing to wait for on CPU."""
    if is_cuda(device) and torch.cuda.is_available():
        torch.cuda.synchronize()


class PhaseClock:
    """Times the named phases of one iteration (e.g. fwd, bwd, opt) and the whole iteration ('step').

    GPU: a pair of CUDA events per phase, read after one synchronize at the end, so timing does not
    stall the queue between phases. CPU: time.perf_counter around each phase (CPU ops are
    synchronous, nothing to wait for).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._cuda = is_cuda(device)
        self._marks: list[tuple[str, Any, Any]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self._cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._marks.append((name, start, end))

    def collect(self) -> dict[str, float]:
        """Milliseconds per phase of the iteration just run, plus 'step' from first start to last end."""
        if not self._marks:
            return {}
        if self._cuda:
            torch.cuda.synchronize()
            elapsed = lambda a, b: float(a.elapsed_time(b))  # noqa: E731
        else:
            elapsed = lambda a, b: (b - a) * 1e3  # noqa: E731
        out: dict[str, float] = {}
        for name, start, end in self._marks:
            out[name] = out.get(name, 0.0) + elapsed(start, end)
        out["step"] = elapsed(self._marks[0][1], self._marks[-1][2])
        self._marks = []
        return out


Iteration = Callable[[PhaseClock], None]


def run_untimed(iteration: Iteration, device: str, n: int) -> None:
    """Warm-up: run the iteration n times, discarding the timings."""
    for _ in range(n):
        clock = PhaseClock(device)
        iteration(clock)
        clock.collect()


def time_phases(iteration: Iteration, device: str, repeats: int, warmup: int = 0) -> dict[str, TimingStats]:
    """Warm up, then run `repeats` timed iterations; summary statistics per phase (and 'step')."""
    if repeats < 1:
        raise ValueError(f"time_phases: repeats={repeats} must be >= 1")
    run_untimed(iteration, device, warmup)
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        clock = PhaseClock(device)
        iteration(clock)
        for name, ms in clock.collect().items():
            samples.setdefault(name, []).append(ms)
    return {name: summarize(values) for name, values in samples.items()}


# --------------------------------------------------------------------------- host memory


def current_rss_mib() -> float:
    """This process's resident set size now."""
    return psutil.Process().memory_info().rss / MIB


def peak_rss_mib() -> float:
    """This process's peak RSS (ru_maxrss: KiB on Linux, bytes on macOS)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return maxrss * scale / MIB


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0, /proc/self/clear_refs
    '5'), so ru_maxrss afterwards is the peak of what follows. False where that is not possible:
    then the peak covers the process's whole life, which is why each point runs in a fresh process."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def trim_host_heap() -> bool:
    """Hand freed heap memory back to the OS (glibc malloc_trim), so a baseline taken afterwards does
    not include memory a previous workload freed but the allocator kept. False where unavailable."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter (malloc.h)


def mmap_large_allocations(threshold_bytes: int = 128 * 1024) -> bool:
    """Make glibc serve every allocation above the threshold with its own mmap, returned to the OS on
    free (a fixed threshold also stops glibc raising it dynamically). Peak RSS then follows the live
    large tensors instead of heap fragments. It costs page faults, so the memory suite sets it only for
    its memory reading, after timing; a capacity probe sets it where its profile asks. False where not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------- GPU memory


def reset_gpu_peak(device: str) -> None:
    if is_cuda(device) and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peaks_mib(device: str) -> dict[str, float | None]:
    """Allocator peaks since the last reset: what tensors used, and what the caching allocator held."""
    if not (is_cuda(device) and torch.cuda.is_available()):
        return {"peak_alloc_mib": None, "peak_reserved_mib": None}
    return {
        "peak_alloc_mib": torch.cuda.max_memory_allocated() / MIB,
        "peak_reserved_mib": torch.cuda.max_memory_reserved() / MIB,
    }


def open_nvml(device: str) -> "nvml.NvmlReader | None":
    """An NVML reader for the GPU torch is using, or None on CPU or without NVML."""
    if not (is_cuda(device) and torch.cuda.is_available()):
        return None
    return nvml.open_reader(_nvml_index())


def nvml_used_mib(reader: "nvml.Reader | None") -> dict[str, float | None]:
    """NVML's device-wide and this process's used memory, read once now (not a peak; both include
    the CUDA context and the allocator's cache). None without a reader or per-process data."""
    out: dict[str, float | None] = {"nvml_device_used_mib": None, "nvml_process_used_mib": None}
    if reader is not None:
        device, process = nvml.safe(reader.device_used_bytes), nvml.safe(reader.process_used_bytes)
        out["nvml_device_used_mib"] = None if device is None else device / MIB
        out["nvml_process_used_mib"] = None if process is None else process / MIB
    return out


def _nvml_index() -> int:
    """NVML counts physical GPUs; map torch's current device through CUDA_VISIBLE_DEVICES."""
    index = torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index < len(ids) and ids[index].isdigit():
        return int(ids[index])
    return index


# --------------------------------------------------------------------------- saved for backward


class SavedTensorCounter:
    """Counts the bytes autograd saves for backward inside the `with` block (device-independent).

    Uses torch.autograd.graph.saved_tensors_hooks; each storage counts once (views and repeated saves
    of one tensor share a storage, deduplicated by data_ptr), and storages of `exclude` tensors
    (e.g. the parameters, resident anyway) are not counted. Tensors a custom autograd Function keeps
    as plain ctx attributes instead of ctx.save_for_backward are invisible to the hooks.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._seen: dict[tuple[str, int], int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key[1] != 0 and key not in self._excluded and key not in self._seen:
            self._seen[key] = tensor.untyped_storage().nbytes()
        # A new tensor on the same storage: returning `tensor` itself, for an op that saves its own
        # output (softmax, exp, LSH attention), would make the output hold itself through its graph,
        # a cycle of C++ references no collector sees, so a forward never backpropagated leaked.
        return tensor.detach()

    def __enter__(self) -> "SavedTensorCounter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self._seen.values())

    @property
    def mib(self) -> float:
        return self.nbytes / MIB


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    try:
        return (str(tensor.device), tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # sparse / meta / tensor subclasses without storage
        return (str(tensor.device), 0)


# --------------------------------------------------------------------------- one place for readings


@dataclass(frozen=True)
class MemoryReading:
    """Every memory figure of one point, in MiB, None where it does not apply."""

    peak_alloc_mib: float | None
    peak_reserved_mib: float | None
    nvml_device_used_mib: float | None
    nvml_process_used_mib: float | None
    nvml_device_peak_mib: float | None  # sampled every ~1 ms during the iteration (bench.nvml)
    nvml_process_peak_mib: float | None
    peak_rss_mib: float
    rss_delta_mib: float
    rss_peak_scope: str  # 'iteration' when the high-water mark was reset before it, else 'process'
    rss_large_allocs_mmapped: bool  # glibc served large allocations with their own mmap (exact RSS)

    def as_metrics(self) -> dict[str, float | None]:
        d = dict(self.__dict__)
        d.pop("rss_peak_scope")
        d.pop("rss_large_allocs_mmapped")
        return d


def read_memory(
    iteration: Iteration, device: str, baseline_rss_mib: float, nvml_reader: "nvml.Reader | None" = None
) -> MemoryReading:
    """Run one untimed iteration between peak resets and read every memory figure. Run it after the
    timed iterations: on CPU it switches glibc to mmap every large allocation (see
    mmap_large_allocations) and first trims the heap, so the RSS peak is that of live memory.

    `baseline_rss_mib` is the RSS taken before the workload was built, so `rss_delta_mib` (peak RSS
    during the iteration minus the baseline) holds weights, inputs, optimizer state and activations.
    With an NVML reader, device and process used memory are sampled during the iteration (peaks).
    """
    synchronize(device)
    mmapped = mmap_large_allocations()
    trim_host_heap()
    reset_gpu_peak(device)
    scope = "iteration" if reset_peak_rss() else "process"
    sampler = nvml.PeakSampler(nvml_reader) if nvml_reader is not None else None
    with sampler if sampler is not None else nullcontext():
        run_untimed(iteration, device, 1)
        synchronize(device)
    peak_rss = peak_rss_mib()
    peaks = sampler.peaks_mib() if sampler is not None else {
        "nvml_device_peak_mib": None, "nvml_process_peak_mib": None}
    return MemoryReading(
        **gpu_peaks_mib(device),
        **nvml_used_mib(nvml_reader),
        **peaks,
        peak_rss_mib=peak_rss,
        rss_delta_mib=max(0.0, peak_rss - baseline_rss_mib),
        rss_peak_scope=scope,
        rss_large_allocs_mmapped=mmapped,
    )


def phase_metrics(stats: Mapping[str, TimingStats], phases: Sequence[str]) -> dict[str, float | None]:
    """Record columns for the given phases (null for a phase that did not run) and n_repeats."""
    out: dict[str, float | None] = {}
    for name in phases:
        if name in stats:
            out.update(stats[name].as_metrics(name))
        else:
            out.update({f"{name}_ms_median": None, f"{name}_ms_q25": None, f"{name}_ms_q75": None})
    out["n_repeats"] = next(iter(stats.values())).n if stats else 0
    return out

