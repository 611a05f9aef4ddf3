"""Byte-level language modelling as a training task of the common runner: random training windows
of the corpus's train split, bits per byte on fixed windows of its valid split."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from bench.quality.data import BatchSampler, Corpus
from bench.quality.metrics import evaluate
from bench.training.checkpoint import reset_hash_generators
from bench.training.records import PER_ITEM
from bench.training.task import Batch, StepStream

WORKLOAD = "lm"
WINDOW_DIGITS = 5  # per-window bpb kept to 1e-5 bpb: far below any difference a verdict weighs, ~8 bytes a window


@dataclass(frozen=True)
class TextLM:
    """Next-byte prediction on `corpus`. Evaluation scores `eval_windows` evenly spaced windows of the
    valid split (None: all of them), keeping each window's bpb beside the mean (the record's
    `per_window`); learning curves use `curve_windows` of them."""

    corpus: Corpus = field(repr=False)
    seq_len: int
    eval_windows: Optional[int]
    eval_batch_size: int
    curve_windows: int
    workload: str = WORKLOAD

    def identity(self) -> dict[str, Any]:
        return {"corpus_sha256": self.corpus.sha256, "seq_len": self.seq_len, "bounds": dict(self.corpus.bounds)}

    def params(self) -> dict[str, Any]:
        return {**self.corpus.meta(), "eval_windows": self.eval_windows, "eval_batch_size": self.eval_batch_size}

    def stream(self, seed: int) -> StepStream:
        sampler = BatchSampler(self.corpus.split("train"), 1, self.seq_len, seed)

        def draw(step: int, batch_size: int) -> Batch:
            inputs, targets = BatchSampler(sampler.data, batch_size, self.seq_len, seed).batch(step)
            return Batch(inputs, targets)
        return StepStream(draw)

    def _bpb(self, model: torch.nn.Module, device: torch.device, windows: Optional[int]):
        reset_hash_generators(model)
        model.eval()
        return evaluate(model, self.corpus.split("valid"), seq_len=self.seq_len, batch_size=self.eval_batch_size,
                        max_windows=windows, device=device)

    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
        t0 = time.perf_counter()
        ev = self._bpb(model, device, self.eval_windows)
        return {"bpb": ev.bits_per_byte, "nats_per_byte": ev.nats_per_byte, "eval_bytes": ev.n_bytes,
                "eval_windows": ev.n_windows, "eval_s": round(time.perf_counter() - t0, 3),
                PER_ITEM: {"bpb": [round(v, WINDOW_DIGITS) for v in ev.window_bpb]}}

    def validate(self, model: torch.nn.Module, device: torch.device) -> Optional[dict[str, float]]:
        return {"valid_bpb": self._bpb(model, device, self.curve_windows).bits_per_byte}
