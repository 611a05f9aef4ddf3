"""Micro-benchmark: the LSH hash alone (rotations and argmax), plain (the paper's one rotation of
n_buckets / 2 columns) against factorised (two rotations of a/2 and b/2 columns), at 16K and 64K
tokens. `make bench-micro`; never part of `make test`. Env: HASH_LENGTHS, HASH_ROUNDS."""
from __future__ import annotations

import os

import pytest
import torch

from reformer_impl import ReformerConfig
from reformer_impl.hashing import hash_vectors, random_rotations

LENGTHS = [int(x) for x in os.environ.get("HASH_LENGTHS", "16384,65536").split(",")]
ROUNDS = int(os.environ.get("HASH_ROUNDS", "2"))
N_HEADS, D_HEAD, CHUNK_LEN = 4, 64, 64


@pytest.mark.parametrize("seq_len", LENGTHS)
@pytest.mark.parametrize("n_buckets", [None, "factorised"], ids=["plain", "factorised"])
def test_hash(benchmark, n_buckets, seq_len):
    cfg = ReformerConfig(d_model=N_HEADS * D_HEAD, n_heads=N_HEADS, chunk_len=CHUNK_LEN, n_hashes=ROUNDS,
                         n_buckets=n_buckets, max_seq_len=seq_len)
    factors = cfg.bucket_factors(seq_len)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, N_HEADS, seq_len, D_HEAD, generator=gen)
    rotations = random_rotations(N_HEADS, D_HEAD, ROUNDS, factors or cfg.buckets_for(seq_len), gen, "cpu")
    buckets = benchmark.pedantic(hash_vectors, args=(x, rotations, factors), rounds=3, iterations=1, warmup_rounds=1)
    assert buckets.shape == (1, N_HEADS, ROUNDS, seq_len)
    benchmark.extra_info.update(n_buckets=cfg.buckets_for(seq_len), bucket_factors=factors,
                                rotation_columns=rotations.shape[-1], n_hashes=ROUNDS, threads=torch.get_num_threads())
