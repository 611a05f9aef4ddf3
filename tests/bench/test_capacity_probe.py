"""The probe's worker side: one warm step, one measured training step, and an RSS peak over the
budget turned into an `oom` row by the harness's worker."""
from __future__ import annotations

from bench.capacity.probe import BudgetExceeded, measure_probe
from bench.capacity.spec import CapacityConfig, CapacityPlan, SearchSpec
from bench.workloads import build_workload
from bench.worker import run_point

SETTINGS = {"attention": "lsh", "n_hashes": 1, "chunk_len": 16, "d_model": 16, "n_heads": 2, "d_ff": 32,
            "n_layers": 1, "vocab_size": 32, "dtype": "float32", "batch_size": 1, "reversible": True,
            "ff_chunks": 1, "causal": True, "shared_qk": True, "pos_emb": "axial", "dropout": 0.0,
            "same_bucket": False, "dup_correction": True, "n_buckets": None, "hash_seed": None}
PLAN = CapacityPlan(suite="t", profile="cpu", device="cpu", over="seq_len",
                    search=SearchSpec(over="seq_len", start=64, max_value=256, resolution=0.5, multiple=16),
                    memory_budget_gib=4.0, timeout_s=60.0, configs=(CapacityConfig("lsh", SETTINGS),))


def test_train_step_warm_creates_the_optimizer_state_before_the_measured_step():
    point = PLAN.point(PLAN.configs[0], 64)
    assert point.workload == "train_step" and point.model["max_seq_len"] == 64
    workload = build_workload(point)
    params = list(workload.module.parameters())
    workload.warm()
    assert all(p.grad is None for p in params)
    before = [p.detach().clone() for p in params]
    from bench.measure import PhaseClock

    clock = PhaseClock("cpu")
    workload.iteration(clock)
    assert set(clock.collect()) == {"fwd", "bwd", "opt", "step"}
    assert any(not b.equal(p) for b, p in zip(before, params))  # the optimizer stepped


def test_probe_metrics_and_an_rss_peak_over_the_budget_is_an_oom_row():
    point = PLAN.point(PLAN.configs[0], 64)
    out = measure_probe(point, budget_mib=64 * 1024)
    metrics = out["metrics"]
    assert metrics["step_ms"] > 0 and metrics["peak_rss_mib"] >= metrics["baseline_rss_mib"] > 0
    assert metrics["n_params"] > 0 and metrics["peak_alloc_mib"] is None
    assert out["params"]["seq_len"] == 64 and out["effective"]["attention"] == "lsh"
    record = run_point(point, lambda p: measure_probe(p, budget_mib=1.0))
    assert record["status"] == "oom"
    assert record["reason"].startswith(BudgetExceeded.__name__) and "peak RSS" in record["reason"]
