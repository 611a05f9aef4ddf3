"""The paper's Table 3 memory term solved for the longest length (or largest batch) under a budget.

Predicted bytes of one training step of a configuration at length l:
    itemsize * table3_memory(l)                   activations, the term of the configuration's row
  + (itemsize * 4) * n_params                     weights, gradients and AdamW's two moments
  + 2 * 8 * b * l                                 int64 tokens and targets
  + overhead                                      what the budget counts besides the step (CPU: the
                                                  process's RSS before the model is built; GPU: 0)
The term counts one copy of the largest activation per layer (per model when reversible); the real
step keeps several (scores and probabilities, their gradients, the logits), which is why the
prediction is an upper bound on the length and the measurement says by how much. Pure: no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from bench.complexity import table3_terms

ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
INPUT_BYTES_PER_TOKEN = 2 * 8  # tokens and targets, int64
PARAM_COPIES = 4  # weight, gradient, AdamW exp_avg and exp_avg_sq, all in the model's dtype
CEILING = 2**40  # no search goes past this


@dataclass(frozen=True)
class Prediction:
    """The longest value under the budget (None: not even `multiple` fits), the Table 3 row used
    and the predicted bytes at that value."""

    value: int | None
    row: str
    bytes_at_value: float | None


def predicted_bytes(params: Mapping[str, Any], n_params: int, overhead_bytes: float = 0.0) -> tuple[float, str]:
    """Predicted bytes of one training step at the params' batch_size and seq_len, and the row used."""
    itemsize = ITEMSIZE[str(params["dtype"])]
    terms = table3_terms({**params, "workload": "model"})
    tokens = int(params["batch_size"]) * int(params["seq_len"])
    total = (itemsize * terms.memory + PARAM_COPIES * itemsize * n_params
             + INPUT_BYTES_PER_TOKEN * tokens + overhead_bytes)
    return float(total), terms.row


def predict_longest(params: Mapping[str, Any], over: str, budget_bytes: float, n_params: int,
                    overhead_bytes: float = 0.0, multiple: int = 1) -> Prediction:
    """The largest multiple of `multiple` for `over` (seq_len or batch_size) whose predicted bytes
    fit `budget_bytes`: the bytes grow with the value, so double then bisect."""
    if over not in ("seq_len", "batch_size"):
        raise ValueError(f"over={over!r}: expected 'seq_len' or 'batch_size'")

    def fits(value: int) -> bool:
        return predicted_bytes({**params, over: value}, n_params, overhead_bytes)[0] <= budget_bytes

    row = predicted_bytes({**params, over: multiple}, n_params, overhead_bytes)[1]
    if not fits(multiple):
        return Prediction(None, row, None)
    lo, hi = multiple, 2 * multiple
    while fits(hi):
        lo, hi = hi, 2 * hi
        if hi > CEILING:
            raise ValueError(f"predict_longest: {over} fits past {CEILING}; is the budget right?")
    while hi - lo > multiple:  # lo fits, hi does not; both multiples
        mid = (lo + hi) // 2 // multiple * multiple
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return Prediction(lo, row, predicted_bytes({**params, over: lo}, n_params, overhead_bytes)[0])
