"""The paper's Table 3 (memory and time per model type) as functions of a point's params, and log-log
growth-exponent fits to set measured scaling next to the predicted one. Pure: no torch, no I/O.

Table 3 (Kitaev et al. 2020), b batch, l length, n_l layers, n_h heads, n_r hash rounds, c keys per
query in LSH attention:

| model                          | memory                          | time                               |
| Transformer                    | max(b l d_ff, b n_h l^2) n_l    | (b l d_ff + b n_h l^2) n_l         |
| Reversible Transformer         | max(b l d_ff, b n_h l^2)        | (b n_h l d_ff + b n_h l^2) n_l     |
| Chunked Reversible Transformer | max(b l d_model, b n_h l^2)     | (b n_h l d_ff + b n_h l^2) n_l     |
| LSH Transformer                | max(b l d_ff, b n_h l n_r c) n_l| (b l d_ff + b n_h n_r l c) n_l     |
| Reformer                       | max(b l d_model, b n_h l n_r c) | (b l d_ff + b n_h n_r l c) n_l     |

The caption's c = 128^2 is a chunking assumption; for our points c is the real window, 2 * chunk_len
keys per query (a chunk and the one before it). The n_h factor in the reversible rows' time is the
paper's as printed. Terms are proportional, not absolute: only ratios and exponents are meaningful.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

PAPER_C = 128**2  # Table 3 caption's chunk assumption; kept for reference, not used for our points
FULL_KINDS = ("full", "sdpa")


@dataclass(frozen=True)
class Dims:
    """The symbols of Table 3 for one point."""

    b: int
    l: int
    d_model: int
    d_ff: int
    n_h: int
    n_l: int
    n_r: int
    c: int


@dataclass(frozen=True)
class Row:
    """One row of Table 3: its name, whether the paper prints it, and its two terms."""

    name: str
    in_paper: bool
    memory: Callable[[Dims], float]
    time: Callable[[Dims], float]


def _full_attn(d: Dims) -> float:
    return d.b * d.n_h * d.l**2


def _lsh_attn(d: Dims) -> float:
    return d.b * d.n_h * d.n_r * d.l * d.c


ROWS: dict[str, Row] = {
    "Transformer": Row(
        "Transformer", True,
        memory=lambda d: max(d.b * d.l * d.d_ff, _full_attn(d)) * d.n_l,
        time=lambda d: (d.b * d.l * d.d_ff + _full_attn(d)) * d.n_l,
    ),
    "Reversible Transformer": Row(
        "Reversible Transformer", True,
        memory=lambda d: max(d.b * d.l * d.d_ff, _full_attn(d)),
        time=lambda d: (d.b * d.n_h * d.l * d.d_ff + _full_attn(d)) * d.n_l,
    ),
    "Chunked Reversible Transformer": Row(
        "Chunked Reversible Transformer", True,
        memory=lambda d: max(d.b * d.l * d.d_model, _full_attn(d)),
        time=lambda d: (d.b * d.n_h * d.l * d.d_ff + _full_attn(d)) * d.n_l,
    ),
    "LSH Transformer": Row(
        "LSH Transformer", True,
        memory=lambda d: max(d.b * d.l * d.d_ff, _lsh_attn(d)) * d.n_l,
        time=lambda d: (d.b * d.l * d.d_ff + _lsh_attn(d)) * d.n_l,
    ),
    "Reformer": Row(
        "Reformer", True,
        memory=lambda d: max(d.b * d.l * d.d_model, _lsh_attn(d)),
        time=lambda d: (d.b * d.l * d.d_ff + _lsh_attn(d)) * d.n_l,
    ),
    # Not in the paper: reversible LSH without feed-forward chunking keeps one layer's d_ff activations.
    "Reversible LSH Transformer": Row(
        "Reversible LSH Transformer", False,
        memory=lambda d: max(d.b * d.l * d.d_ff, _lsh_attn(d)),
        time=lambda d: (d.b * d.l * d.d_ff + _lsh_attn(d)) * d.n_l,
    ),
}


def pick_row(attention: str, reversible: bool, chunked_ff: bool) -> Row:
    """Table 3's row for (attention kind, reversible, ff_chunks > 1). Without reversibility chunking
    the feed-forward does not remove its saved activations, so those points take the plain rows."""
    if attention in FULL_KINDS:
        if not reversible:
            return ROWS["Transformer"]
        return ROWS["Chunked Reversible Transformer" if chunked_ff else "Reversible Transformer"]
    if attention == "lsh":
        if not reversible:
            return ROWS["LSH Transformer"]
        return ROWS["Reformer" if chunked_ff else "Reversible LSH Transformer"]
    raise ValueError(f"attention={attention!r}: expected one of {FULL_KINDS + ('lsh',)}")


def _int(params: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = params.get(key)
    if value is None:
        if default is None:
            raise ValueError(f"params[{key!r}] is missing; Table 3 needs it")
        return default
    return int(value)


def dims_for(params: Mapping[str, Any]) -> tuple[Dims, Row]:
    """Table 3's symbols and row for a record's flat params. The attention workload is one layer with
    no feed-forward: n_l = 1, d_ff -> d_model, not reversible, not chunked."""
    attention = params.get("attention")
    attention_only = params.get("workload") == "attention"
    d_model = _int(params, "d_model")
    chunk_len = params.get("chunk_len")
    dims = Dims(
        b=_int(params, "batch_size"),
        l=_int(params, "seq_len"),
        d_model=d_model,
        d_ff=d_model if attention_only else _int(params, "d_ff"),
        n_h=_int(params, "n_heads"),
        n_l=1 if attention_only else _int(params, "n_layers"),
        n_r=_int(params, "n_hashes", 1) if attention == "lsh" else 1,
        c=2 * int(chunk_len) if attention == "lsh" and chunk_len is not None else 0,
    )
    if attention == "lsh" and dims.c == 0:
        raise ValueError("params['chunk_len'] is missing; LSH's Table 3 terms need it (c = 2 * chunk_len)")
    reversible = False if attention_only else bool(params.get("reversible", False))
    chunked = False if attention_only else _int(params, "ff_chunks", 1) > 1
    return dims, pick_row(str(attention), reversible, chunked)


@dataclass(frozen=True)
class Terms:
    row: str
    memory: float
    time: float


def table3_terms(params: Mapping[str, Any]) -> Terms:
    """The memory and time terms of the point's Table 3 row, evaluated at its params."""
    dims, row = dims_for(params)
    return Terms(row=row.name, memory=float(row.memory(dims)), time=float(row.time(dims)))


# --------------------------------------------------------------------------- exponent fits


@dataclass(frozen=True)
class Fit:
    """y ~ exp(intercept) * x**slope by least squares on (log x, log y). r2 is None for two points,
    where any line fits exactly and R^2 = 1 would say nothing."""

    slope: float
    intercept: float
    r2: float | None
    n: int
    x_min: float = math.nan
    x_max: float = math.nan


MIN_TAIL_POINTS = 3


def fit_loglog(x: Sequence[float], y: Sequence[float]) -> Fit:
    """Least-squares line through (log x, log y). Points with a non-positive or non-finite x or y are
    dropped; needs two distinct x values left. R^2 is 1.0 when y is constant (a flat fit is exact)."""
    xs, ys = _positive(x, y)
    lx, ly = np.log(xs), np.log(ys)
    if np.unique(lx).size < 2:
        raise ValueError(f"fit_loglog: need >= 2 distinct positive x values, got {np.unique(xs).tolist()}")
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = float(np.sum((ly - (slope * lx + intercept)) ** 2))
    total = float(np.sum((ly - ly.mean()) ** 2))
    r2 = (1.0 - residual / total if total > 0 else 1.0) if np.unique(lx).size > 2 else None
    return Fit(slope=float(slope), intercept=float(intercept), r2=None if r2 is None else float(r2),
               n=int(xs.size), x_min=float(xs.min()), x_max=float(xs.max()))


def _positive(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    if xs.shape != ys.shape:
        raise ValueError(f"fit_loglog: x has {xs.size} values, y has {ys.size}")
    keep = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    return xs[keep], ys[keep]


def tail_mask(x: Sequence[float], min_points: int = MIN_TAIL_POINTS) -> np.ndarray:
    """Which points are the largest sizes: the upper half of the distinct x values, at least
    `min_points` of them (all when there are fewer). Table 3's terms are leading terms, so their
    exponent is the one of the largest sizes, where constant and lower-order terms fade."""
    xs = np.asarray(x, dtype=float)
    distinct = np.unique(xs[np.isfinite(xs)])
    k = max(min_points, math.ceil(distinct.size / 2))
    cut = distinct[-k:].min() if distinct.size else math.inf
    return xs >= cut


def fit_tail(x: Sequence[float], y: Sequence[float], min_points: int = MIN_TAIL_POINTS) -> Fit:
    """fit_loglog over the largest sizes (see tail_mask)."""
    xs, ys = _positive(x, y)
    mask = tail_mask(xs, min_points)
    return fit_loglog(xs[mask], ys[mask])


def fit_offset_power(x: Sequence[float], y: Sequence[float]) -> float | None:
    """The exponent p of y = a + b * x**p (a >= 0, b > 0) over every point, least squares on relative
    residuals: the growth rate once a constant term (weights, buffers) is set apart. For each p on a
    fine grid a and b are a linear fit; the best p wins. None with fewer than four distinct x values
    (three parameters need a point to spare)."""
    xs, ys = _positive(x, y)
    if np.unique(xs).size < 4:
        return None
    u = xs / xs.max()
    best, best_p = math.inf, None
    for p in np.round(np.arange(-1.0, 4.0 + 1e-9, 0.005), 3):
        design = np.stack([np.ones_like(u), u**p], axis=1) / ys[:, None]  # relative residuals
        (a, b), *_ = np.linalg.lstsq(design, np.ones_like(ys), rcond=None)
        if a < 0:  # the constant cannot be negative: fit b alone
            a, b = 0.0, float(np.sum(u**p / ys) / np.sum((u**p / ys) ** 2))
        if b <= 0:
            continue
        err = float(np.sum((1 - (a + b * u**p) / ys) ** 2))
        if err < best - 1e-15:
            best, best_p = err, float(p)
    return best_p


def predicted_exponent(params_rows: Sequence[Mapping[str, Any]], axis: str, term: str) -> float:
    """The log-log slope of Table 3's `term` ('memory' or 'time') against `axis`, evaluated on the same
    points (so a batch size that shrinks with the length, as in fixed-token studies, is accounted for)."""
    if term not in ("memory", "time"):
        raise ValueError(f"term={term!r}: expected 'memory' or 'time'")
    xs = [float(p[axis]) for p in params_rows]
    ys = [getattr(table3_terms(p), term) for p in params_rows]
    return fit_loglog(xs, ys).slope


def is_power_law_axis(values: Sequence[Any]) -> bool:
    """Whether a log-log fit makes sense: numeric (not bool), positive, at least two distinct values."""
    nums = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            return False
        nums.append(float(v))
    return len(set(nums)) >= 2
