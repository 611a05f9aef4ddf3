"""Micro-benchmark: what reformer_impl's stage ranges cost when no profiler runs. One causal LSH
layer fwd + bwd as shipped against the same with the ranges replaced by a bare no-op, and one
range enter/exit alone. Compare the medians (`make bench-micro`); never part of `make test`."""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from reformer_impl import ReformerConfig, build_attention, profiling
from reformer_impl.attention import lsh, lsh_core

SEQ_LEN = int(os.environ.get("OVERHEAD_SEQ_LEN", "4096"))
_BARE = contextlib.nullcontext()


def _layer_step():
    cfg = ReformerConfig(d_model=256, n_heads=4, chunk_len=64, n_hashes=4, hash_seed=0, max_seq_len=SEQ_LEN)
    torch.manual_seed(0)
    layer = build_attention(cfg)
    x = torch.randn(1, SEQ_LEN, 256, requires_grad=True)
    grad = torch.randn(1, SEQ_LEN, 256)

    def step():
        x.grad = None
        layer(x).backward(grad)

    return step


@pytest.mark.parametrize("ranges", ["as shipped", "bare no-op"])
def test_lsh_step_with_and_without_stage_ranges(benchmark, monkeypatch, ranges):
    if ranges == "bare no-op":
        for module in (lsh, lsh_core):
            monkeypatch.setattr(module, "stage", lambda name: _BARE)
    step = _layer_step()
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)


def test_one_stage_range_unprofiled(benchmark):
    def enter_exit():
        with profiling.stage(profiling.GATHER):
            pass

    benchmark(enter_exit)
