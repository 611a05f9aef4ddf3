"""Bits per byte: exact on models whose loss is known, deterministic on a real model."""
from __future__ import annotations

import math

import pytest
import torch

from bench.quality.metrics import bits_per_byte, eval_starts, evaluate
from reformer_impl import ReformerConfig, ReformerLM


def test_uniform_logits_give_exactly_eight_bits_per_byte():
    data = torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    result = evaluate(lambda x: torch.zeros(*x.shape, 256), data, seq_len=16, batch_size=5)
    assert result.bits_per_byte == pytest.approx(8.0, abs=1e-12)
    assert bits_per_byte(math.log(256)) == pytest.approx(8.0, abs=1e-15)
    assert result.n_windows == 999 // 16 and result.n_bytes == (999 // 16) * 16


def test_a_model_with_known_probability_of_the_next_byte():
    """Data where byte i+1 = byte i + 1: a model that puts logit a on that byte (0 elsewhere) pays
    -log2(e^a / (e^a + 255)) bits on every byte, a number known in closed form."""
    data = (torch.arange(3001) % 256).to(torch.uint8)
    a = 3.0

    def logits_fn(x):
        logits = torch.zeros(*x.shape, 256)
        return logits.scatter_(-1, ((x + 1) % 256).unsqueeze(-1), a)

    expected = -math.log2(math.exp(a) / (math.exp(a) + 255))
    for max_windows in (None, 7):
        result = evaluate(logits_fn, data, seq_len=50, batch_size=4, max_windows=max_windows)
        assert result.bits_per_byte == pytest.approx(expected, rel=1e-12)
    # A model that is wrong at every byte pays more: the metric sees the targets.
    worse = evaluate(lambda x: logits_fn(x + 7), data, seq_len=50, batch_size=4)
    assert worse.bits_per_byte > expected + 1


def test_eval_windows_are_fixed_consecutive_and_evenly_subsampled():
    assert eval_starts(101, 10) == list(range(0, 100, 10))
    assert eval_starts(100, 10) == list(range(0, 90, 10))  # the last target must exist
    assert eval_starts(1001, 10, max_windows=3) == [0, 490, 990]
    assert eval_starts(1001, 10, max_windows=500) == eval_starts(1001, 10)
    with pytest.raises(ValueError, match="seq_len=10"):
        eval_starts(10, 10)


def test_evaluation_of_a_real_model_is_deterministic():
    torch.manual_seed(0)
    model = ReformerLM(ReformerConfig(d_model=16, n_heads=2, d_ff=32, n_layers=1, max_seq_len=32,
                                      attention="lsh", n_hashes=2, chunk_len=8, hash_seed=5)).eval()
    data = torch.randint(0, 256, (400,), generator=torch.Generator().manual_seed(1)).to(torch.uint8)

    def run():
        for layer in model.modules():
            if hasattr(layer, "reset_hash_generator"):
                layer.reset_hash_generator()  # the rotation stream restarts for every evaluation
        return evaluate(model, data, seq_len=32, batch_size=3)

    first, second = run(), run()
    assert first == second
    assert 7.0 < first.bits_per_byte < 9.5  # an untrained model is near uniform


def test_each_windows_bpb_is_kept_and_their_mean_is_the_whole_figure():
    """Data where byte i+1 = byte i + 1, and a model right on every byte but those of the second window:
    that window pays 8 bits a byte (uniform logits there), the others the closed-form figure."""
    data = (torch.arange(401) % 256).to(torch.uint8)
    a = 3.0

    def logits_fn(x):
        logits = torch.zeros(*x.shape, 256).scatter_(-1, ((x + 1) % 256).unsqueeze(-1), a)
        logits[x[:, 0] == 50] = 0.0  # the window starting at byte 50
        return logits

    result = evaluate(logits_fn, data, seq_len=50, batch_size=3)
    right = -math.log2(math.exp(a) / (math.exp(a) + 255))
    assert result.window_bpb == pytest.approx([right, 8.0] + [right] * 6, rel=1e-12)
    assert sum(result.window_bpb) / len(result.window_bpb) == pytest.approx(result.bits_per_byte, rel=1e-12)
