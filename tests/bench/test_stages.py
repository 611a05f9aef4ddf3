"""Stage breakdown of one profiled iteration: exclusive range times from the profiler's event tree,
recorded by measure() when asked (argument, point field or $BENCH_BREAKDOWN)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
import torch
from torch.profiler import record_function

from bench import stages as m


@dataclass
class _Span:
    start: float
    end: float


@dataclass
class _Event:
    name: str
    start: float
    end: float
    cpu_children: list = field(default_factory=list)

    @property
    def time_range(self):
        return _Span(self.start, self.end)


def test_exclusive_times_take_nested_stages_out():
    op = _Event("aten::mm", 12, 20)
    inner = _Event("hash", 10, 30, [op])
    deep = _Event("sort", 40, 45)
    wrapper = _Event("aten::add", 35, 50, [deep])  # a non-stage event between two stages
    outer = _Event("attention", 0, 100, [inner, wrapper])
    events = [outer, inner, op, wrapper, deep]
    stages = {"attention", "hash", "sort"}
    out = m.exclusive_stage_us(events, lambda e: e.name in stages)
    assert out == {"attention": 100 - 20 - 5, "hash": 20, "sort": 5}
    assert sum(out.values()) == 100  # the stages add up to the outermost range


def test_stage_times_as_metrics_add_other():
    st = m.StageTimes(stages_ms={"hash": 2.0, "attend": 5.0}, total_ms=10.0)
    assert st.as_metrics() == {"stage_ms.hash": 2.0, "stage_ms.attend": 5.0, "stage_ms.other": 3.0,
                               "stage_total_ms": 10.0}


def test_profile_stages_reads_record_function_ranges_by_name(one_torch_thread):
    a = torch.randn(64, 64, requires_grad=True)

    def step():
        with record_function("outer"):
            with record_function("inner"):
                b = (a @ a).sum()
            b.backward()

    named = m.profile_stages(step, "cpu", names=("outer", "inner"))
    assert set(named.stages_ms) == {"outer", "inner"}
    assert sum(named.stages_ms.values()) <= named.total_ms
    anyname = m.profile_stages(step, "cpu")  # without names: every user-annotated range
    assert {"outer", "inner"} <= set(anyname.stages_ms)
    assert not any(n.startswith("aten::") for n in anyname.stages_ms)


def _lsh_point(**extra):
    from bench.point import GridPoint

    return GridPoint(suite="t", workload="model", device="cpu", dtype="float32", batch_size=1, seq_len=128,
                     model={"attention": "lsh", "d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 2,
                            "chunk_len": 32, "n_hashes": 2, "vocab_size": 50}, repeats=1, warmup=0, **extra)


def test_measure_records_a_profiled_lsh_step(one_torch_thread):
    from bench.measure_point import measure, stage_names

    metrics = measure(_lsh_point(), breakdown=True)["metrics"]
    stages = {k.removeprefix("stage_ms.") for k in metrics if k.startswith("stage_ms.")}
    assert "other" in stages and metrics["stage_total_ms"] > 0
    assert sum(metrics[f"stage_ms.{s}"] for s in stages) == pytest.approx(metrics["stage_total_ms"])
    assert metrics["n_params"] > 0 and metrics["flops_fwd_bwd"] > 0 and metrics["input_bytes"] == 2 * 128 * 8
    named = stage_names()  # reformer_impl.STAGES where the model declares its ranges
    if named:  # every stage recorded is one of them (or the optimizer's), and every LSH one ran
        recorded = {s for s in stages - {"other"} if not s.startswith("Optimizer.step")}
        assert recorded <= set(named)
        lsh = {n for n in named if any(w in n for w in ("hash", "sort", "gather", "window", "lsh", "round", "dup"))}
        assert lsh and lsh <= recorded, lsh - recorded
    plain = measure(_lsh_point(), breakdown=False)["metrics"]
    assert not any(k.startswith("stage_") for k in plain)


def test_breakdown_switch(monkeypatch):
    from bench.measure_point import BREAKDOWN_ENV, wants_breakdown

    point = _lsh_point()
    monkeypatch.delenv(BREAKDOWN_ENV, raising=False)
    assert not wants_breakdown(point)
    monkeypatch.setenv(BREAKDOWN_ENV, "1")
    assert wants_breakdown(point) and not wants_breakdown(point, False)
    monkeypatch.setenv(BREAKDOWN_ENV, "0")
    assert not wants_breakdown(point)
    assert wants_breakdown(_lsh_point(breakdown=True)) and not wants_breakdown(_lsh_point(breakdown=True), False)
    monkeypatch.setenv(BREAKDOWN_ENV, "1")  # the run's --breakdown adds it to a point that does not ask
    assert wants_breakdown(_lsh_point(breakdown=None))


def test_calibration_is_recorded_in_the_environment(one_torch_thread):
    from bench.environment import capture_environment, matmul_gflops

    assert matmul_gflops("cpu", "float32", 128, repeats=2) > 0
    env = capture_environment("cpu", calibrate_matmul=True)
    assert env["matmul_gflops"]["float32"] > 0
    assert env["matmul_calibration"]["sizes"] == {"float32": 1024} and "under_load" in env["matmul_calibration"]
    assert "matmul_gflops" not in capture_environment("cpu", calibrate_matmul=False)
    assert env["matmul_calibration"]["min_s"] > 0


def test_calibration_keeps_timing_until_its_minimum_time(monkeypatch, one_torch_thread):
    """At least `repeats` products, and more until `min_s` has passed: a few 13 ms products alone
    once read a rate the steps of the same run then beat."""
    import torch

    from bench import environment

    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: calls.append(1) or real_mm(a, b))
    environment.matmul_gflops("cpu", "float32", 32, repeats=3, min_s=0.0)
    assert len(calls) == 1 + 3  # the warm-up and exactly the repeats
    calls.clear()
    monkeypatch.setattr(environment, "CALIBRATION_MAX_REPEATS", 10**9)
    began = time.perf_counter()
    environment.matmul_gflops("cpu", "float32", 32, repeats=3, min_s=0.05)
    assert time.perf_counter() - began >= 0.05 and len(calls) > 1 + 3
    calls.clear()
    monkeypatch.setattr(environment, "CALIBRATION_MAX_REPEATS", 7)  # the cap holds however fast the products are
    environment.matmul_gflops("cpu", "float32", 32, repeats=3, min_s=10.0)
    assert len(calls) == 1 + 7


def test_a_point_asking_for_a_breakdown_records_stage_times_under_the_same_id(one_torch_thread, monkeypatch):
    from bench.measure_point import BREAKDOWN_ENV, measure

    monkeypatch.delenv(BREAKDOWN_ENV, raising=False)
    point = _lsh_point(breakdown=True)
    assert point.point_id == _lsh_point().point_id  # how it is measured, not what
    metrics = measure(point)["metrics"]  # no argument: the point's field decides
    assert metrics["stage_total_ms"] > 0 and any(k.startswith("stage_ms.") and k != "stage_ms.other" for k in metrics)


def test_a_profiled_point_primes_the_profiler_before_its_baseline(one_torch_thread, monkeypatch):
    """The profiler's one-time memory lands before the RSS baseline, not in the timing process's
    rss_delta_mib (the part that grows with the step's events still does)."""
    from bench import measure_point

    calls = []
    real = m.profile_stages
    monkeypatch.setattr(m, "profile_stages", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    assert measure_point.prime(_lsh_point()) and calls == []
    assert measure_point.prime(_lsh_point(), profiled=True) and calls == ["cpu"]
