"""Ordinary residual layers (residual='standard'): the paper's baseline for reversibility."""
import pytest
import torch

from bench.grid import canonical_model
from reformer_impl import ReformerConfig, ReformerLM


def _cfg(**kw):
    base = dict(d_model=32, n_heads=4, d_ff=64, n_layers=2, vocab_size=50, max_seq_len=16, attention="full",
                pos_emb="absolute")
    return ReformerConfig(**{**base, **kw})


def test_standard_residual_is_x_plus_f_then_plus_g_on_one_stream():
    torch.manual_seed(0)
    model = ReformerLM(_cfg(residual="standard", reversible=False)).eval()
    tokens = torch.randint(0, 50, (2, 16))
    x = model.token_emb(tokens) + model.pos_emb(16)
    for block in model.stack.blocks:
        x = x + block.f(x)
        x = x + block.g(x)
    expected = model.head(model.norm(x))
    torch.testing.assert_close(model(tokens), expected)


def test_standard_residual_differs_from_the_two_stream_function_with_the_same_weights():
    torch.manual_seed(0)
    standard = ReformerLM(_cfg(residual="standard", reversible=False)).eval()
    two_stream = ReformerLM(_cfg(reversible=False)).eval()
    two_stream.load_state_dict(standard.state_dict())  # same parameter names
    tokens = torch.randint(0, 50, (2, 16))
    assert not torch.allclose(standard(tokens), two_stream(tokens))


def test_standard_residual_trains_with_gradients_everywhere():
    model = ReformerLM(_cfg(residual="standard", reversible=False))
    model(torch.randint(0, 50, (2, 16))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if not n.startswith("pos_emb"))


def test_reversible_standard_residual_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"ReformerConfig.reversible=True: ordinary residual"):
        _cfg(residual="standard", reversible=True)
    with pytest.raises(ValueError, match=r"ReformerConfig.residual='revnet'"):
        _cfg(residual="revnet", reversible=False)


def test_the_default_residual_stays_out_of_a_grid_point_identity():
    fields = ["d_model", "attention", "residual"]
    assert "residual" not in canonical_model({"d_model": 8, "attention": "full", "residual": "two_stream"}, fields)
    assert canonical_model({"d_model": 8, "attention": "full", "residual": "standard"}, fields)["residual"] == "standard"
