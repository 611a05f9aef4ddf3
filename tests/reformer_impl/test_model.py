import pytest
import torch

from reformer_impl import ReformerConfig, ReformerLM, describe, lm_loss
from tests.reformer_impl.conftest import tiny_cfg


def _loss_and_grads(model, tokens, seed=7):
    for m in model.modules():
        if hasattr(m, "reset_hash_generator"):
            m.reset_hash_generator()
    torch.manual_seed(seed)  # same dropout masks for both runs
    model.zero_grad()
    loss = lm_loss(model(tokens), tokens.roll(-1, dims=1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _twin(cfg, **changes):
    a = ReformerLM(cfg).double()
    b = ReformerLM(cfg.replace(**changes)).double()
    b.load_state_dict(a.state_dict())
    return a, b


def _assert_same(run_a, run_b, rtol=1e-9, atol=1e-11):
    (loss_a, g_a), (loss_b, g_b) = run_a, run_b
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=atol)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("attention, n_hashes", [("lsh", 3), ("full", 1), ("sdpa", 1)])
@pytest.mark.parametrize("ff_chunks", [1, 3])
def test_reversible_equals_non_reversible(attention, n_hashes, ff_chunks):
    """Same state dict, dropout on: the recomputing backward gives the same loss and every gradient."""
    cfg = tiny_cfg(attention=attention, n_hashes=n_hashes, n_layers=3, dropout=0.1, reversible=True, ff_chunks=ff_chunks)
    rev, plain = _twin(cfg, reversible=False)
    rev.train(), plain.train()
    tokens = torch.randint(0, cfg.vocab_size, (2, 22))
    _assert_same(_loss_and_grads(rev, tokens), _loss_and_grads(plain, tokens))


@pytest.mark.parametrize("reversible", [False, True])
def test_chunked_feed_forward_equals_unchunked(reversible):
    cfg = tiny_cfg(n_hashes=2, reversible=reversible, dropout=0.0)
    one, chunked = _twin(cfg, ff_chunks=4)
    tokens = torch.randint(0, cfg.vocab_size, (2, 19))
    _assert_same(_loss_and_grads(one, tokens), _loss_and_grads(chunked, tokens))


def test_state_dict_moves_between_full_and_lsh_and_n_hashes():
    cfg = tiny_cfg(attention="full")
    full = ReformerLM(cfg)
    for changes in (dict(attention="lsh", n_hashes=1), dict(attention="lsh", n_hashes=8)):
        other = ReformerLM(cfg.replace(**changes))
        other.load_state_dict(full.state_dict(), strict=True)
        assert other(torch.randint(0, 13, (1, 20))).shape == (1, 20, 13)


@pytest.mark.parametrize("attention", ["full", "sdpa"])
def test_future_tokens_cannot_leak_into_earlier_logits(attention):
    """Metamorphic: change every token after position p; logits up to p must not move at all.

    Not for LSH: there, which earlier keys share a query's chunk depends on where later positions
    hash (as in trax and HF). LSH's causality is the exact-zero Jacobian in test_attention.py."""
    model = ReformerLM(tiny_cfg(attention=attention, n_hashes=3, chunk_len=4)).double().eval()
    tokens = torch.randint(0, 13, (2, 23))
    p = 11
    changed = tokens.clone()
    changed[:, p + 1 :] = (changed[:, p + 1 :] + 5) % 13
    for m in model.modules():
        if hasattr(m, "reset_hash_generator"):
            m.reset_hash_generator()
    a = model(tokens)
    for m in model.modules():
        if hasattr(m, "reset_hash_generator"):
            m.reset_hash_generator()
    b = model(changed)
    assert torch.equal(a[:, : p + 1], b[:, : p + 1])
    assert not torch.allclose(a[:, p + 1 :], b[:, p + 1 :])


def test_loss_mask_counts_only_marked_positions():
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 3:] = True
    want = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, 7), targets[:, 3:].reshape(-1))
    torch.testing.assert_close(lm_loss(logits, targets, mask), want)


def test_too_long_input_is_refused():
    model = ReformerLM(tiny_cfg(max_seq_len=16))
    with pytest.raises(ValueError, match="max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_describe_reports_what_runs():
    info = describe(tiny_cfg(chunk_len=8, n_hashes=4, ff_chunks=3), 50)
    assert info["padded_len"] == 56 and info["n_chunks"] == 7 and info["n_buckets"] == 14
    assert info["ff_chunks"] == 3 and info["n_hashes"] == 4
    assert describe(tiny_cfg(attention="full"), 50)["n_buckets"] is None


@pytest.mark.parametrize("attention", ["full", "sdpa", "lsh"])
def test_bfloat16_model_matches_float32_and_trains(attention):
    """The GPU profiles run in bf16: finite masks, close outputs, finite gradients (checked on CPU)."""
    cfg = tiny_cfg(attention=attention, shared_qk=attention != "sdpa", n_hashes=2, chunk_len=8,
                   reversible=True, ff_chunks=2, max_seq_len=128)
    ref = ReformerLM(cfg).eval()
    half = ReformerLM(cfg).eval()
    half.load_state_dict(ref.state_dict())
    half = half.bfloat16()
    tokens = torch.randint(0, cfg.vocab_size, (2, 100))
    want, got = ref(tokens), half(tokens).float()
    assert ((want - got).norm() / want.norm()).item() < 0.05
    half.train()
    lm_loss(half(tokens), tokens).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in half.parameters())


def _reference_lm(params: dict, tokens: torch.Tensor, cfg) -> torch.Tensor:
    """ReformerLM's forward written out by hand from its parameters, full shared-QK attention:
    token + axial position embedding into both streams, per block Y1 = X1 + Attn(LN(X2)),
    Y2 = X2 + FF(LN(Y1)), then the mean of the streams, final LayerNorm and the head."""
    import torch.nn.functional as F

    b, length = tokens.shape
    h, dh = cfg.n_heads, cfg.d_model // cfg.n_heads
    a2 = params["pos_emb.cols"].shape[0]
    pos = torch.arange(length)
    x = params["token_emb.weight"][tokens] + params["pos_emb.rows"][pos // a2] + params["pos_emb.cols"][pos % a2]

    def ln(t, name):
        return F.layer_norm(t, (cfg.d_model,), params[f"{name}.weight"], params[f"{name}.bias"])

    def heads(t):  # (B, L, d) -> (B, H, L, dh)
        return t.view(b, length, h, dh).transpose(1, 2)

    x1 = x2 = x
    for i in range(cfg.n_layers):
        p = f"stack.blocks.{i}"
        n = ln(x2, f"{p}.f.norm")
        q, v = heads(n @ params[f"{p}.f.attn.to_qk.weight"].T), heads(n @ params[f"{p}.f.attn.to_v.weight"].T)
        logits = q @ (q / q.norm(dim=-1, keepdim=True)).transpose(-1, -2)  # keys: unit queries
        logits = logits.masked_fill(torch.eye(length, dtype=torch.bool), -1e5)  # self only as a last resort
        logits = logits.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), -1e9)  # causal
        att = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, length, cfg.d_model)
        x1 = x1 + att @ params[f"{p}.f.attn.to_out.weight"].T + params[f"{p}.f.attn.to_out.bias"]
        n = ln(x1, f"{p}.g.ff.norm")
        hidden = F.gelu(n @ params[f"{p}.g.ff.w1.weight"].T + params[f"{p}.g.ff.w1.bias"])
        x2 = x2 + hidden @ params[f"{p}.g.ff.w2.weight"].T + params[f"{p}.g.ff.w2.bias"]
    out = ln((x1 + x2) / 2, "norm")
    return out @ params["head.weight"].T + params["head.bias"]


@pytest.mark.parametrize("reversible", [False, True])
def test_model_forward_equals_a_hand_built_reference(reversible):
    cfg = tiny_cfg(attention="full", n_layers=3, reversible=reversible, ff_chunks=2)
    model = ReformerLM(cfg).double()
    with torch.no_grad():  # LayerNorms start at (1, 0): move them so a dropped norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.5)
    tokens = torch.randint(0, cfg.vocab_size, (2, 21))
    params = {name: p.detach() for name, p in model.named_parameters()}
    want = _reference_lm(params, tokens, cfg)
    torch.testing.assert_close(model(tokens), want, rtol=1e-10, atol=1e-10)
    with torch.no_grad():  # and the reversible stack's no-grad path
        torch.testing.assert_close(model(tokens), want, rtol=1e-10, atol=1e-10)


def test_a_second_backward_through_the_reversible_stack_is_refused():
    """Its backward rebuilds the layers' inputs in the saved streams' buffers: a retained graph
    cannot be differentiated again, and says so rather than return wrong gradients."""
    cfg = ReformerConfig(d_model=16, n_heads=2, d_ff=32, vocab_size=13, n_layers=2, attention="lsh",
                         chunk_len=4, max_seq_len=16, reversible=True)
    model = ReformerLM(cfg)
    loss = lm_loss(model(torch.randint(0, 13, (1, 16))), torch.randint(0, 13, (1, 16)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="can run once"):
        loss.backward()


def test_the_reversible_stack_saves_its_two_streams_and_no_concatenation():
    """What the reversible stack keeps for backward: the last layer's two (B, L, d_model) streams
    and the LSH buckets, nothing of width 2 * d_model."""
    cfg = ReformerConfig(d_model=16, n_heads=2, d_ff=32, vocab_size=13, n_layers=3, attention="lsh",
                         chunk_len=4, max_seq_len=16, reversible=True, n_hashes=2)
    model = ReformerLM(cfg)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    x = torch.randn(1, 16, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.stack(x)
    assert shapes.count((1, 16, 16)) == 2
    assert not any(s[-1] == 32 for s in shapes)
