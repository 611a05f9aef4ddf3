"""Memory claims, counted device-independently as bytes saved for backward."""
import pytest
import torch

from reformer_impl import ReformerLM, build_attention, lm_loss
from tests.reformer_impl.conftest import tiny_cfg
from tests.reformer_impl.reference import LiveSavedBytes


def _saved_in_forward(model, tokens):
    probe = LiveSavedBytes()
    with probe.hooks():
        loss = lm_loss(model(tokens), tokens)
    loss.backward()
    return probe.total


@pytest.mark.parametrize("attention", ["full", "lsh"])
def test_reversible_saved_bytes_flat_in_depth_and_growing_without(attention):
    """Reversible keeps no activations per layer; LSH adds only its cached buckets (int32)."""
    tokens = torch.randint(0, 13, (2, 64))
    saved = {}
    for reversible in (True, False):
        for n_layers in (1, 2, 4):
            torch.manual_seed(0)
            model = ReformerLM(tiny_cfg(attention=attention, n_layers=n_layers, reversible=reversible, d_ff=64))
            saved[reversible, n_layers] = _saved_in_forward(model, tokens)
    cfg = tiny_cfg()
    bucket_bytes = 4 * 2 * cfg.n_heads * cfg.n_hashes * 64 if attention == "lsh" else 0  # (B, H, R, L) int32
    assert saved[True, 2] - saved[True, 1] == bucket_bytes
    assert saved[True, 4] - saved[True, 1] == 3 * bucket_bytes
    assert saved[False, 1] < saved[False, 2] < saved[False, 4]
    per_layer = saved[False, 2] - saved[False, 1]
    assert abs((saved[False, 4] - saved[False, 2]) - 2 * per_layer) <= 0.05 * per_layer  # linear in depth


def _attention_saved(kind, seq_len, **kw):
    layer = build_attention(tiny_cfg(attention=kind, d_model=32, chunk_len=16, n_hashes=4, **kw))
    x = torch.randn(1, seq_len, 32, requires_grad=True)
    probe = LiveSavedBytes()
    with probe.hooks():
        out = layer(x)
    out.sum().backward()
    return probe.total


def test_lsh_saved_bytes_linear_in_length_full_quadratic():
    lengths = (256, 512, 1024)
    lsh = [_attention_saved("lsh", n) for n in lengths]
    full = [_attention_saved("full", n) for n in lengths]
    for small, big in zip(lsh, lsh[1:]):
        assert 1.8 < big / small < 2.2, lsh
    assert full[-1] / full[-2] > 3.5, full  # the L x L scores dominate
    assert lsh[-1] < full[-1] / 4


def _backward_peak(ff_chunks):
    torch.manual_seed(0)
    model = ReformerLM(tiny_cfg(reversible=True, d_model=16, d_ff=512, ff_chunks=ff_chunks, n_layers=2, max_seq_len=128))
    tokens = torch.randint(0, 13, (2, 128))
    loss = lm_loss(model(tokens), tokens)
    probe = LiveSavedBytes()
    with probe.hooks():
        loss.backward()  # the reversible backward recomputes, saving tensors for its inner backward
    return probe.peak


def test_chunked_reversible_backward_peak_below_unchunked():
    unchunked, chunked = _backward_peak(1), _backward_peak(8)
    assert chunked < unchunked / 2, (chunked, unchunked)


def test_chunked_feed_forward_saves_fewer_bytes_outside_the_reversible_path():
    """Non-reversible: each feed-forward chunk is checkpointed, so the (B, L, d_ff) intermediates
    are not kept for backward; at least one such tensor per layer fewer than unchunked."""
    tokens = torch.randint(0, 13, (2, 64))
    saved = {}
    for ff_chunks in (1, 4):
        torch.manual_seed(0)
        model = ReformerLM(tiny_cfg(reversible=False, d_ff=256, ff_chunks=ff_chunks, n_layers=2))
        saved[ff_chunks] = _saved_in_forward(model, tokens)
    intermediate = 2 * 64 * 256 * 4  # one float32 (B, L, d_ff)
    assert saved[4] < saved[1] - 2 * intermediate, saved
