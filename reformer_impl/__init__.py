"""A PyTorch Reformer: shared-QK angular-LSH attention, full-attention baselines, reversible
residual layers and chunked feed-forward. Knows nothing of benchmarking."""
from reformer_impl.config import ATTENTION_KINDS, ReformerConfig
from reformer_impl.attention import build_attention
from reformer_impl.model import ReformerLM, describe, lm_loss
from reformer_impl.profiling import STAGES

__all__ = ["ATTENTION_KINDS", "ReformerConfig", "STAGES", "build_attention", "ReformerLM", "describe", "lm_loss"]
