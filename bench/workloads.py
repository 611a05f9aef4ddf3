"""What one grid point runs: an attention layer alone, or a full ReformerLM train step; ours or a peer
library's. The only module that imports both reformer_impl and the measuring code.

Each workload is built fresh per point with fixed seeds, and exposes one iteration split into timed
phases (fwd, bwd, opt) plus a forward alone for counting bytes saved for backward.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from bench.measure import PhaseClock
from bench.point import GridPoint
from reformer_impl import ReformerConfig, ReformerLM, build_attention, describe, lm_loss

SEED = 0
DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# SDPA kernels as they appear among the profiler's aten ops, most specific first.
SDPA_OPS = (
    ("_scaled_dot_product_flash_attention_for_cpu", "flash_cpu"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_efficient_attention", "efficient"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_fused_attention_overrideable", "overrideable"),
    ("_scaled_dot_product_attention_math", "math"),
)
# describe() keys about the blocks around the attention layer, meaningless for the layer alone.
MODEL_ONLY_EFFECTIVE = ("reversible", "ff_chunks")


class WorkloadUnavailable(RuntimeError):
    """The point needs a library that is not installed (a peer); the worker records it as skipped."""


@dataclass(frozen=True)
class Workload:
    """One point's work, ready to run.

    forward() -> what backward(.) needs (the layer output or the loss); backward(out) runs autograd;
    opt_step (model workload only) updates the weights; zero_grad() drops gradients between
    iterations; effective() says what actually ran (call it after at least one forward).
    """

    forward: Callable[[], torch.Tensor]
    backward: Callable[[torch.Tensor], None]
    opt_step: Callable[[], None] | None
    module: nn.Module
    device: str
    effective: Callable[[], dict[str, Any]]
    # train_step only: one whole step on a short prefix of the batch, so the optimizer state exists
    # (and one-time costs are paid) before the step that is measured.
    warm: Callable[[], None] | None = None

    @property
    def phases(self) -> tuple[str, ...]:
        return ("fwd", "bwd", "opt") if self.opt_step is not None else ("fwd", "bwd")

    def zero_grad(self) -> None:
        self.module.zero_grad(set_to_none=True)

    def iteration(self, clock: PhaseClock) -> None:
        """One training iteration, each phase timed by `clock`; gradients are dropped first (untimed)."""
        self.zero_grad()
        with clock.phase("fwd"):
            out = self.forward()
        with clock.phase("bwd"):
            self.backward(out)
        del out
        if self.opt_step is not None:
            with clock.phase("opt"):
                self.opt_step()


# --------------------------------------------------------------------------- configs


def config_for(point: GridPoint):
    """The ReformerConfig a point describes. Fields the grid dropped as irrelevant take the config's
    defaults; for the attention workload max_seq_len (irrelevant there) is raised to seq_len."""
    known = {f.name for f in dataclasses.fields(ReformerConfig)}
    unknown = sorted(set(point.model) - known)
    if unknown:
        raise ValueError(f"GridPoint.model has unknown ReformerConfig field(s) {unknown}")
    fields = dict(point.model)
    if "max_seq_len" not in fields:
        fields["max_seq_len"] = max(point.seq_len, ReformerConfig.max_seq_len)
    return ReformerConfig(**fields)


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"GridPoint.dtype={name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def check_device(device: str) -> None:
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"GridPoint.device={device!r}: CUDA is not available on this machine")


# --------------------------------------------------------------------------- builders


def build_workload(point: GridPoint) -> Workload:
    """Build the point's workload fresh, seeded; a missing peer library raises WorkloadUnavailable."""
    check_device(point.device)
    if point.workload == "attention":
        builders = {"ours": _our_attention, "reformer_pytorch": _lucidrains_attention, "hf": _hf_attention}
        if point.impl not in builders:
            raise ValueError(f"GridPoint.impl={point.impl!r}: expected one of {sorted(builders)}")
        return builders[point.impl](point)
    if point.workload == "train_step":
        if point.impl != "ours":
            raise ValueError(f"GridPoint.impl={point.impl!r}: workload='train_step' runs our model only")
        return _our_train_step(point)
    if point.workload == "model":
        if point.impl != "ours":
            raise ValueError(
                f"GridPoint.impl={point.impl!r}: peers are measured on workload='attention' only, "
                f"got workload='model'"
            )
        return _our_model(point)
    raise ValueError(
        f"GridPoint.workload={point.workload!r}: bench.workloads runs 'attention', 'model' and 'train_step' "
        "(duplication runs through bench.duplication)"
    )


def _attention_workload(point: GridPoint, layer: nn.Module, effective: Callable[[], dict[str, Any]]) -> Workload:
    """A layer mapping (B, L, d_model) -> (B, L, d_model); its input requires grad as inside a model,
    and the backward feeds a fixed random output gradient."""
    cfg = config_for(point)
    dtype = torch_dtype(point.dtype)
    gen = torch.Generator().manual_seed(SEED + 1)
    shape = (point.batch_size, point.seq_len, cfg.d_model)
    x = torch.randn(shape, generator=gen).to(point.device, dtype).requires_grad_(True)
    grad_out = torch.randn(shape, generator=gen).to(point.device, dtype)
    layer = layer.to(point.device, dtype)

    def forward() -> torch.Tensor:
        x.grad = None
        return layer(x)

    def backward(out: torch.Tensor) -> None:
        out.backward(grad_out)

    return Workload(forward, backward, None, layer, point.device, effective)


def _our_attention(point: GridPoint) -> Workload:
    cfg = config_for(point)
    torch.manual_seed(SEED)
    layer = build_attention(cfg)
    holder: dict[str, Any] = {}
    wl = _attention_workload(point, layer, lambda: _our_effective(cfg, point, holder))
    holder["forward"] = wl.forward
    return wl


def _our_model(point: GridPoint) -> Workload:
    cfg, model, tokens, targets, optimizer = _lm_parts(point)
    return _lm_workload(point, cfg, model, tokens, targets, optimizer)


def _our_train_step(point: GridPoint) -> Workload:
    """The model workload (forward, backward, AdamW step) with warm(): one step on the first
    min(seq_len, 2 * chunk_len) tokens, which creates AdamW's state at a negligible activation cost."""
    cfg, model, tokens, targets, optimizer = _lm_parts(point)
    short = min(point.seq_len, 2 * cfg.chunk_len)

    def warm() -> None:
        model.zero_grad(set_to_none=True)
        lm_loss(model(tokens[:, :short]), targets[:, :short]).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)

    return dataclasses.replace(_lm_workload(point, cfg, model, tokens, targets, optimizer), warm=warm)


def _lm_parts(point: GridPoint):
    """The seeded model, token and target batch, and AdamW optimizer of a point."""
    cfg = config_for(point)
    dtype = torch_dtype(point.dtype)
    torch.manual_seed(SEED)
    model = ReformerLM(cfg).to(point.device, dtype)
    gen = torch.Generator().manual_seed(SEED + 1)
    shape = (point.batch_size, point.seq_len)
    tokens = torch.randint(0, cfg.vocab_size, shape, generator=gen).to(point.device)
    targets = torch.randint(0, cfg.vocab_size, shape, generator=gen).to(point.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return cfg, model, tokens, targets, optimizer


def _lm_workload(point: GridPoint, cfg, model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor,
                 optimizer: torch.optim.Optimizer) -> Workload:
    def forward() -> torch.Tensor:
        return lm_loss(model(tokens), targets)

    def backward(loss: torch.Tensor) -> None:
        loss.backward()

    holder: dict[str, Any] = {"forward": forward}
    return Workload(forward, backward, optimizer.step, model, point.device,
                    lambda: _our_effective(cfg, point, holder))


def _our_effective(cfg, point: GridPoint, holder: dict[str, Any]) -> dict[str, Any]:
    eff = {"impl": "ours", **describe(cfg, point.seq_len)}
    if point.workload == "attention":  # one layer alone: no blocks, no feed-forward ran
        for key in MODEL_ONLY_EFFECTIVE:
            eff.pop(key, None)
    if cfg.attention == "sdpa":
        eff["sdpa_backend"] = sdpa_backend(holder["forward"])
    return eff


def sdpa_backend(forward: Callable[[], Any]) -> str | None:
    """Which fused kernel torch's scaled_dot_product_attention dispatched to in one forward, read from
    the profiler's aten ops (no_grad: dispatch does not depend on autograd). None if SDPA never ran."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        forward()
    names = {evt.key for evt in prof.key_averages()}
    for op, label in SDPA_OPS:
        if any(name.endswith(op) for name in names):
            return label
    return None


# --------------------------------------------------------------------------- peers


def _import_peer(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise WorkloadUnavailable(
            f"impl needs `{package}` ({exc}); install it with `pip install -e '.[peers]'`"
        ) from exc


def _check_multiple(point: GridPoint, multiple: int, who: str) -> None:
    if point.seq_len % multiple:
        raise ValueError(
            f"GridPoint.seq_len={point.seq_len}: {who} needs a multiple of {multiple} "
            f"(it does not pad); chunk_len={point.model.get('chunk_len')}"
        )


def _lucidrains_attention(point: GridPoint) -> Workload:
    """reformer_pytorch.LSHSelfAttention with our chunk_len as its bucket_size. It switches silently
    to full attention when the length is <= full_attn_thres (default: bucket_size); forward hooks
    record which of its two attention modules actually ran."""
    lib = _import_peer("reformer_pytorch", "reformer-pytorch")
    cfg = config_for(point)
    if point.seq_len > cfg.chunk_len:  # below full_attn_thres it runs full attention, any length
        _check_multiple(point, 2 * cfg.chunk_len, "reformer_pytorch LSH attention")
    torch.manual_seed(SEED)
    layer = lib.LSHSelfAttention(
        dim=cfg.d_model, heads=cfg.n_heads, bucket_size=cfg.chunk_len,
        n_hashes=cfg.n_hashes, causal=cfg.causal,
    )
    ran: set[str] = set()
    layer.lsh_attn.register_forward_hook(lambda *_: ran.add("lsh"))
    layer.full_attn.register_forward_hook(lambda *_: ran.add("full"))

    def effective() -> dict[str, Any]:
        mode = "+".join(sorted(ran)) or None
        return {
            "impl": "reformer_pytorch",
            "version": _version("reformer_pytorch"),
            "attention": mode,
            "full_attn_thres": layer.full_attn_thres,
            "bucket_size": cfg.chunk_len,
            "n_buckets": point.seq_len // cfg.chunk_len if mode == "lsh" else None,
            # lucidrains' chunk is one bucket_size; a query sees its chunk and the one before.
            "chunk_len": cfg.chunk_len if mode == "lsh" else None,
            "window": 2 * cfg.chunk_len if mode == "lsh" else point.seq_len,
            "n_hashes": cfg.n_hashes if mode == "lsh" else None,
            "padded_len": point.seq_len,
            "dup_correction": False,  # allow_duplicate_attention=True by default
        }

    return _attention_workload(point, layer, effective)


class _HFAttention(nn.Module):
    """transformers' LSHSelfAttention followed by its output projection (ReformerSelfOutput),
    i.e. ReformerAttention without the layer norm: the same parameters as our attention layer."""

    def __init__(self, attention: nn.Module, output: nn.Module) -> None:
        super().__init__()
        self.attention, self.output = attention, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d_model) -> (B, L, d_model)
        return self.output(self.attention(x).hidden_states)


def _hf_attention(point: GridPoint) -> Workload:
    """transformers' Reformer LSH self-attention. HF runs plain full attention when the length is
    <= lsh_attn_chunk_length, and writes num_buckets (a power of two, possibly factorised) into its
    config on the first forward: read both back after running."""
    lib = _import_peer("transformers.models.reformer.modeling_reformer", "transformers")
    tf = _import_peer("transformers", "transformers")
    cfg = config_for(point)
    if point.seq_len > cfg.chunk_len:  # at or below one chunk it runs full attention, any length
        _check_multiple(point, cfg.chunk_len, "transformers' LSHSelfAttention")
    hf_cfg = tf.ReformerConfig(
        hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads, attention_head_size=cfg.d_head,
        attn_layers=["lsh"], lsh_attn_chunk_length=cfg.chunk_len, num_hashes=cfg.n_hashes,
        num_buckets=cfg.n_buckets, is_decoder=cfg.causal, lsh_num_chunks_before=1,
        lsh_num_chunks_after=0, hidden_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
        max_position_embeddings=max(point.seq_len, 2 * cfg.chunk_len), hash_seed=cfg.hash_seed,
    )
    torch.manual_seed(SEED)
    attention = lib.LSHSelfAttention(hf_cfg, layer_idx=0)
    layer = _HFAttention(attention, lib.ReformerSelfOutput(hf_cfg))

    def effective() -> dict[str, Any]:
        full = point.seq_len <= cfg.chunk_len
        return {
            "impl": "hf",
            "version": _version("transformers"),
            "attention": "full" if full else "lsh",
            "n_buckets": None if full else attention.num_buckets,
            "chunk_len": None if full else cfg.chunk_len,
            "window": point.seq_len if full else 2 * cfg.chunk_len,
            "n_hashes": None if full else cfg.n_hashes,
            "padded_len": point.seq_len,
            "dup_correction": False,
        }

    return _attention_workload(point, layer, effective)


def _version(module: str) -> str | None:
    try:
        return version(module.replace("_", "-"))
    except Exception:
        return None
