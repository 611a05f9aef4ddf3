"""The block-wise LSH core: duplicate counts one round at a time equal the old all-rounds
computation, and outputs and gradients do not depend on how windows are cut into blocks."""
import pytest
import torch

from reformer_impl.attention import lsh_core
from reformer_impl.attention.lsh import lsh_attention_core
from reformer_impl.attention.lsh_counts import DuplicateCounts
from reformer_impl.attention.lsh_layout import other_rounds, sorted_layout
from tests.reformer_impl.reference import lsh_attention_reference


def _old_duplicate_counts(layout, buckets):
    """Reference: the previous implementation, every other round compared at once, an
    (R - 1, G', m, 2m) boolean (paper eq. 16), copied from reformer_impl before the block-wise core."""
    m, n_chunks, n_real = layout.chunk_len, layout.n_chunks, layout.n_real_chunks
    id_dtype = torch.int16 if n_chunks < 2**15 else torch.int32
    chunk_ids = other_rounds((layout.slot // m).to(id_dtype), layout).unsqueeze(-1)  # (R - 1, G m, 1)
    q_chunk, k_chunk = layout.queries(chunk_ids), layout.windows(chunk_ids).transpose(-1, -2)
    same = k_chunk == q_chunk
    if n_real > 1:
        same |= k_chunk == (q_chunk - 1) % n_real
    if buckets is not None:
        b_ids = other_rounds(buckets.reshape(layout.slot.shape), layout).unsqueeze(-1)
        same &= layout.windows(b_ids).transpose(-1, -2) == layout.queries(b_ids)
    return same.view(torch.uint8).sum(dim=0, dtype=torch.uint8).add_(1)


@pytest.mark.parametrize("n_rounds", [2, 3, 5, 8])
@pytest.mark.parametrize("seq_len", [24, 21, 4, 9])  # padding; one real chunk; two
@pytest.mark.parametrize("same_bucket", [False, True])
@pytest.mark.parametrize("few_buckets", [False, True])  # many positions share a bucket
def test_duplicate_counts_equal_the_all_rounds_computation(n_rounds, seq_len, same_bucket, few_buckets, monkeypatch):
    monkeypatch.setattr(lsh_core, "BLOCK_ELEMENTS", 3 * 2 * 4 * 4)  # 3 windows a block
    monkeypatch.setattr(lsh_core, "MAX_BLOCKS", 10**9)
    gen = torch.Generator().manual_seed(n_rounds * 100 + seq_len)
    lp, m = 24, 4
    buckets = torch.randint(0, 2 if few_buckets else 12, (2, 2, n_rounds, lp), generator=gen)
    layout = sorted_layout(buckets, m, seq_len)
    want = _old_duplicate_counts(layout, buckets if same_bucket else None)
    counts = DuplicateCounts(layout, buckets if same_bucket else None)
    visited = torch.zeros(layout.n_query_chunks, dtype=torch.bool)
    for h0, h1 in lsh_core._head_groups(layout):
        for w0, w1 in lsh_core._window_blocks(layout, h0, h1):
            got = counts.counts(w0, w1, torch.float64)
            assert torch.equal(got, want[w0:w1].double()), (w0, w1)
            visited[w0:w1] = True
    # Every window a query of the layer uses is counted; only the copies' windows between heads are skipped.
    assert visited.sum() >= layout.n_query_chunks - layout.n_heads


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("same_bucket", [False, True])
@pytest.mark.parametrize("n_rounds", [1, 2, 4, 8])
def test_core_in_small_blocks_and_groups_equals_the_dense_reference(causal, same_bucket, n_rounds, monkeypatch):
    """Blocks of 1, 2 and 5 windows, one head per group: outputs and gradients as explicit L x L windows."""
    gen = torch.Generator().manual_seed(n_rounds)
    seq_len, m, lp = 21, 4, 24
    qk = torch.randn(2, 2, lp, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(2, 2, lp, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    buckets = torch.randint(0, 12, (2, 2, n_rounds, lp), generator=gen)
    kw = dict(seq_len=seq_len, chunk_len=m, causal=causal, same_bucket=same_bucket, dup_correction=True)
    want = lsh_attention_reference(qk, v, buckets, **kw)[:, :, :seq_len]
    cot = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, (qk, v), cot)
    monkeypatch.setattr(lsh_core, "GROUP_ROWS", 1)
    monkeypatch.setattr(lsh_core, "MAX_BLOCKS", 10**9)
    for windows in (1, 2, 5):
        monkeypatch.setattr(lsh_core, "BLOCK_ELEMENTS", windows * 2 * m * m)
        got = lsh_attention_core(qk, v, buckets, dropout_p=0.0, **kw)
        assert torch.all(got[:, :, seq_len:] == 0)
        got = got[:, :, :seq_len]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        for a, b in zip(torch.autograd.grad(got, (qk, v), cot), want_grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_no_gradient_needed_keeps_no_probabilities():
    """Under no_grad (the reversible forward, evaluation) the core keeps nothing and gives the same output."""
    gen = torch.Generator().manual_seed(0)
    qk = torch.randn(1, 2, 24, 6, dtype=torch.float64, generator=gen)
    v = torch.randn(1, 2, 24, 6, dtype=torch.float64, generator=gen)
    buckets = torch.randint(0, 12, (1, 2, 3, 24), generator=gen)
    kw = dict(seq_len=22, chunk_len=4, causal=True, same_bucket=False, dup_correction=True, dropout_p=0.0)
    with torch.no_grad():
        plain = lsh_attention_core(qk, v, buckets, **kw)
    tracked = lsh_attention_core(qk.requires_grad_(), v, buckets, **kw)
    assert tracked.grad_fn is not None and plain.grad_fn is None
    torch.testing.assert_close(plain, tracked.detach(), rtol=0, atol=0)
