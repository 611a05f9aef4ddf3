"""The LSH core holds no full-size buffer it does not need: its forward allocates the kept window
probabilities and its output, its backward the query, key and value gradients by source row, and
nothing else as large as one of its (B, H, L, d_head) inputs (no normalised keys, no g * out
product, no copy of a gradient on its way to the projections).
Device-independent: fresh allocations are counted by size under a dispatch mode, not read from RSS."""
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from reformer_impl.attention import lsh_core
from reformer_impl.attention.lsh import lsh_attention_core
from tests.reformer_impl.reference import lsh_attention_reference

B, H, LP, DH, M, ROUNDS = 1, 4, 512, 16, 16, 2


class FreshAllocations(TorchDispatchMode):
    """Shapes of every op's outputs of at least `min_bytes` whose storage is none of the op's inputs'."""

    def __init__(self, min_bytes: int):
        super().__init__()
        self.min_bytes, self.shapes = min_bytes, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if (isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() >= self.min_bytes
                    and t.untyped_storage().data_ptr() not in inputs):
                self.shapes.append(tuple(t.shape))
        return out


def _heads_inner(gen):
    """(B, H, Lp, dh) as a view of (B, Lp, H, dh) storage: how the projections hand them over."""
    return torch.randn(B, LP, H, DH, dtype=torch.float64, generator=gen).permute(0, 2, 1, 3)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(lsh_core, "GROUP_ROWS", 1)  # one head a group: a group's outputs are not full-size
    monkeypatch.setattr(lsh_core, "BLOCK_ELEMENTS", 4 * 2 * M * M)
    monkeypatch.setattr(lsh_core, "MAX_BLOCKS", 10**9)


@pytest.mark.parametrize("causal", [True, False])
def test_core_allocates_only_probabilities_output_and_the_gradients(causal, small_blocks):
    gen = torch.Generator().manual_seed(1)
    qk, v = _heads_inner(gen).requires_grad_(), _heads_inner(gen).requires_grad_()
    buckets = torch.randint(0, LP // M, (B, H, ROUNDS, LP), generator=gen)
    cot = _heads_inner(gen)
    full = B * H * LP * DH * qk.element_size()
    kw = dict(seq_len=LP, chunk_len=M, causal=causal, same_bucket=False, dup_correction=True, dropout_p=0.0)
    with FreshAllocations(full) as forward:
        out = lsh_attention_core(qk, v, buckets, **kw)
    n_windows = H * ROUNDS * (LP // M + 1) - 1
    assert sorted(forward.shapes) == sorted([(n_windows, M, 2 * M), (B, LP, H, DH)])
    with FreshAllocations(full) as backward:
        out.backward(cot)
    assert backward.shapes == [(B * LP * H, DH)] * 3  # dq, dk, dv, nothing else full-size


def test_gradients_reach_the_projections_in_their_own_layout(small_blocks):
    """Heads-inner inputs get heads-inner gradients (views, no copy on the way to the projections),
    equal to the explicit-window reference."""
    gen = torch.Generator().manual_seed(2)
    qk, v = _heads_inner(gen).requires_grad_(), _heads_inner(gen).requires_grad_()
    buckets = torch.randint(0, 6, (B, H, ROUNDS, LP), generator=gen)
    cot = _heads_inner(gen)
    kw = dict(seq_len=LP, chunk_len=M, causal=True, same_bucket=False, dup_correction=True)
    got = lsh_attention_core(qk, v, buckets, dropout_p=0.0, **kw)
    dq, dv = torch.autograd.grad(got, (qk, v), cot)
    for grad in (dq, dv):
        assert grad.permute(0, 2, 1, 3).is_contiguous()
    want = lsh_attention_reference(qk, v, buckets, **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip((dq, dv), torch.autograd.grad(want, (qk, v), cot)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
