"""The measuring cores: statistics, phase timers, memory readings, bytes saved for backward."""
from __future__ import annotations

import gc
import itertools

import pytest
import torch

from bench import measure as m


def test_summarize_known_samples():
    stats = m.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (stats.median_ms, stats.q25_ms, stats.q75_ms, stats.n) == (3.0, 2.0, 4.0, 5)


def test_summarize_interpolates_even_counts():
    stats = m.summarize([1.0, 2.0, 3.0, 10.0])
    assert stats.median_ms == pytest.approx(2.5)
    assert stats.q25_ms == pytest.approx(1.75)
    assert stats.q75_ms == pytest.approx(4.75)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")]])
def test_summarize_refuses_empty_or_nan(bad):
    with pytest.raises(ValueError, match="samples_ms"):
        m.summarize(bad)


def test_timing_stats_as_metrics_names_the_phase():
    assert m.TimingStats(2.0, 1.0, 3.0, 4).as_metrics("bwd") == {
        "bwd_ms_median": 2.0, "bwd_ms_q25": 1.0, "bwd_ms_q75": 3.0,
    }


def test_phase_clock_cpu_arithmetic(monkeypatch):
    ticks = iter([10.0, 11.0, 11.5, 13.5])  # fwd 10 -> 11, bwd 11.5 -> 13.5
    monkeypatch.setattr(m.time, "perf_counter", lambda: next(ticks))
    clock = m.PhaseClock("cpu")
    with clock.phase("fwd"):
        pass
    with clock.phase("bwd"):
        pass
    got = clock.collect()
    assert got == pytest.approx({"fwd": 1000.0, "bwd": 2000.0, "step": 3500.0})
    assert clock.collect() == {}  # marks are consumed


def test_time_phases_warms_up_then_times_each_repeat(monkeypatch):
    counter = itertools.count()
    monkeypatch.setattr(m.time, "perf_counter", lambda: float(next(counter)))
    calls = []

    def iteration(clock: m.PhaseClock) -> None:
        calls.append(1)
        with clock.phase("fwd"):
            pass

    stats = m.time_phases(iteration, "cpu", repeats=3, warmup=2)
    assert len(calls) == 5
    assert stats["fwd"].n == 3 and stats["step"].n == 3
    assert stats["fwd"].median_ms == pytest.approx(1000.0)  # each fwd spans one tick


def test_time_phases_refuses_zero_repeats():
    with pytest.raises(ValueError, match="repeats=0"):
        m.time_phases(lambda clock: None, "cpu", repeats=0)


def test_phase_metrics_nulls_phases_that_did_not_run():
    stats = {"fwd": m.TimingStats(1.0, 1.0, 1.0, 3), "step": m.TimingStats(2.0, 2.0, 2.0, 3)}
    out = m.phase_metrics(stats, ("fwd", "bwd", "opt", "step"))
    assert out["fwd_ms_median"] == 1.0 and out["step_ms_median"] == 2.0
    assert out["opt_ms_median"] is None and out["bwd_ms_q75"] is None
    assert out["n_repeats"] == 3


def test_saved_counter_mul_saves_both_inputs():
    x = torch.randn(1000, requires_grad=True)  # 4000 bytes each
    y = torch.randn(1000, requires_grad=True)
    with m.SavedTensorCounter() as counter:
        out = x * y
    assert counter.nbytes == 2 * 4000
    out.sum().backward()  # the hooks let autograd work as usual
    assert torch.equal(x.grad, y.detach())


def test_saved_counter_counts_a_storage_once_and_excludes_parameters():
    x = torch.randn(256, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(256, dtype=torch.float64))
    with m.SavedTensorCounter(exclude=[w]) as counter:
        a = x * x  # saves x twice: one storage
        b = x[:128] * x[128:]  # views of x: still the same storage
        c = a.double() * w  # saves a.double() (2048 bytes) and w (excluded)
    assert counter.nbytes == 256 * 4 + 256 * 8
    del b, c


@pytest.mark.parametrize("op", [torch.exp, lambda t: torch.softmax(t, dim=-1)])
def test_saved_counter_frees_a_forward_that_is_never_backpropagated(op):
    """Ops that save their own output (exp, softmax, as LSH attention does) must not keep their graph
    alive through the counter: the memory reading runs after such a forward, and must not see it."""
    import weakref

    x = torch.randn(64, 64, requires_grad=True)
    with m.SavedTensorCounter() as counter:
        y = op(x)
    assert counter.nbytes == 64 * 64 * 4
    alive = weakref.ref(y)
    del y
    assert alive() is None


def test_saved_counter_sees_no_grad_work_as_nothing():
    x = torch.randn(64, requires_grad=True)
    with torch.no_grad(), m.SavedTensorCounter() as counter:
        x.exp().sin()
    assert counter.nbytes == 0


def settled_rss_mib() -> float:
    """RSS with the heap that earlier tests freed handed back, as measure() takes its baseline
    (after prime's trim): otherwise a trim inside read_memory, or the reuse of freed but resident
    heap pages, moves RSS by however much garbage the tests before left behind."""
    gc.collect()
    m.trim_host_heap()
    return m.current_rss_mib()


def test_peak_rss_reset_tracks_a_new_allocation():
    settled_rss_mib()  # no resident free heap for the block to reuse without growing RSS
    if not m.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here")
    before = m.peak_rss_mib()
    block = torch.ones(16 * 2**20)  # 64 MiB, touched
    grown = m.peak_rss_mib()
    del block
    m.trim_host_heap()  # had the block reused freed heap, freeing it returned nothing until a trim
    assert m.reset_peak_rss()
    assert grown - before >= 48
    assert m.peak_rss_mib() < grown - 32  # the high-water mark came back down


def test_read_memory_on_cpu_sees_the_iteration_and_no_gpu():
    """The iteration's transient 64 MiB shows in the peak (it is freed before read_memory returns).
    The baseline is settled first: a baseline holding freed heap that read_memory's own trim hands
    back read 18 MiB, or 0, for a 32 MiB buffer after other tests in the same process."""

    def iteration(clock: m.PhaseClock) -> None:
        with clock.phase("fwd"):
            buf = torch.ones(16 * 2**20)  # 64 MiB, touched, freed within the iteration
            del buf

    baseline = settled_rss_mib()
    reading = m.read_memory(iteration, "cpu", baseline)
    assert reading.peak_alloc_mib is None and reading.nvml_device_used_mib is None
    assert reading.rss_delta_mib >= 48
    assert reading.peak_rss_mib >= baseline + 48
    assert set(reading.as_metrics()) == {
        "peak_alloc_mib", "peak_reserved_mib", "nvml_device_used_mib", "nvml_process_used_mib",
        "nvml_device_peak_mib", "nvml_process_peak_mib", "peak_rss_mib", "rss_delta_mib",
    }


def test_gpu_readings_are_null_on_cpu():
    assert m.gpu_peaks_mib("cpu") == {"peak_alloc_mib": None, "peak_reserved_mib": None}
    assert m.open_nvml("cpu") is None


def test_rss_peak_is_reset_before_the_measured_iteration():
    """A large allocation freed before the iteration must not appear in its reported peak."""
    before = torch.ones(64 * 2**20)  # 256 MiB, touched, then freed: RSS peaked with it
    freed_peak = m.peak_rss_mib()
    del before

    def iteration(clock: m.PhaseClock) -> None:
        with clock.phase("fwd"):
            torch.ones(2**20).sum()  # 4 MiB

    reading = m.read_memory(iteration, "cpu", m.current_rss_mib())
    if reading.rss_peak_scope != "iteration":
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert reading.peak_rss_mib < freed_peak - 200
    assert reading.rss_delta_mib < 50


def test_one_mib_is_two_to_the_twentieth_bytes(monkeypatch):
    """Exact figures on known sizes: every conversion divides by 2**20, none by 10**6 or 2**10."""
    x = torch.ones(2**18, requires_grad=True)  # 2**18 float32 = exactly 1 MiB
    y = torch.ones(2**18, dtype=torch.float64, requires_grad=True)  # exactly 2 MiB
    with m.SavedTensorCounter() as counter:
        out = x.double() * y  # saves x.double() (2 MiB) and y (2 MiB)
    assert counter.nbytes == 4 * 2**20 and counter.mib == 4.0
    del out

    class Usage:
        ru_maxrss = 3 * 1024  # KiB on Linux
    monkeypatch.setattr(m.resource, "getrusage", lambda who: Usage())
    monkeypatch.setattr(m.os, "uname", lambda: type("U", (), {"sysname": "Linux"})())
    assert m.peak_rss_mib() == 3.0

    class Reader:
        def device_used_bytes(self):
            return 5 * 2**20

        def process_used_bytes(self):
            return 3 * 2**19
    assert m.nvml_used_mib(Reader()) == {"nvml_device_used_mib": 5.0, "nvml_process_used_mib": 1.5}


def test_combine_processes_median_and_spread():
    from bench.metrics import MEMORY_METRICS, combine_processes

    runs = [{"fwd_ms_median": 2.0, "peak_rss_mib": 30.0, "peak_alloc_mib": None},
            {"peak_rss_mib": 10.0, "peak_alloc_mib": None},
            {"peak_rss_mib": 20.0, "peak_alloc_mib": None}]
    out = combine_processes(runs)
    assert out["fwd_ms_median"] == 2.0 and out["memory_processes"] == 3
    assert (out["peak_rss_mib"], out["peak_rss_mib_min"], out["peak_rss_mib_max"]) == (20.0, 10.0, 30.0)
    assert out["peak_alloc_mib"] is None and out["peak_alloc_mib_max"] is None
    assert combine_processes(runs[:2])["peak_rss_mib"] == 20.0  # even count: mean of the middle two
    assert set(out) <= set(m.METRIC_NAMES) and set(MEMORY_METRICS) <= set(out)
    with pytest.raises(ValueError, match="no process readings"):
        combine_processes([])


def test_metric_names_cover_what_a_real_point_emits():
    from bench.measure_point import measure
    from bench.metrics import combine_processes
    from bench.point import GridPoint

    point = GridPoint(suite="t", workload="attention", device="cpu", dtype="float32", batch_size=1,
                      seq_len=32, model={"attention": "full", "d_model": 16, "n_heads": 2}, repeats=1, warmup=0)
    timed_record, memory_record = measure(point), measure(point, timing=False)
    timed, memory_only = timed_record["metrics"], memory_record["metrics"]
    assert "fwd_ms_median" not in memory_only and set(memory_only) < set(timed)
    # a memory-only process mmaps large allocations from its start (glibc here), a timed one does not
    assert timed_record["effective"]["rss_mmapped_from_start"] is False
    assert memory_record["effective"]["rss_mmapped_from_start"] is m.mmap_large_allocations()
    combined = combine_processes([timed, memory_only])
    assert set(combined) == set(m.METRIC_NAMES), set(combined) ^ set(m.METRIC_NAMES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_peak_alloc_sees_a_tensor():
    m.reset_gpu_peak("cuda")
    block = torch.ones(16 * 2**20, device="cuda")  # 64 MiB
    peaks = m.gpu_peaks_mib("cuda")
    del block
    assert peaks["peak_alloc_mib"] >= 64
    clock = m.PhaseClock("cuda")
    with clock.phase("fwd"):
        torch.ones(1024, device="cuda").sum()
    assert set(clock.collect()) == {"fwd", "step"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_figures_are_exact_mib_and_nvml_samples_a_peak():
    torch.cuda.synchronize()
    m.reset_gpu_peak("cuda")
    block = torch.empty(2**18, device="cuda")  # exactly 1 MiB (a multiple of the 512-byte rounding)
    base = torch.cuda.memory_allocated()
    m.reset_gpu_peak("cuda")
    extra = torch.empty(3 * 2**18, device="cuda")  # 3 MiB more
    assert m.gpu_peaks_mib("cuda")["peak_alloc_mib"] == (base + 3 * 2**20) / 2**20
    del block, extra
    reader = m.open_nvml("cuda")
    assert reader is not None

    def iteration(clock: m.PhaseClock) -> None:
        with clock.phase("fwd"):
            big = torch.ones(256 * 2**18, device="cuda")  # 256 MiB, freed at once
            torch.cuda.synchronize()
            del big
            torch.cuda.empty_cache()

    try:
        reading = m.read_memory(iteration, "cuda", m.current_rss_mib(), nvml_reader=reader)
        state = reader.state()
    finally:
        reader.close()
    assert reading.nvml_device_peak_mib >= reading.nvml_device_used_mib + 200
    assert state.sm_clock_mhz and state.throttle_reasons is not None
