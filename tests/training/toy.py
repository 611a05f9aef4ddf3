"""A toy training task for the common trainer's tests: predict the previous token of a random
sequence (a causal model can learn it), batches from a seeded generator or indexed by step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from bench.training.settings import TrainSettings
from bench.training.task import Batch, GeneratorStream, StepStream
from reformer_impl import ReformerConfig, lm_loss

VOCAB = 8
SEQ_LEN = 16


def _batch(batch_size: int, gen: torch.Generator) -> Batch:
    inputs = torch.randint(1, VOCAB, (batch_size, SEQ_LEN), generator=gen)  # (B, L)
    targets = torch.cat([torch.zeros(batch_size, 1, dtype=torch.long), inputs[:, :-1]], dim=1)  # (B, L)
    mask = torch.ones_like(inputs, dtype=torch.bool)
    mask[:, 0] = False  # nothing precedes the first token
    return Batch(inputs, targets, mask)


@dataclass(frozen=True)
class PreviousToken:
    """`stream_kind` "generator": the stream's state is a generator's; "step": batch k depends only on (seed, k).
    `validate` draws from the global RNG and runs the model in eval mode, as a careless task might:
    the trainer must leave every random stream of the training as it was."""

    stream_kind: str = "generator"
    workload: str = "previous-token"
    seq_len: int = SEQ_LEN

    def identity(self) -> dict[str, Any]:
        return {"vocab": VOCAB, "seq_len": SEQ_LEN, "stream": self.stream_kind}

    def params(self) -> dict[str, Any]:
        return {"vocab": VOCAB}

    def stream(self, seed: int):
        if self.stream_kind == "generator":
            return GeneratorStream(seed, _batch)
        return StepStream(lambda step, size: _batch(size, torch.Generator().manual_seed(seed * 100_003 + step)))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
        batch = _batch(8, torch.Generator().manual_seed(12345)).to(device)
        model.eval()
        return {"eval_loss": float(lm_loss(model(batch.inputs), batch.targets, batch.mask))}

    def validate(self, model: torch.nn.Module, device: torch.device) -> Optional[dict[str, float]]:
        torch.rand(3)  # consumes the global RNG: the trainer must restore it
        return {"valid_loss": self.evaluate(model, device)["eval_loss"]}


def toy_config(**changes: Any) -> ReformerConfig:
    base = dict(d_model=32, d_ff=32, n_heads=2, n_layers=1, vocab_size=VOCAB, max_seq_len=SEQ_LEN, attention="lsh",
                n_hashes=2, chunk_len=4, causal=True, shared_qk=True, reversible=False, pos_emb="absolute",
                dropout=0.1)  # dropout: the global torch RNG matters to the weights, so its restore is tested too
    return ReformerConfig(**{**base, **changes})


def settings(**changes: Any) -> TrainSettings:
    """A short schedule with checkpoints and curve points every few steps."""
    base = dict(steps=12, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=4, log_every=2, seed=5)
    return TrainSettings(**{**base, **changes})


class Crash(Exception):
    """A simulated crash inside training (raised from on_step)."""


def crash_at(step_to_die: int):
    def on_step(step: int) -> None:
        if step == step_to_die:
            raise Crash(step)
    return on_step


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
