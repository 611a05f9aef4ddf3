"""Micro-benchmark: one causal attention layer, fwd + bwd, ours (full, sdpa, lsh x n_hashes) against
reformer-pytorch's and HF's LSH layers in the same run. `make bench-micro`; never part of `make test`."""
from __future__ import annotations

import os

import pytest
import torch

from bench.measure import SavedTensorCounter, synchronize
from bench.point import GridPoint
from bench.workloads import WorkloadUnavailable, build_workload
from benchmarks.conftest import ROWS

DEVICE = os.environ.get("BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
DTYPE = os.environ.get("BENCH_DTYPE") or ("bfloat16" if DEVICE == "cuda" else "float32")
LENGTHS = [int(x) for x in os.environ.get("BENCH_LENGTHS", "16384").split(",")]
# Naive full attention at 16384 needs several 4 GiB L x L tensors: too much for a 24 GiB CPU box.
FULL_MAX_LEN = int(os.environ.get("BENCH_FULL_MAX_LEN", "8192" if DEVICE == "cpu" else "32768"))

CASES = [  # (name, impl, attention, n_hashes, shared_qk)
    ("ours full (naive L x L)", "ours", "full", 1, True),
    ("ours sdpa", "ours", "sdpa", 1, False),
    *[(f"ours lsh n_hashes={n}", "ours", "lsh", n, True) for n in (1, 2, 4, 8)],
    ("reformer-pytorch 1.4.4 LSHSelfAttention n_hashes=4", "reformer_pytorch", "lsh", 4, True),
    ("HF transformers ReformerAttention (LSH) n_hashes=4", "hf", "lsh", 4, True),
]


def _point(impl, attention, n_hashes, shared_qk, seq_len) -> GridPoint:
    model = dict(d_model=256, n_heads=4, chunk_len=64, causal=True, attention=attention,
                 n_hashes=n_hashes, shared_qk=shared_qk, dropout=0.0, hash_seed=0)
    return GridPoint(suite="micro", workload="attention", device=DEVICE, dtype=DTYPE, batch_size=1,
                     seq_len=seq_len, model=model, impl=impl)


@pytest.mark.parametrize("seq_len", LENGTHS)
@pytest.mark.parametrize("order, case", list(enumerate(CASES)), ids=[c[0] for c in CASES])
def test_attention_layer(benchmark, order, case, seq_len):
    name, impl, attention, n_hashes, shared_qk = case
    if attention == "full" and seq_len > FULL_MAX_LEN:
        pytest.skip(f"naive full attention above {FULL_MAX_LEN} on {DEVICE}")
    try:
        work = build_workload(_point(impl, attention, n_hashes, shared_qk, seq_len))
    except WorkloadUnavailable as err:
        pytest.skip(str(err))

    def step():
        work.zero_grad()
        work.backward(work.forward())
        synchronize(DEVICE)

    step()  # warm-up, and what ran
    with SavedTensorCounter(exclude=list(work.module.parameters())) as counter:
        out = work.forward()
    work.backward(out)
    del out
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=0)
    stats = benchmark.stats.stats if benchmark.stats else None
    effective = work.effective()
    benchmark.extra_info.update(saved_for_backward_mib=counter.mib, effective=effective)
    if stats is not None:
        keep = ("attention", "n_hashes", "n_buckets", "chunk_len", "padded_len", "mode", "bucket_size")
        ROWS.append(dict(name=name, order=order, seq_len=seq_len, device=DEVICE, dtype=DTYPE,
                         median_s=stats.median, min_s=stats.min, rounds=stats.rounds, saved_mib=counter.mib,
                         effective=", ".join(f"{k}={v}" for k, v in effective.items() if k in keep and v is not None)))
