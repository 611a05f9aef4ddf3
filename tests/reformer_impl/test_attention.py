import pytest
import torch

from reformer_impl import build_attention
from reformer_impl.attention.lsh import lsh_attention_core, padded_length
from tests.reformer_impl.conftest import tiny_cfg
from tests.reformer_impl.reference import lsh_attention_reference, lsh_windows


def _pair(kind_a, kind_b, **kw):
    a = build_attention(tiny_cfg(attention=kind_a, **kw)).double()
    b = build_attention(tiny_cfg(attention=kind_b, **kw)).double()
    b.load_state_dict(a.state_dict())  # shared-QK: identical parameter names
    return a, b


def _out_and_grads(layer, x):
    x = x.clone().requires_grad_()
    out = layer(x)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_hashes", [1, 3])
@pytest.mark.parametrize("dup_correction", [True, False])
@pytest.mark.parametrize("seq_len, chunk_len", [(16, 8), (13, 7), (12, 12)])
def test_lsh_equals_full_when_one_window_covers_the_sequence(causal, n_hashes, dup_correction, seq_len, chunk_len):
    """Two chunks (or one) per round: every query's window holds every key, so LSH must be full attention."""
    full, lsh = _pair("full", "lsh", causal=causal, n_hashes=n_hashes, chunk_len=chunk_len,
                      dup_correction=dup_correction, n_buckets=4)
    x = torch.randn(2, seq_len, 16, dtype=torch.float64)
    o_full, gx_full, gw_full = _out_and_grads(full, x)
    o_lsh, gx_lsh, gw_lsh = _out_and_grads(lsh, x)
    torch.testing.assert_close(o_lsh, o_full, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gx_lsh, gx_full, rtol=1e-9, atol=1e-10)
    for name in gw_full:
        torch.testing.assert_close(gw_lsh[name], gw_full[name], rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shared_qk_sdpa", [True, False])
def test_sdpa_matches_naive_full(causal, shared_qk_sdpa):
    full, sdpa = _pair("full", "sdpa", causal=causal, shared_qk=shared_qk_sdpa)
    x = torch.randn(2, 10, 16, dtype=torch.float64)
    o_full, gx_full, _ = _out_and_grads(full, x)
    o_sdpa, gx_sdpa, _ = _out_and_grads(sdpa, x)
    # sdpa adds the self-mask value instead of replacing the logit: exact to ~exp(-1e5)
    torch.testing.assert_close(o_sdpa, o_full, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gx_sdpa, gx_full, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dup_correction", [True, False])
@pytest.mark.parametrize("same_bucket", [False, True])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("d_head", [8, 2])  # 2: too small for the core to reuse its gather buffer
def test_lsh_equals_dense_reference_with_same_windows(dup_correction, same_bucket, causal, d_head):
    """Several rounds and several chunks per round: the vectorised core equals explicit L x L windows."""
    cfg = tiny_cfg(n_hashes=3, chunk_len=4, causal=causal, same_bucket=same_bucket, dup_correction=dup_correction)
    layer = build_attention(cfg).double()
    seq_len = 22  # padded to 24: 6 chunks per round, 12 buckets
    lp = padded_length(seq_len, cfg.chunk_len)
    qk = torch.randn(2, 2, lp, d_head, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, lp, d_head, dtype=torch.float64, requires_grad=True)
    if d_head == cfg.d_head:
        buckets = layer.hash(qk.detach(), cfg.buckets_for(lp))
    else:
        buckets = torch.randint(0, cfg.buckets_for(lp), (2, 2, cfg.n_hashes, lp), generator=torch.Generator().manual_seed(1))
    kw = dict(seq_len=seq_len, chunk_len=cfg.chunk_len, causal=causal, same_bucket=same_bucket, dup_correction=dup_correction)
    got = lsh_attention_core(qk, v, buckets, dropout_p=0.0, **kw)[:, :, :seq_len]
    want = lsh_attention_reference(qk, v, buckets, **kw)[:, :, :seq_len]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    cot = torch.randn_like(got)
    g_got = torch.autograd.grad(got, (qk, v), cot)
    g_want = torch.autograd.grad(want, (qk, v), cot)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_duplicate_correction_changes_the_output_when_rounds_overlap():
    cfg = tiny_cfg(n_hashes=4, chunk_len=4, causal=False)
    layer = build_attention(cfg).double()
    qk = torch.randn(1, 2, 32, 8, dtype=torch.float64)
    v = torch.randn(1, 2, 32, 8, dtype=torch.float64)
    buckets = layer.hash(qk, cfg.buckets_for(32))
    kw = dict(seq_len=32, chunk_len=4, causal=False, same_bucket=False, dropout_p=0.0)
    with_c = lsh_attention_core(qk, v, buckets, dup_correction=True, **kw)
    without = lsh_attention_core(qk, v, buckets, dup_correction=False, **kw)
    assert (with_c - without).abs().max() > 1e-3


def test_padding_never_reaches_an_output():
    """Outputs for real positions do not depend on what fills the padded tail."""
    cfg = tiny_cfg(n_hashes=2, chunk_len=4, causal=False)
    layer = build_attention(cfg).double()
    qk = torch.randn(1, 2, 12, 8, dtype=torch.float64)
    v = torch.randn(1, 2, 12, 8, dtype=torch.float64)
    buckets = layer.hash(qk, 6)
    kw = dict(seq_len=10, chunk_len=4, causal=False, same_bucket=False, dup_correction=True, dropout_p=0.0)
    a = lsh_attention_core(qk, v, buckets, **kw)
    v2 = v.clone()
    v2[:, :, 10:] = 1e6
    qk2 = qk.clone()
    qk2[:, :, 10:] = -3.0
    b = lsh_attention_core(qk2, v2, buckets, **kw)
    torch.testing.assert_close(a[:, :, :10], b[:, :, :10], rtol=0, atol=0)


@pytest.mark.parametrize("kind, extra", [("full", {}), ("sdpa", {}), ("sdpa", {"shared_qk": False}),
                                         ("full", {"shared_qk": False}), ("lsh", {"n_hashes": 3})])
def test_causal_jacobian_is_exactly_zero_above_the_diagonal(kind, extra):
    seq_len = 13  # not a multiple of chunk_len: padding included for LSH
    layer = build_attention(tiny_cfg(attention=kind, causal=True, chunk_len=4, **extra)).double()
    x = torch.randn(1, seq_len, 16, dtype=torch.float64)
    if kind == "lsh":  # one hashing for the whole Jacobian
        layer.reset_hash_generator()
    jac = torch.autograd.functional.jacobian(lambda t: layer(t), x)  # (1, L, d, 1, L, d)
    jac = jac[0, :, :, 0].abs().sum(dim=(1, 3))  # (L_out, L_in)
    future = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=1)
    assert torch.all(jac[future] == 0)
    # Per row and key: every past key a query can see moves its output (its own key may not: with
    # shared QK it is used only when nothing else is). Dense kinds see every past key; LSH those in
    # its windows (any head, any round), and no other.
    past = torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=-1)
    sees = past
    if kind == "lsh":
        layer.reset_hash_generator()
        _, buckets = layer.compute(x)
        windows = torch.stack([lsh_windows(buckets[0, h], 4, seq_len) for h in range(buckets.shape[1])])
        sees = windows.flatten(0, 1).any(dim=0)[:seq_len, :seq_len] & past
        assert 0 < sees.sum() < past.sum()  # some past keys seen, some not
    assert torch.equal((jac > 0) & past, sees)


def test_lsh_shapes_any_length_and_batch():
    layer = build_attention(tiny_cfg(n_hashes=2, chunk_len=8))
    for length in (1, 7, 8, 9, 33):
        assert layer(torch.randn(3, length, 16)).shape == (3, length, 16)


def _core_inputs(seq_len=22, chunk_len=4, n_rounds=3, d_head=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lp = padded_length(seq_len, chunk_len)
    qk = torch.randn(1, 2, lp, d_head, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(1, 2, lp, d_head, dtype=torch.float64, generator=gen, requires_grad=True)
    buckets = torch.randint(0, 2 * lp // chunk_len, (1, 2, n_rounds, lp), generator=gen)
    return qk, v, buckets


@pytest.mark.parametrize("causal, same_bucket, dup_correction, dropout_p", [
    (True, False, True, 0.0), (False, True, True, 0.0), (True, True, False, 0.0), (True, False, True, 0.3),
])
def test_lsh_hand_written_backward_passes_gradcheck(causal, same_bucket, dup_correction, dropout_p):
    """The core's backward against finite differences, padding and several rounds included; with
    dropout, every evaluation replays the same mask."""
    qk, v, buckets = _core_inputs()
    kw = dict(seq_len=22, chunk_len=4, causal=causal, same_bucket=same_bucket, dup_correction=dup_correction,
              dropout_p=dropout_p)

    def core(qk_, v_):
        torch.manual_seed(7)
        return lsh_attention_core(qk_, v_, buckets, **kw)[:, :, :22]

    assert torch.autograd.gradcheck(core, (qk, v), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_lsh_backward_can_run_twice_on_a_retained_graph():
    """The core reuses buffers inside its forward and backward; what it saves must stay intact."""
    qk, v, buckets = _core_inputs()
    out = lsh_attention_core(qk, v, buckets, seq_len=22, chunk_len=4, causal=True, same_bucket=False,
                             dup_correction=True, dropout_p=0.0)
    cot = torch.randn_like(out)
    first = torch.autograd.grad(out, (qk, v), cot, retain_graph=True)
    second = torch.autograd.grad(out, (qk, v), cot)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lsh_core_on_cuda_matches_cpu():
    """The strided windows, reused buffers and index plumbing behave the same under CUDA kernels."""
    qk, v, buckets = _core_inputs(seq_len=250, chunk_len=8, n_rounds=4, d_head=16)
    kw = dict(seq_len=250, chunk_len=8, causal=True, same_bucket=False, dup_correction=True, dropout_p=0.0)
    cot = torch.randn(1, 2, 250, 16, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        a, b = qk.detach().to(device).requires_grad_(), v.detach().to(device).requires_grad_()
        out = lsh_attention_core(a, b, buckets.to(device), **kw)[:, :, :250]
        grads = torch.autograd.grad(out, (a, b), cot.to(device))
        results.append([t.cpu() for t in (out, *grads)])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("batch, length", [(0, 5), (2, 0), (0, 0)])
@pytest.mark.parametrize("reversible", [False, True])
def test_empty_batch_or_sequence_gives_the_empty_output(batch, length, reversible):
    """As dense attention does: an empty output of the right shape, and gradients of the right
    shapes (zero) for the input and every parameter, through the layer and the whole model."""
    from reformer_impl import ReformerLM

    for kind in ("full", "sdpa", "lsh"):
        layer = build_attention(tiny_cfg(attention=kind, n_hashes=2, chunk_len=4))
        x = torch.randn(batch, length, 16, requires_grad=True)
        out = layer(x)
        assert out.shape == (batch, length, 16), kind
        out.sum().backward()
        assert x.grad.shape == x.shape
        assert all(p.grad is not None and p.grad.shape == p.shape and not p.grad.any() for p in layer.parameters())
        model = ReformerLM(tiny_cfg(attention=kind, reversible=reversible, ff_chunks=2))
        tokens = torch.zeros(batch, length, dtype=torch.long)
        logits = model(tokens)
        assert logits.shape == (batch, length, 13), kind
        logits.sum().backward()
        assert all(p.grad is None or p.grad.shape == p.shape for p in model.parameters())


@pytest.mark.parametrize("causal, n_rounds", [(False, 1), (True, 2), (False, 3)])
def test_padding_displaces_no_real_token(causal, n_rounds):
    """The same 10 real positions, padded to 12, 16 or 24 with padding hashed to bucket 0 (as a zero
    vector hashes): every real query sees the same real keys with the same weights, and gets the same
    output and gradients, however much padding there is. Values are one-hot per real key, so a
    query's output is its attention weights over the real keys."""
    seq_len, chunk_len, d_head = 10, 4, 16
    gen = torch.Generator().manual_seed(3)
    qk_real = torch.randn(1, 2, seq_len, d_head, dtype=torch.float64, generator=gen)
    buckets_real = torch.randint(0, 6, (1, 2, n_rounds, seq_len), generator=gen)
    cot = torch.randn(1, 2, seq_len, d_head, dtype=torch.float64, generator=gen)
    kw = dict(seq_len=seq_len, chunk_len=chunk_len, causal=causal, same_bucket=False, dup_correction=True)
    results = []
    for lp in (12, 16, 24):
        qk = torch.cat([qk_real, torch.zeros(1, 2, lp - seq_len, d_head, dtype=torch.float64)], dim=2)
        v = torch.randn(1, 2, lp, d_head, dtype=torch.float64, generator=gen)  # padding values: noise
        v[:, :, :seq_len] = torch.eye(d_head, dtype=torch.float64)[:seq_len]
        qk.requires_grad_(), v.requires_grad_()
        buckets = torch.cat([buckets_real, torch.zeros(1, 2, n_rounds, lp - seq_len, dtype=torch.long)], dim=-1)
        out = lsh_attention_core(qk, v, buckets, dropout_p=0.0, **kw)
        want = lsh_attention_reference(qk, v, buckets, **kw)[:, :, :seq_len]
        torch.testing.assert_close(out[:, :, :seq_len], want, rtol=1e-10, atol=1e-12)
        assert torch.all(out[:, :, seq_len:] == 0)  # padding queries attend to nothing
        weights = out[:, :, :seq_len].detach()
        assert torch.all(weights[..., seq_len:] == 0)  # no padding key reached a real query
        g_qk, g_v = torch.autograd.grad(out[:, :, :seq_len], (qk, v), cot)
        for got, ref in zip((g_qk, g_v), torch.autograd.grad(want, (qk, v), cot)):  # padding's included
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)
        results.append((weights, g_qk[:, :, :seq_len], g_v[:, :, :seq_len]))
    (w0, gq0, gv0), *others = results
    for w, gq, gv in others:
        assert torch.equal(w != 0, w0 != 0)  # the same real keys, per real query
        torch.testing.assert_close(w, w0, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(gq, gq0, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gv, gv0, rtol=1e-10, atol=1e-12)


def test_padding_hashes_to_a_bucket_of_its_own():
    """The layer hashes only real positions; padding gets bucket n_buckets, after every real one."""
    layer = build_attention(tiny_cfg(n_hashes=2, chunk_len=4)).double()
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    _, buckets = layer.compute(x)
    n_buckets = layer.cfg.buckets_for(12)
    assert buckets.shape == (1, 2, 2, 12)
    assert torch.all(buckets[..., 10:] == n_buckets) and torch.all(buckets[..., :10] < n_buckets)


def test_lsh_dropout_drops_about_p_of_the_weights_and_scales_the_rest():
    """With one round and one-hot values, the output row of a query is its attention weights: with
    dropout p about p of the non-zero weights become 0, and every kept one is 1 / (1 - p) times
    its weight without dropout; over several seeds, in the layer's core."""
    p, seq_len, chunk_len = 0.3, 64, 8
    layer = build_attention(tiny_cfg(dropout=p, n_hashes=1, chunk_len=chunk_len, causal=False))
    assert layer.train().dropout_p == p and layer.eval().dropout_p == 0.0  # what the layer passes the core
    gen = torch.Generator().manual_seed(0)
    qk = torch.randn(1, 2, seq_len, seq_len, dtype=torch.float64, generator=gen)
    v = torch.eye(seq_len, dtype=torch.float64).expand(1, 2, seq_len, seq_len)  # key j's value is e_j
    buckets = torch.randint(0, 16, (1, 2, 1, seq_len), generator=gen)
    kw = dict(seq_len=seq_len, chunk_len=chunk_len, causal=False, same_bucket=False, dup_correction=True)
    weights = lsh_attention_core(qk, v, buckets, dropout_p=0.0, **kw)
    nonzero = weights != 0
    dropped = kept = 0
    for seed in range(5):
        torch.manual_seed(seed)
        got = lsh_attention_core(qk, v, buckets, dropout_p=p, **kw)
        assert torch.all(got[~nonzero] == 0)
        zero = (got == 0) & nonzero
        torch.testing.assert_close(got[nonzero & ~zero], weights[nonzero & ~zero] / (1 - p), rtol=1e-12, atol=0)
        dropped += int(zero.sum())
        kept += int((nonzero & ~zero).sum())
    share = dropped / (dropped + kept)
    assert dropped + kept > 5000 and abs(share - p) < 0.03, share  # binomial sd here is about 0.006
