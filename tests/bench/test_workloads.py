"""Workloads and measure(point) on real tiny points: what the record carries, what ran, and the
device-independent memory figure's scaling."""
from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

from bench.point import GridPoint

importlib.import_module("reformer_impl.model")  # a broken model import fails these tests, never skips them

ATTN = {"d_model": 32, "n_heads": 2, "shared_qk": True, "causal": True}
LSH = {"n_hashes": 2, "chunk_len": 16}
MODEL = {"d_ff": 64, "n_layers": 2, "vocab_size": 32, "max_seq_len": 128, "pos_emb": "absolute"}
CONTRACT_METRICS = {
    "fwd_ms_median", "fwd_ms_q25", "fwd_ms_q75", "bwd_ms_median", "step_ms_median", "n_repeats",
    "peak_alloc_mib", "peak_reserved_mib", "nvml_device_used_mib", "nvml_process_used_mib",
    "peak_rss_mib", "rss_delta_mib", "saved_for_backward_mib", "predicted_memory_term",
    "predicted_time_term",
}


def point(attention="lsh", seq_len=64, workload="attention", impl="ours", **model) -> GridPoint:
    fields = {**ATTN, "attention": attention, **(LSH if attention == "lsh" else {}), **model}
    if workload == "model":
        fields = {**MODEL, **fields}
    return GridPoint("test", workload, "cpu", "float32", 2, seq_len, fields, impl=impl, repeats=2, warmup=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_measure_attention_point_follows_the_record_contract():
    from bench.measure_point import measure

    result = measure(point("lsh", seq_len=64))
    params, effective, metrics = result["params"], result["effective"], result["metrics"]
    assert params["workload"] == "attention" and params["seq_len"] == 64 and params["attention"] == "lsh"
    assert params["n_hashes"] == 2 and params["n_layers"] is None  # dropped by the grid -> null
    assert CONTRACT_METRICS <= set(metrics)
    assert metrics["n_repeats"] == 2
    assert metrics["fwd_ms_median"] > 0 and metrics["bwd_ms_median"] > 0
    assert metrics["opt_ms_median"] is None  # no optimizer on a layer alone
    assert metrics["peak_alloc_mib"] is None  # CPU: allocator figures do not apply
    assert metrics["saved_for_backward_mib"] > 0
    assert metrics["predicted_memory_term"] > 0
    assert effective["impl"] == "ours" and effective["attention"] == "lsh"
    assert effective["n_hashes"] == 2 and effective["padded_len"] == 64
    assert effective["table3_row"] == "LSH Transformer" and effective["phases"] == ["fwd", "bwd"]
    assert "reversible" not in effective  # a layer alone runs no blocks


def test_measure_model_point_times_the_optimizer_and_picks_the_reformer_row():
    from bench.measure_point import measure

    result = measure(point("lsh", seq_len=64, workload="model", reversible=True, ff_chunks=2))
    assert result["metrics"]["opt_ms_median"] > 0
    assert result["effective"]["phases"] == ["fwd", "bwd", "opt"]
    assert result["effective"]["table3_row"] == "Reformer"
    assert result["effective"]["reversible"] is True


def test_saved_for_backward_grows_quadratically_for_full_and_linearly_for_lsh():
    from bench.measure_point import saved_for_backward_mib
    from bench.workloads import build_workload

    def saved(attention: str, seq_len: int) -> float:
        return saved_for_backward_mib(build_workload(point(attention, seq_len=seq_len)))

    full = saved("full", 256) / saved("full", 128)
    lsh = saved("lsh", 256) / saved("lsh", 128)
    assert 3.0 < full <= 4.0  # the L x L probabilities dominate
    assert 1.8 < lsh < 2.2


def test_sdpa_point_records_the_backend_that_ran():
    from bench.workloads import build_workload

    wl = build_workload(point("sdpa", seq_len=32))
    wl.forward()
    assert wl.effective()["sdpa_backend"] in ("flash_cpu", "math", "flash", "efficient", "cudnn")


def test_unknown_model_field_is_refused_by_name():
    from bench.workloads import build_workload

    with pytest.raises(ValueError, match="bogus"):
        build_workload(point("full", bogus=1))


def test_peer_on_model_workload_is_refused():
    from bench.workloads import build_workload

    with pytest.raises(ValueError, match="impl='hf'"):
        build_workload(point("lsh", workload="model", impl="hf"))


def test_missing_peer_library_raises_workload_unavailable(monkeypatch):
    from bench import workloads

    real = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name.startswith(("reformer_pytorch", "transformers")):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(workloads.importlib, "import_module", fake_import)
    for impl, package in (("reformer_pytorch", "reformer-pytorch"), ("hf", "transformers")):
        with pytest.raises(workloads.WorkloadUnavailable, match=package):
            workloads.build_workload(point("lsh", impl=impl))


def test_bad_dtype_and_device_are_refused_by_name():
    from bench import workloads

    with pytest.raises(ValueError, match="dtype='float8'"):
        workloads.torch_dtype("float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda'"):
            workloads.check_device("cuda")


@pytest.mark.skipif(importlib.util.find_spec("reformer_pytorch") is None, reason="reformer-pytorch not installed")
def test_reformer_pytorch_records_its_silent_switch_to_full_attention():
    from bench.measure_point import measure
    from bench.workloads import build_workload

    long = measure(point("lsh", seq_len=64, impl="reformer_pytorch"))["effective"]
    assert long["impl"] == "reformer_pytorch" and long["attention"] == "lsh" and long["n_buckets"] == 4
    wl = build_workload(point("lsh", seq_len=16, impl="reformer_pytorch"))  # length <= bucket_size
    wl.forward()
    assert wl.effective()["attention"] == "full" and wl.effective()["n_hashes"] is None
    with pytest.raises(ValueError, match="seq_len=48"):
        build_workload(point("lsh", seq_len=48, impl="reformer_pytorch"))


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers not installed")
def test_hf_records_the_bucket_count_it_chose():
    from bench.workloads import build_workload

    wl = build_workload(point("lsh", seq_len=64, impl="hf"))
    out = wl.forward()
    assert out.shape == (2, 64, 32)
    eff = wl.effective()
    assert eff["impl"] == "hf" and eff["attention"] == "lsh"
    assert eff["n_buckets"] == 8  # 2 * 64 / 16, a power of two
    with pytest.raises(ValueError, match="seq_len=60"):
        build_workload(point("lsh", seq_len=60, impl="hf"))
