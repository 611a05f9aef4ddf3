"""Named torch.profiler ranges for the stages of a step, so a profile can be grouped by stage.

`stage(name)` is a record_function range while a profiler runs and a shared no-op context
otherwise (one C call to ask), so annotated code costs nothing measurable unprofiled. Ranges nest
where the code does: the reversible backward's recomputation encloses the LSH stages it reruns.
"""
from __future__ import annotations

import contextlib

import torch
from torch.autograd import _profiler_enabled

HASH = "reformer.hash"  # rotations and argmax: bucket ids
SORT = "reformer.sort_layout"  # sort by (bucket, position), the chunk layout and its indices
GATHER = "reformer.gather"  # queries, keys, values (and output gradients) into sorted order
WINDOW_ATTENTION = "reformer.window_attention"  # logits, masks, softmax, probabilities x values
DUP_COUNTS = "reformer.dup_counts"  # paper eq. 16: in how many rounds a key shares a query's window
ROUND_COMBINE = "reformer.round_combine"  # paper eq. 14: rounds weighted by their normalisers
LSH_BACKWARD = "reformer.lsh_backward"  # the LSH core's hand-written backward
REVERSIBLE_RECOMPUTE = "reformer.reversible_recompute"  # inputs rebuilt and F, G rerun in backward
REVERSIBLE_BACKWARD = "reformer.reversible_backward"  # F's and G's backward inside the reversible one
FEED_FORWARD = "reformer.feed_forward"  # the position-wise feed-forward (per chunk)
LM_HEAD = "reformer.lm_head"  # final norm and output projection

STAGES = (HASH, SORT, GATHER, WINDOW_ATTENTION, DUP_COUNTS, ROUND_COMBINE, LSH_BACKWARD,
          REVERSIBLE_RECOMPUTE, REVERSIBLE_BACKWARD, FEED_FORWARD, LM_HEAD)

_OFF = contextlib.nullcontext()


def stage(name: str):
    """A profiler range named `name` (one of STAGES) when a profiler is recording, else a no-op."""
    return torch.profiler.record_function(name) if _profiler_enabled() else _OFF
