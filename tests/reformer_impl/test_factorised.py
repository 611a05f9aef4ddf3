"""Factorised buckets (n_buckets = (a, b)): a valid angular LSH of a x b buckets, and the LSH layer
on them equal to the dense reference with the same buckets."""
import pytest
import torch

from reformer_impl import ReformerConfig, build_attention, describe
from reformer_impl.attention.lsh import lsh_attention_core, padded_length
from reformer_impl.config import factor_buckets
from reformer_impl.hashing import hash_vectors, random_rotations
from tests.reformer_impl.conftest import tiny_cfg
from tests.reformer_impl.reference import lsh_attention_reference


def _rot(factors, n_hashes=3, d=16, heads=2, seed=0):
    return random_rotations(heads, d, n_hashes, factors, torch.Generator().manual_seed(seed), "cpu")


@pytest.mark.parametrize("factors", [(2, 2), (4, 6), (8, 4)])
def test_every_one_of_the_a_times_b_buckets_is_reachable_in_every_round(factors):
    a, b = factors
    rot = _rot(factors)
    assert rot.shape == (2, 16, 3, a // 2 + b // 2)  # a/2 + b/2 columns, not a * b / 2
    buckets = hash_vectors(torch.randn(1, 2, 6000, 16), rot, factors)  # (1, 2, 3, 6000)
    assert buckets.shape == (1, 2, 3, 6000)
    for h in range(2):
        for r in range(3):
            assert set(buckets[0, h, r].tolist()) == set(range(a * b)), (h, r)


@pytest.mark.parametrize("factors", [(2, 2), (4, 6), (16, 32)])
def test_negated_vector_moves_each_factor_half_its_buckets(factors):
    """h = h_a + a h_b with h_a, h_b angular: h(-x) = (h_a + a/2) mod a + a ((h_b + b/2) mod b)."""
    a, b = factors
    x = torch.randn(2, 2, 500, 16)
    rot = _rot(factors)
    h, h_neg = hash_vectors(x, rot, factors), hash_vectors(-x, rot, factors)
    h_a, h_b = h % a, h // a
    assert torch.equal(h_neg, (h_a + a // 2) % a + a * ((h_b + b // 2) % b))


def test_factorised_hash_is_two_plain_hashes_of_the_split_rotation():
    a, b = 4, 6
    x = torch.randn(1, 2, 300, 16)
    rot = _rot((a, b))
    plain_a = hash_vectors(x, rot[..., : a // 2])
    plain_b = hash_vectors(x, rot[..., a // 2 :])
    assert torch.equal(hash_vectors(x, rot, (a, b)), plain_a + a * plain_b)
    assert torch.equal(hash_vectors(3.5 * x, rot, (a, b)), hash_vectors(x, rot, (a, b)))  # angular: scale-free


def test_automatic_factors_are_balanced_and_cover_the_paper_count():
    assert factor_buckets(512) == (16, 32) and factor_buckets(256) == (16, 16) and factor_buckets(8192) == (64, 128)
    for n in range(16, 3000, 2):
        a, b = factor_buckets(n)
        assert a % 2 == 0 and b % 2 == 0 and a <= b and a * b >= n and a * a <= n <= 4 * a * a
        assert a * b - n < 2 * a + 2 * b, n  # at most one spare row or column of buckets
    assert factor_buckets(14) is None  # too few to gain: one rotation
    cfg = ReformerConfig(chunk_len=64, n_buckets="factorised", max_seq_len=16384)
    assert cfg.bucket_factors(16384) == (16, 32) and cfg.buckets_for(16384) == 512
    assert ReformerConfig(chunk_len=64).bucket_factors(16384) is None  # the paper's single rotation stays the default
    info = describe(cfg, 16384)
    assert info["n_buckets"] == 512 and info["bucket_factors"] == [16, 32]
    assert describe(ReformerConfig(chunk_len=64), 16384)["bucket_factors"] is None


def test_bucket_pairs_from_yaml_lists_are_tuples_and_bad_ones_are_refused():
    assert ReformerConfig(n_buckets=[4, 6]).n_buckets == (4, 6)
    assert ReformerConfig(n_buckets=[4, 6]) == ReformerConfig(n_buckets=(4, 6))
    for bad, why in (([4, 5], "two even integers"), ([4], "two even integers"), ("auto", "'factorised'")):
        with pytest.raises(ValueError, match=f"ReformerConfig.n_buckets=.*{why}"):
            ReformerConfig(n_buckets=bad)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("same_bucket", [False, True])
@pytest.mark.parametrize("n_buckets", [(2, 4), "factorised"])
def test_lsh_layer_with_factorised_buckets_equals_dense_reference(causal, same_bucket, n_buckets):
    """The layer hashes with two rotations; the core on those buckets equals explicit L x L windows."""
    cfg = tiny_cfg(n_hashes=3, chunk_len=4, causal=causal, same_bucket=same_bucket, n_buckets=n_buckets,
                   max_seq_len=128)
    layer = build_attention(cfg).double()
    seq_len = 118 if n_buckets == "factorised" else 22  # factorised: 2 * 120 / 4 = 60 buckets = 6 x 10
    lp = padded_length(seq_len, cfg.chunk_len)
    want_factors = (2, 4) if n_buckets != "factorised" else (6, 10)
    assert cfg.bucket_factors(lp) == want_factors
    q = torch.randn(2, 2, seq_len, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, seq_len, 8, dtype=torch.float64, requires_grad=True)
    out, buckets = layer.attend(q, None, v, None)
    n = want_factors[0] * want_factors[1]
    assert buckets[..., :seq_len].max() < n and torch.all(buckets[..., seq_len:] == n)
    assert len(buckets[..., :seq_len].unique()) > n // 2  # the product's buckets are used
    pad = (0, 0, 0, lp - seq_len)
    kw = dict(seq_len=seq_len, chunk_len=4, causal=causal, same_bucket=same_bucket, dup_correction=True)
    want = lsh_attention_reference(torch.nn.functional.pad(q, pad), torch.nn.functional.pad(v, pad), buckets, **kw)
    want = want[:, :, :seq_len]
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    cot = torch.randn_like(out)
    for got_g, want_g in zip(torch.autograd.grad(out, (q, v), cot), torch.autograd.grad(want, (q, v), cot)):
        torch.testing.assert_close(got_g, want_g, rtol=1e-9, atol=1e-11)
    core = lsh_attention_core(torch.nn.functional.pad(q, pad), torch.nn.functional.pad(v, pad), buckets,
                              dropout_p=0.0, **kw)[:, :, :seq_len]
    torch.testing.assert_close(core, out, rtol=0, atol=0)
