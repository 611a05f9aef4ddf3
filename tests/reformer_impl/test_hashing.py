import torch
import torch.nn.functional as F

from reformer_impl import hashing
from reformer_impl.hashing import hash_vectors, random_rotations


def _rot(n_buckets, n_hashes=4, d=16, heads=1, seed=0):
    return random_rotations(heads, d, n_hashes, n_buckets, torch.Generator().manual_seed(seed), "cpu")


def test_buckets_in_range_and_shape():
    x = torch.randn(2, 1, 50, 16)
    buckets = hash_vectors(x, _rot(8))
    assert buckets.shape == (2, 1, 4, 50)
    assert buckets.min() >= 0 and buckets.max() < 8
    assert len(buckets.unique()) > 4  # random inputs use many buckets


def test_hash_is_scale_invariant():
    x = torch.randn(1, 1, 100, 16)
    rot = _rot(16)
    assert torch.equal(hash_vectors(x, rot), hash_vectors(3.7 * x, rot))
    assert torch.equal(hash_vectors(x, rot), hash_vectors(0.01 * x, rot))


def test_collisions_rise_with_cosine_similarity():
    torch.manual_seed(0)
    n, d = 2000, 16
    base = F.normalize(torch.randn(n, d), dim=-1)
    noise = F.normalize(torch.randn(n, d), dim=-1)
    noise = F.normalize(noise - (noise * base).sum(-1, keepdim=True) * base, dim=-1)  # orthogonal to base
    rates = []
    for cos in (0.0, 0.5, 0.9, 0.99):
        other = cos * base + (1 - cos**2) ** 0.5 * noise
        rot = _rot(8, n_hashes=1, d=d, seed=int(cos * 100))
        hb = hash_vectors(base.view(1, 1, n, d), rot)
        ho = hash_vectors(other.view(1, 1, n, d), rot)
        rates.append((hb == ho).float().mean().item())
    assert rates == sorted(rates), rates
    assert rates[-1] > 0.8 and rates[0] < 0.3, rates  # 8 buckets: ~1/8 when orthogonal


def test_hash_in_sequence_tiles_equals_one_pass(monkeypatch):
    """Tiling bounds the hash's memory; it must not change a single bucket."""
    x = torch.randn(2, 3, 203, 16)
    rot = _rot(64, heads=3)
    whole = hash_vectors(x, rot)
    monkeypatch.setattr(hashing, "TILE_ELEMENTS", 2 * 3 * 4 * 32 * 10)  # 10 positions per tile, ragged end
    assert torch.equal(hash_vectors(x, rot), whole)


def test_negated_vector_lands_half_the_buckets_away():
    """h(x) = argmax [xR ; -xR], so h(-x) = (h(x) + n/2) mod n, exactly, in every round."""
    x = torch.randn(2, 3, 300, 16)
    for n_buckets in (2, 6, 16):
        rot = _rot(n_buckets, heads=3)
        assert torch.equal(hash_vectors(-x, rot), (hash_vectors(x, rot) + n_buckets // 2) % n_buckets)


def test_every_bucket_is_reachable_in_every_round():
    x = torch.randn(1, 1, 4000, 16)
    for n_buckets in (2, 8, 32):
        buckets = hash_vectors(x, _rot(n_buckets, n_hashes=3))  # (1, 1, 3, 4000)
        for r in range(3):
            assert set(buckets[0, 0, r].tolist()) == set(range(n_buckets)), (n_buckets, r)
