"""Local attention (LSH's chunks sorted by position) against an explicit dense banded reference."""
import pytest
import torch
import torch.nn.functional as F

from reformer_impl import ReformerConfig, ReformerLM, build_attention, describe
from tests.reformer_impl.conftest import tiny_cfg


def banded_visible(seq_len: int, chunk_len: int, padded_len: int) -> torch.Tensor:
    """(Lp, Lp) bool: key j is in query i's window, i.e. j's chunk is i's or the one before it; the
    first chunk looks back to the last chunk holding a real position (cyclic, as LSH)."""
    n_real = -(-seq_len // chunk_len)
    chunk = torch.arange(padded_len) // chunk_len
    ci, cj = chunk[:, None], chunk[None, :]
    visible = ci == cj
    if n_real > 1:
        visible |= cj == (ci - 1) % n_real
    return visible


def dense_local_reference(qk, v, *, seq_len, chunk_len, causal):
    """softmax over an L x L banded mask on (B, H, L, dh): logits q . q_j/|q_j|, self -1e5, causal
    and padding keys -1e9 (the masking constants of full attention), keys outside the band -inf."""
    length = qk.shape[-2]
    lp = -(-length // chunk_len) * chunk_len
    pos = torch.arange(length)
    logits = qk @ F.normalize(qk, dim=-1).transpose(-1, -2)
    logits = logits.masked_fill(pos[:, None] == pos[None, :], -1e5)
    if causal:
        logits = logits.masked_fill(pos[None, :] > pos[:, None], -1e9)
    logits = logits.masked_fill(~banded_visible(seq_len, chunk_len, lp)[:length, :length], float("-inf"))
    return logits.softmax(dim=-1) @ v


def reference_layer_forward(layer, x):
    """The layer's own projections around the dense banded reference."""
    cfg = layer.cfg
    q, v = layer._heads(layer.to_qk(x)), layer._heads(layer.to_v(x))
    out = dense_local_reference(q, v, seq_len=x.shape[1], chunk_len=cfg.chunk_len, causal=cfg.causal)
    b, h, length, dh = out.shape
    return layer.to_out(out.transpose(1, 2).reshape(b, length, h * dh))


def _out_and_grads(forward, layer, x):
    layer.zero_grad()
    x = x.clone().requires_grad_()
    out = forward(x)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seq_len, chunk_len", [(20, 4), (19, 4), (13, 5)])  # 19, 13: padded
def test_local_equals_dense_banded_reference(causal, seq_len, chunk_len):
    layer = build_attention(tiny_cfg(attention="local", causal=causal, chunk_len=chunk_len)).double()
    x = torch.randn(2, seq_len, 16, dtype=torch.float64)
    o_loc, gx_loc, gw_loc = _out_and_grads(layer, layer, x)
    o_ref, gx_ref, gw_ref = _out_and_grads(lambda t: reference_layer_forward(layer, t), layer, x)
    torch.testing.assert_close(o_loc, o_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gx_loc, gx_ref, rtol=1e-9, atol=1e-10)
    for name in gw_ref:
        torch.testing.assert_close(gw_loc[name], gw_ref[name], rtol=1e-9, atol=1e-10, msg=name)
    # The band restricts: several chunks, so local is not full attention here.
    full = build_attention(tiny_cfg(attention="full", causal=causal)).double()
    full.load_state_dict(layer.state_dict())
    assert not torch.allclose(full(x), o_loc)


@pytest.mark.parametrize("seq_len", [12, 9])
def test_causal_local_never_sees_the_future(seq_len):
    """d out_i / d x_j is exactly zero for every j > i (the wrapped look-back included)."""
    layer = build_attention(tiny_cfg(attention="local", causal=True, chunk_len=3)).double()
    x = torch.randn(1, seq_len, 16, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: layer(t)[0], x)[:, :, 0]  # (L, d, L, d)
    per_pair = jac.abs().sum(dim=(1, 3))  # (L_out, L_in)
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    assert (per_pair[future] == 0).all()
    assert (per_pair[~future] != 0).sum() > seq_len  # the past does flow (not all-zero by accident)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("seq_len, chunk_len", [(8, 4), (7, 4), (4, 4), (3, 8)])
def test_local_equals_full_when_one_chunk_pair_covers_the_sequence(causal, seq_len, chunk_len):
    loc = build_attention(tiny_cfg(attention="local", causal=causal, chunk_len=chunk_len)).double()
    full = build_attention(tiny_cfg(attention="full", causal=causal)).double()
    full.load_state_dict(loc.state_dict())  # shared QK: the same parameter names
    x = torch.randn(2, seq_len, 16, dtype=torch.float64)
    o_loc, gx_loc, gw_loc = _out_and_grads(loc, loc, x)
    o_full, gx_full, gw_full = _out_and_grads(full, full, x)
    torch.testing.assert_close(o_loc, o_full, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gx_loc, gx_full, rtol=1e-9, atol=1e-10)
    for name in gw_full:
        torch.testing.assert_close(gw_loc[name], gw_full[name], rtol=1e-9, atol=1e-10, msg=name)


def test_local_reversible_model_matches_plain_and_describes_its_windows():
    cfg = tiny_cfg(attention="local", chunk_len=4, n_layers=2, reversible=True)
    rev, plain = ReformerLM(cfg).double(), ReformerLM(cfg.replace(reversible=False)).double()
    plain.load_state_dict(rev.state_dict())
    tokens = torch.randint(0, cfg.vocab_size, (2, 14))
    for model in (rev, plain):
        model(tokens).square().mean().backward()
    for (name, p_rev), (_, p_plain) in zip(rev.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(p_rev.grad, p_plain.grad, rtol=1e-7, atol=1e-10, msg=name)
    info = describe(cfg, 14)
    assert (info["attention"], info["chunk_len"], info["n_chunks"], info["padded_len"]) == ("local", 4, 4, 16)
    assert info["n_hashes"] is None and info["n_buckets"] is None


def test_local_refuses_separate_qk():
    with pytest.raises(ValueError, match="shared_qk"):
        ReformerConfig(attention="local", shared_qk=False)
