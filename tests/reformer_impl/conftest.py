import pytest
import torch

from reformer_impl import ReformerConfig


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def tiny_cfg(**kw) -> ReformerConfig:
    base = dict(d_model=16, n_heads=2, d_ff=32, n_layers=2, vocab_size=13, max_seq_len=64, attention="lsh",
                n_hashes=2, chunk_len=4, causal=True, reversible=False, hash_seed=1234)
    base.update(kw)
    return ReformerConfig(**base)
