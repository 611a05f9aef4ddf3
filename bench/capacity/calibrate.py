"""The calibrated prediction: a step's measured peak memory (and wall time) at a few small lengths,
fitted by the form its Table 3 row implies, solved for the budget (and the per-probe timeout).

Forms: 'linear' a + b*L (LSH, local, SDPA's fused kernel: nothing of size L^2 is stored) and
'quadratic' a + b*L + c*L^2 (naive full attention keeps its L x L scores). The fit is least squares
with b, c >= 0 (a memory that shrinks with L is noise, not a form): a negative coefficient is
dropped and the rest refitted. Pure: numpy only, no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LINEAR, QUADRATIC = "linear", "quadratic"
FORMS = (LINEAR, QUADRATIC)


@dataclass(frozen=True)
class Fit:
    """y = a + b*L + c*L^2 fitted to n points (c is 0 for the linear form)."""

    form: str
    a: float
    b: float
    c: float
    n: int

    def __call__(self, length: float) -> float:
        return self.a + self.b * length + self.c * length**2

    def solve(self, limit: float) -> float:
        """The largest L >= 0 with fit(L) <= limit: inf if the fit does not grow, 0 if even L=0 is over."""
        if self.a > limit:
            return 0.0
        if self.c > 0:
            room = limit - self.a
            return (-self.b + math.sqrt(self.b**2 + 4 * self.c * room)) / (2 * self.c)
        if self.b > 0:
            return (limit - self.a) / self.b
        return math.inf


def memory_form(attention: str) -> str:
    """The form of a step's peak memory in L: quadratic only where the L x L scores are stored."""
    return QUADRATIC if attention == "full" else LINEAR


def time_form(attention: str) -> str:
    """The form of a step's time in L: quadratic for dense attention (naive or fused), linear for LSH."""
    return QUADRATIC if attention in ("full", "sdpa") else LINEAR


def fit(lengths: Sequence[float], values: Sequence[float], form: str) -> Fit | None:
    """Least squares of `form` through the points with b, c >= 0; None with too few distinct lengths
    (two for linear; a quadratic from two points keeps a + c*L^2)."""
    if form not in FORMS:
        raise ValueError(f"form={form!r}: expected one of {FORMS}")
    x = np.asarray(lengths, dtype=float)
    y = np.asarray(values, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"fit: {x.size} lengths but {y.size} values")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    distinct = np.unique(x).size
    if distinct < 2:
        return None
    powers = [1, 2] if form == QUADRATIC and distinct >= 3 else [2] if form == QUADRATIC else [1]
    while powers:
        design = np.column_stack([np.ones_like(x)] + [x**p for p in powers])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        slopes = dict(zip(powers, coef[1:]))
        negative = [p for p, v in slopes.items() if v < 0]
        if not negative:
            return Fit(form, float(coef[0]), float(slopes.get(1, 0.0)), float(slopes.get(2, 0.0)), int(x.size))
        # drop the negative term; a quadratic whose L^2 term is noise keeps its linear one
        powers = [p for p in powers if p != (2 if 2 in negative else negative[0])]
    return Fit(form, float(np.median(y)), 0.0, 0.0, int(x.size))  # flat: nothing grows


@dataclass(frozen=True)
class Calibration:
    """What the calibration probes predict: the longest length under the memory budget (`memory`),
    under the per-probe timeout (`time`, None without a timeout or a time fit), the smaller of them
    rounded down to the search's multiple (`value`) and which one it is (`limit`)."""

    memory_fit: Fit
    time_fit: Fit | None
    memory: float
    time: float | None
    value: int
    limit: str  # 'memory' or 'time'


def calibrate(points: Sequence[tuple[int, float, float | None]], budget_mib: float, mem_form: str,
              timeout_s: float | None = None, t_form: str = LINEAR, multiple: int = 1,
              top: int | None = None) -> Calibration | None:
    """Fit (length, peak MiB, wall s) points and solve; None when the peaks cannot be fitted.
    The value is clamped to [multiple, top]."""
    pts = [(length, peak, wall) for length, peak, wall in points if peak is not None]
    mem = fit([p[0] for p in pts], [p[1] for p in pts], mem_form)
    if mem is None:
        return None
    walls = [(p[0], p[2]) for p in points if p[2] is not None]
    tfit = fit([w[0] for w in walls], [w[1] for w in walls], t_form) if timeout_s is not None else None
    at_memory = mem.solve(budget_mib)
    at_time = tfit.solve(timeout_s) if tfit is not None else None
    longest, limit = (at_time, "time") if at_time is not None and at_time < at_memory else (at_memory, "memory")
    ceiling = top if top is not None else 2**40
    value = int(min(longest, ceiling) // multiple) * multiple
    return Calibration(mem, tfit, at_memory, at_time, max(multiple, min(value, ceiling)), limit)
