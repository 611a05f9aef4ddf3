"""Reversible residual blocks (RevNet; paper sec. 3): Y1 = X1 + F(X2), Y2 = X2 + G(Y1).

The reversible stack keeps only the last layer's outputs; its backward reconstructs each
layer's inputs (X2 = Y2 - G(Y1), X1 = Y1 - F(X2)) and recomputes, replaying the forward's
dropout RNG and reusing its LSH buckets. `reversible=False` runs the same blocks through
ordinary autograd, with the same parameter names.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from reformer_impl.attention import build_attention
from reformer_impl.config import ReformerConfig
from reformer_impl.feedforward import ChunkedFeedForward, sequence_chunks
from reformer_impl.profiling import REVERSIBLE_BACKWARD, REVERSIBLE_RECOMPUTE, stage


class AttentionBranch(nn.Module):
    """F: dropout(attention(norm(x))), also returning the buckets it used."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.attn = build_attention(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def compute(self, x, buckets=None):
        out, buckets = self.attn.compute(self.norm(x), buckets)
        return self.dropout(out), buckets

    def forward(self, x):
        return self.compute(x)[0]


class ReversibleBlock(nn.Module):
    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.f = AttentionBranch(cfg)
        self.g = ChunkedFeedForward(cfg)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        y1 = x1 + self.f(x2)
        return y1, x2 + self.g(y1)


class _RNGState:
    """The CPU and (if used) CUDA RNG states at a point of the forward, to replay dropout."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self):
        """Run the block with the RNG as it was, leaving the caller's RNG untouched afterwards."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class _ReversibleFunction(torch.autograd.Function):
    """Runs all blocks without storing activations; gradients of the block parameters are
    accumulated into `.grad` inside the backward (as RevTorch and reformer-pytorch do)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
        x1 = x2 = x  # both streams start as the embedding (X1 = X2); no copy is made
        rng_states, cached = [], []  # per layer: RNG before F and G; LSH buckets or None
        with torch.no_grad():
            for block in blocks:
                rng_f = _RNGState(x.device)
                f_out, buckets = block.f.compute(x2)
                x1 = x1 + f_out
                rng_g = _RNGState(x.device)
                x2 = x2 + block.g(x1)
                rng_states.append((rng_f, rng_g))
                # LSH buckets are cached (int32) so the backward does not re-hash reconstructed
                # activations, whose argmax could flip; they are the only per-layer state kept.
                cached.append(None if buckets is None else buckets.to(torch.int32))
        ctx.blocks, ctx.rng_states = blocks, rng_states
        ctx.has_buckets = [b is not None for b in cached]
        # The last layer's two streams (neither an input nor the output, so theirs to overwrite): the
        # backward rebuilds every layer's inputs in these buffers, in place, so no second copy of the
        # streams coexists with the recomputation.
        ctx.save_for_backward(x1, x2, *(b for b in cached if b is not None))
        ctx.consumed = False
        return (x1 + x2) / 2

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("the reversible stack's backward rebuilds its inputs in its saved streams' "
                               "buffers and can run once; backward through it again (retain_graph) is not supported")
        ctx.consumed = True
        y1, y2, *saved = ctx.saved_tensors
        saved_buckets = iter(saved)
        buckets_per_layer = [next(saved_buckets) if has else None for has in ctx.has_buckets]
        dy1 = dy2 = dy / 2  # d mean / d Y1 = d mean / d Y2: one buffer for both, so the first layer adds out of place
        own_grads = False
        layers = zip(ctx.blocks, ctx.rng_states, buckets_per_layer)
        for block, (rng_f, rng_g), buckets in reversed(list(layers)):
            buckets = None if buckets is None else buckets.long()
            y1, y2, dy1, dy2 = _block_backward(block, rng_f, rng_g, buckets, y1, y2, dy1, dy2, own_grads)
            own_grads = True
        return dy1.add_(dy2), None  # n_layers >= 1: both are this backward's own, separate buffers by now


def _accumulate(grad: torch.Tensor, extra: torch.Tensor, in_place: bool) -> torch.Tensor:
    return grad.add_(extra) if in_place else grad + extra


def _block_backward(block, rng_f, rng_g, buckets, y1, y2, dy1, dy2, own_grads: bool):
    """Reconstruct (X1, X2) from (Y1, Y2) in their buffers and turn (dY1, dY2) into (dX1, dX2)
    (in dY's buffers when `own_grads`: this backward made them), chunk by chunk in G."""
    ff = block.g
    with torch.enable_grad():
        y1 = y1.detach().requires_grad_()
        x2 = y2.detach()  # X2 = Y2 - G(Y1) overwrites Y2, chunk by chunk
        # G is position-wise: recompute and differentiate one sequence chunk at a time, in the
        # forward's chunk order so the replayed dropout masks match.
        with rng_g.replay():
            for s in sequence_chunks(y1.shape[1], ff.n_chunks):
                with stage(REVERSIBLE_RECOMPUTE):
                    g_out = ff.ff(y1[:, s])
                with stage(REVERSIBLE_BACKWARD):
                    torch.autograd.backward(g_out, dy2[:, s])
                with stage(REVERSIBLE_RECOMPUTE), torch.no_grad():
                    x2[:, s] -= g_out
                del g_out
        dx1 = _accumulate(dy1, y1.grad, own_grads)
        y1.grad = None
        x2.requires_grad_()
        with rng_f.replay(), stage(REVERSIBLE_RECOMPUTE):
            f_out, _ = block.f.compute(x2, buckets)
        if f_out.requires_grad:  # attention 'none' outputs constant zeros: nothing to differentiate
            with stage(REVERSIBLE_BACKWARD):
                torch.autograd.backward(f_out, dx1)
        with torch.no_grad():
            x1 = y1.detach().sub_(f_out)  # X1 = Y1 - F(X2), in Y1's buffer
        del f_out
        # dY2 passes through unchanged where F did not depend on X2 (dX1 is a buffer of its own by now)
        dx2 = dy2 if x2.grad is None else _accumulate(dy2, x2.grad, own_grads)
        x2.grad = None
    return x1, x2.detach(), dx1, dx2


class StandardStack(nn.Module):
    """n_layers ordinary pre-norm residual blocks on one stream (B, L, d_model): x + F(x), then
    + G(x). The same F and G modules (and parameter names) as the reversible stack."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.blocks = nn.ModuleList(ReversibleBlock(cfg) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block.f(x)
            x = x + block.g(x)
        return x


class ReformerStack(nn.Module):
    """n_layers reversible blocks over two streams that start as the input (B, L, d_model);
    returns the streams' mean (B, L, d_model), as reformer-pytorch. Only the mean leaves the stack,
    so the streams are never concatenated (no 2 x d_model copy in the forward or the backward)."""

    def __init__(self, cfg: ReformerConfig):
        super().__init__()
        self.reversible = cfg.reversible
        self.blocks = nn.ModuleList(ReversibleBlock(cfg) for _ in range(cfg.n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reversible and torch.is_grad_enabled():
            return _ReversibleFunction.apply(x, self.blocks)
        x1 = x2 = x
        for block in self.blocks:
            x1, x2 = block(x1, x2)
        return (x1 + x2) / 2
