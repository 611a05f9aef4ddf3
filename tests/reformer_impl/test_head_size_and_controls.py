"""head_size (an attention width apart from d_model), the no-attention control, and the self-mask switch."""
import math

import pytest
import torch
import torch.nn.functional as F

from reformer_impl import ReformerConfig, ReformerLM, lm_loss
from reformer_impl.attention import build_attention
from bench.flops import attention_params, flop_count


def _dense_by_hand(layer, x, cfg, self_mask):
    """Shared-QK causal attention written out from the layer's weights, head by head."""
    qk = x @ layer.to_qk.weight.T
    v = x @ layer.to_v.weight.T
    length, out = x.shape[1], []
    for h in range(cfg.n_heads):
        cols = slice(h * cfg.d_head, (h + 1) * cfg.d_head)
        q = qk[0, :, cols]
        logits = q @ F.normalize(q, dim=-1).T
        pos = torch.arange(length)
        if self_mask:
            logits = logits.masked_fill(pos[:, None] == pos[None, :], -1e5)
        logits = logits.masked_fill(pos[None, :] > pos[:, None], -1e9)
        out.append(logits.softmax(-1) @ v[0, :, cols])
    return (torch.cat(out, -1) @ layer.to_out.weight.T + layer.to_out.bias)[None]


@pytest.mark.parametrize("self_mask", [True, False])
def test_head_size_sets_the_inner_width_and_the_layer_matches_a_hand_computation(self_mask):
    cfg = ReformerConfig(d_model=12, n_heads=2, head_size=5, attention="full", self_mask=self_mask)
    torch.manual_seed(0)
    layer = build_attention(cfg).double()
    assert layer.to_qk.weight.shape == (10, 12) and layer.to_out.weight.shape == (12, 10)
    x = torch.randn(1, 7, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _dense_by_hand(layer, x, cfg, self_mask))


def test_dropping_the_self_mask_changes_what_a_query_sees():
    cfg = ReformerConfig(d_model=8, n_heads=2, attention="full")
    torch.manual_seed(1)
    masked = build_attention(cfg)
    unmasked = build_attention(cfg.replace(self_mask=False))
    unmasked.load_state_dict(masked.state_dict())
    x = torch.randn(1, 6, 8)
    assert not torch.allclose(masked(x), unmasked(x))
    # position 0 has no other key under the causal mask: both rules let it see itself
    torch.testing.assert_close(masked(x)[:, 0], unmasked(x)[:, 0])


def test_sdpa_follows_the_same_self_mask_rule_as_full_attention():
    cfg = ReformerConfig(d_model=8, n_heads=2, attention="full", self_mask=False)
    torch.manual_seed(2)
    full = build_attention(cfg).double()
    sdpa = build_attention(cfg.replace(attention="sdpa")).double()
    sdpa.load_state_dict(full.state_dict())
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(full(x), sdpa(x))


@pytest.mark.parametrize("changes", [dict(attention="lsh", self_mask=False),
                                     dict(attention="local", self_mask=False),
                                     dict(attention="full", shared_qk=False, self_mask=False)])
def test_self_mask_off_is_refused_where_it_means_nothing(changes):
    with pytest.raises(ValueError, match="self_mask=False"):
        ReformerConfig(**changes)


@pytest.mark.parametrize("head_size", [0, -3, 2.5, True])
def test_a_bad_head_size_is_refused_naming_it(head_size):
    with pytest.raises(ValueError, match="head_size="):
        ReformerConfig(head_size=head_size)


def test_head_size_lifts_the_divisibility_rule():
    assert ReformerConfig(d_model=250, n_heads=4, head_size=64).d_inner == 256


def test_no_attention_mixes_no_positions():
    """The control's logits at position i depend on token i alone: change every other token, i's stay."""
    cfg = ReformerConfig(d_model=16, n_heads=2, d_ff=32, vocab_size=11, attention="none", max_seq_len=32,
                         pos_emb="absolute")
    torch.manual_seed(3)
    model = ReformerLM(cfg).eval()
    tokens = torch.randint(0, 11, (1, 12))
    other = torch.randint(0, 11, (1, 12))
    other[0, 5] = tokens[0, 5]
    torch.testing.assert_close(model(tokens)[0, 5], model(other)[0, 5])
    assert not any("to_qk" in name for name, _ in model.named_parameters())


def test_the_flop_and_parameter_counts_follow_head_size():
    cfg = ReformerConfig(d_model=256, n_heads=2, head_size=64, attention="lsh")
    params = {"workload": "attention", "d_model": 256, "n_heads": 2, "head_size": 64, "attention": "lsh",
              "shared_qk": True, "batch_size": 1, "seq_len": 1024, "chunk_len": 64, "n_hashes": 1}
    layer = build_attention(cfg)
    assert attention_params(params) == sum(p.numel() for p in layer.parameters())
    wide = flop_count({**params, "head_size": 128}).forward
    narrow = flop_count(params).forward
    assert math.isclose(wide["attention"], 2 * narrow["attention"])
    assert math.isclose(wide["projections"], 2 * narrow["projections"])
    assert flop_count({**params, "attention": "none"}).forward["attention"] == 0


def test_the_no_attention_control_trains_reversibly_with_the_gradients_of_its_plain_twin():
    cfg = ReformerConfig(d_model=16, n_heads=2, d_ff=32, vocab_size=11, n_layers=2, attention="none", max_seq_len=16,
                         pos_emb="absolute", reversible=True)
    torch.manual_seed(4)
    rev = ReformerLM(cfg)
    plain = ReformerLM(cfg.replace(reversible=False))
    plain.load_state_dict(rev.state_dict())
    tokens, targets = torch.randint(0, 11, (2, 16)), torch.randint(0, 11, (2, 16))
    for model in (rev, plain):
        lm_loss(model(tokens), targets).backward()
    for (name, a), (_, b) in zip(rev.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
