"""LSH approximation figures: exact where LSH must equal full attention, the visible sets the real
layer uses, recall growing with rounds, and activations captured from a real model."""
from __future__ import annotations

import pytest
import torch

from bench.quality.approximation import (
    approximation, capture_qkv, full_attention, lsh_attention, mass_recall, relative_error, sweep, visible_keys,
)
from reformer_impl import ReformerConfig, ReformerLM
from reformer_impl.attention.full import dense_attention
from reformer_impl.attention.base import shared_keys


def _qv(b=1, h=2, length=32, dh=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, length, dh, generator=gen, dtype=torch.float64),
            torch.randn(b, h, length, dh, generator=gen, dtype=torch.float64))


@pytest.mark.parametrize("causal", [True, False])
def test_full_attention_probabilities_are_the_model_s_full_attention(causal):
    q, v = _qv()
    probs, out = full_attention(q, v, causal=causal)
    expected = dense_attention(q, shared_keys(q), v, scale=1.0, causal=causal, self_mask=True)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 32, dtype=torch.float64))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_hashes, length, chunk_len", [(1, 32, 16), (4, 30, 16), (2, 12, 32)])
def test_a_window_covering_the_sequence_gives_recall_one_and_no_error(causal, n_hashes, length, chunk_len):
    q, v = _qv(length=length)
    result = approximation(q, v, n_hashes=n_hashes, chunk_len=chunk_len, seed=3, causal=causal)
    assert result.mass_recall == pytest.approx(1.0, abs=1e-12)
    assert result.relative_error < 1e-10


def test_visible_sets_of_hand_made_buckets():
    # One round, L = 8, chunks of 2: sorted by (bucket, position) the order is 1 3 | 6 0 | 2 7 | 4 5.
    buckets = torch.tensor([1, 0, 1, 0, 2, 2, 0, 1]).view(1, 1, 1, 8)
    visible = visible_keys(buckets, chunk_len=2, seq_len=8)[0, 0]
    sees = {i: set(torch.nonzero(visible[i]).flatten().tolist()) for i in range(8)}
    assert sees[1] == sees[3] == {1, 3, 4, 5}  # first chunk looks back to the last (cyclic)
    assert sees[6] == sees[0] == {6, 0, 1, 3}
    assert sees[2] == sees[7] == {2, 7, 6, 0}
    assert sees[4] == sees[5] == {4, 5, 2, 7}
    # Uniform attention: each query sees 4 of 8 keys, half the mass.
    assert mass_recall(torch.full((8, 8), 1 / 8), visible) == pytest.approx(0.5)
    # A second round adds its windows to the union: identity-like buckets 0..3 twice in order.
    second = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]).view(1, 1, 1, 8)
    union = visible_keys(torch.cat([buckets, second], dim=2), chunk_len=2, seq_len=8)[0, 0]
    assert set(torch.nonzero(union[0]).flatten().tolist()) == {6, 0, 1, 3} | {0, 1, 6, 7}
    # Padding (positions >= seq_len) is sorted last and seen by no one.
    padded = visible_keys(torch.tensor([0, 0, 0, 0, 0, 9, 9, 9]).view(1, 1, 1, 8), chunk_len=2, seq_len=5)
    assert padded.shape == (1, 1, 5, 5) and padded[0, 0, 4].tolist() == [False, False, True, True, True]


@pytest.mark.parametrize("causal", [True, False])
def test_one_round_lsh_is_full_attention_restricted_to_the_visible_keys(causal):
    """The visible sets are the real layer's: renormalising full attention over them gives its output."""
    q, v = _qv(length=30)
    probs, _ = full_attention(q, v, causal=causal)
    out, buckets = lsh_attention(q, v, n_hashes=1, chunk_len=4, seed=11, causal=causal)
    visible = visible_keys(buckets, chunk_len=4, seq_len=30)
    # Softmax of full attention's logits over the visible keys (from logits, not from `probs`: a
    # causal query whose window holds only itself and future keys attends to itself, mass e^-1e5).
    logits = torch.einsum("bhid,bhjd->bhij", q, shared_keys(q))
    pos = torch.arange(30)
    logits = logits.masked_fill(pos[:, None] == pos[None, :], -1e5)
    if causal:
        logits = logits.masked_fill(pos[None, :] > pos[:, None], -1e9)
    expected = logits.masked_fill(~visible, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    if causal:  # where the window holds no past key, full attention's mass is missed entirely
        assert (probs * visible).sum(-1).min() < 1e-6
    assert visible.float().mean() < 0.5  # several chunks: a real restriction


def test_recall_grows_with_hash_rounds_on_average_over_seeds():
    q, v = _qv(b=1, h=2, length=64, dh=8, seed=1)
    results = sweep(q, v, n_hashes=[1, 2, 4, 8], chunk_lens=[4], seeds=range(4), causal=False)
    recall = {r: sum(a.mass_recall for a in results if a.n_hashes == r) / 4 for r in (1, 2, 4, 8)}
    error = {r: sum(a.relative_error for a in results if a.n_hashes == r) / 4 for r in (1, 2, 4, 8)}
    assert recall[1] < recall[2] < recall[4] < recall[8] < 1.0
    assert error[8] < error[1]
    assert {a.n_buckets for a in results} == {32}
    assert relative_error(v, v) == 0.0


@pytest.mark.parametrize("reversible", [True, False])
def test_capture_reads_the_layer_s_own_queries_and_values(reversible):
    torch.manual_seed(0)
    cfg = ReformerConfig(d_model=16, n_heads=2, d_ff=32, n_layers=2, max_seq_len=16, attention="full",
                         reversible=reversible, pos_emb="absolute")
    model = ReformerLM(cfg)
    tokens = torch.randint(0, 256, (2, 16))
    q, v = capture_qkv(model, tokens, layer=0)
    attn, norm = model.stack.blocks[0].f.attn, model.stack.blocks[0].f.norm
    with torch.no_grad():
        x = model.token_emb(tokens) + model.pos_emb(16)  # block 0's attention reads the embedding
        torch.testing.assert_close(q, attn._heads(attn.to_qk(norm(x))))
        torch.testing.assert_close(v, attn._heads(attn.to_v(norm(x))))
    q1, _ = capture_qkv(model, tokens, layer=1)
    assert q.shape == q1.shape == (2, 2, 16, 8) and not torch.allclose(q, q1)
    assert model.training  # left as it was found
