import pytest
import torch

from reformer_impl import ReformerConfig


@pytest.mark.parametrize(
    "changes, field, value",
    [
        (dict(d_model=250, n_heads=4), "d_model", "250"),
        (dict(n_buckets=7), "n_buckets", "7"),
        (dict(n_buckets=0), "n_buckets", "0"),
        (dict(chunk_len=0), "chunk_len", "0"),
        (dict(n_hashes=0), "n_hashes", "0"),
        (dict(n_hashes=256), "n_hashes", "256"),
        (dict(ff_chunks=0), "ff_chunks", "0"),
        (dict(attention="linear"), "attention", "'linear'"),
        (dict(dropout=1.5), "dropout", "1.5"),
        (dict(pos_emb="rotary"), "pos_emb", "'rotary'"),
        (dict(attention="lsh", shared_qk=False), "shared_qk", "False"),
        (dict(n_layers=0), "n_layers", "0"),
        (dict(causal="yes"), "causal", "'yes'"),
    ],
)
def test_impossible_config_is_refused_naming_field_and_value(changes, field, value):
    with pytest.raises(ValueError) as err:
        ReformerConfig(**changes)
    assert f"{field}={value}" in str(err.value)


def test_automatic_buckets_follow_the_paper():
    cfg = ReformerConfig(chunk_len=64)
    assert cfg.buckets_for(4096) == 2 * 4096 // 64
    assert ReformerConfig(n_buckets=16).buckets_for(4096) == 16


@pytest.mark.parametrize("seed", ["7", 2**70, 2**63, -1, True, 1.5])
def test_bad_hash_seed_is_refused_naming_the_field(seed):
    with pytest.raises(ValueError, match=r"ReformerConfig\.hash_seed=.*\[0, 2\*\*63\)"):
        ReformerConfig(hash_seed=seed)


@pytest.mark.parametrize("seed", [None, 0, 2**63 - 1])
def test_good_hash_seed_is_accepted_and_seeds_the_layer(seed):
    from reformer_impl import build_attention

    layer = build_attention(ReformerConfig(d_model=16, n_heads=2, hash_seed=seed))
    if seed is not None:
        assert layer.hash_seed == seed
        layer.hash(torch.randn(1, 2, 8, 8), 4)  # the generator takes it
