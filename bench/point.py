"""GridPoint: one fully resolved thing to measure, with a stable id from its canonical config."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

WORKLOADS = ("attention", "model", "duplication")
DTYPES = ("float32", "float64", "bfloat16", "float16")
IMPLS = ("ours", "reformer_pytorch", "hf")


@dataclass(frozen=True)
class GridPoint:
    """What one worker process measures. `model` holds ReformerConfig fields (canonical: fields
    that cannot matter for this point, e.g. n_hashes for full attention, are dropped)."""

    suite: str
    workload: str
    device: str  # 'cpu' | 'cuda'
    dtype: str
    batch_size: int
    seq_len: int
    model: dict[str, Any] = field(default_factory=dict)
    impl: str = "ours"  # who implements the attention layer: ours or a peer library
    repeats: int = 5
    warmup: int = 2
    timeout_s: float = 600.0
    # Which of the suite's studies asked for this point; not part of its identity, so a config
    # that two studies share runs once.
    studies: tuple[str, ...] = ()
    # Profile one extra iteration for its stage times (None: as $BENCH_BREAKDOWN says); how the point
    # is measured, not what, so it stays out of the id like `repeats`.
    breakdown: bool | None = None

    def canonical(self) -> dict[str, Any]:
        """What identifies the point: everything but how it is measured (repeats, warmup, timeout,
        breakdown) and who asked for it (studies)."""
        d = asdict(self)
        for key in ("repeats", "warmup", "timeout_s", "studies", "breakdown"):
            d.pop(key)
        return d

    @property
    def point_id(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "GridPoint":
        return cls(**{**d, "studies": tuple(d.get("studies", ()))})
