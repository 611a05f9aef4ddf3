"""Crossover lengths: for each pair of series sharing a length axis (LSH per n_hashes against naive
full and against SDPA; ours against each peer), the length from which one costs less than the other,
on time and on each memory figure. Pure."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from bench.report.frames import StudyView, series_label, series_words
from bench.report.labels import plain, short

LENGTH_AXES = ("seq_len",)
DENSE = ("full", "sdpa")
TIME_METRIC = "step_ms_median"
TIE_RTOL = 0.02  # ratios this close to 1 at every length: a tie, not a winner
WORDS = {TIME_METRIC: "time", "rss_delta_mib": "peak memory", "peak_alloc_mib": "peak memory",
         "saved_for_backward_mib": "saved-for-backward bytes"}
COLUMNS = ["study", "metric", "a", "b", "a_key", "b_key", "finding", "lo", "hi", "estimate", "a_wins_above",
           "ratio_first", "ratio_last", "x_first", "x_last", "under_load", "within_noise"]


@dataclass(frozen=True)
class Crossing:
    """Where ratio a/b passes 1 between two measured lengths: `lo`, `hi`, the log-log interpolated
    `estimate`, whether a is the cheaper one above it, and what weakens it."""

    lo: float
    hi: float
    estimate: float
    a_wins_above: bool
    under_load: bool = False
    within_noise: bool = False


def crossings(x: Sequence[float], ratio: Sequence[float], loaded: Optional[Sequence[bool]] = None,
              noise: Optional[Sequence[float]] = None) -> list[Crossing]:
    """Every passage of `ratio` (a/b at each x) through 1, in x order. `loaded[i]`: point i was measured
    under load; `noise[i]`: the relative spread of ratio i (a ratio within it of 1 is a tie)."""
    xs, rs = np.asarray(x, float), np.asarray(ratio, float)
    if xs.shape != rs.shape:
        raise ValueError(f"crossings: {xs.size} lengths but {rs.size} ratios")
    order = np.argsort(xs)
    xs, rs = xs[order], rs[order]
    load = np.asarray(loaded if loaded is not None else [False] * xs.size, bool)[order]
    tol = np.asarray(noise if noise is not None else [0.0] * xs.size, float)[order]
    keep = np.isfinite(xs) & np.isfinite(rs) & (xs > 0) & (rs > 0)
    xs, rs, load, tol = xs[keep], rs[keep], load[keep], tol[keep]
    lr, lx = np.log(rs), np.log(xs)
    out = []
    for i in range(xs.size - 1):
        if lr[i] == 0 or np.sign(lr[i]) == np.sign(lr[i + 1]):
            continue
        if lr[i + 1] == 0:  # exactly 1 at a measured length: the crossing is there
            estimate = float(xs[i + 1])
            j = i + 2 if i + 2 < xs.size else None
            if j is None or np.sign(lr[j]) == np.sign(lr[i]):
                continue
        else:
            estimate = float(np.exp(lx[i] + (0 - lr[i]) * (lx[i + 1] - lx[i]) / (lr[i + 1] - lr[i])))
        noisy = bool(abs(lr[i]) <= math.log1p(tol[i]) or abs(lr[i + 1]) <= math.log1p(tol[i + 1]))
        out.append(Crossing(lo=float(xs[i]), hi=float(xs[i + 1]), estimate=estimate, a_wins_above=bool(lr[i] > 0),
                            under_load=bool(load[i] or load[i + 1]), within_noise=noisy))
    return out


def _n(v: float) -> str:
    return f"{int(round(v)):,}"


def describe(a: str, b: str, metric: str, xs: Sequence[float], ratio: Sequence[float],
             found: Sequence[Crossing]) -> str:
    """One sentence: where a and b cross on `metric`, or that they do not within the measured lengths."""
    what = WORDS.get(metric) or short(metric)
    order = np.argsort(np.asarray(xs, float))
    xs = [float(xs[i]) for i in order]
    rs = [float(ratio[i]) for i in order]
    span = f"{_n(xs[0])}-{_n(xs[-1])} tokens"
    if all(abs(r - 1) <= TIE_RTOL for r in rs):
        return f"{what}, {a} vs {b}: the same within {TIE_RTOL:.0%} at every length in {span}."
    if not found:
        side = f"{a} costs less" if rs[-1] < 1 else f"{b} costs less"
        return (f"{what}, {a} vs {b}: no crossover, not within {span}; {side} throughout "
                f"(ratio {rs[0]:.2g}x at {_n(xs[0])} to {rs[-1]:.2g}x at {_n(xs[-1])}).")
    parts = []
    for c in found:
        winner, loser = (a, b) if c.a_wins_above else (b, a)
        caveats = [w for w, on in (("measured under load", c.under_load), ("within the noise", c.within_noise)) if on]
        note = f" ({', '.join(caveats)})" if caveats else ""
        parts.append(f"{winner} costs less than {loser} from about {_n(c.estimate)} tokens (between {_n(c.lo)} and "
                     f"{_n(c.hi)}){note}")
    return f"{what}: " + "; then ".join(parts) + f"; {a} / {b} = {rs[-1]:.2g}x at {_n(xs[-1])}."


# --------------------------------------------------------------------------- pairs of a study


@dataclass(frozen=True)
class Pair:
    """Two series of one study (and panel) compared on one metric, a/b per common length."""

    study: str
    metric: str
    a: str
    b: str
    a_key: str
    b_key: str
    frame: pd.DataFrame  # x, ratio, under_load, noise (sorted by x)


def _series(view: StudyView) -> list[tuple[str, str, Mapping[str, Any], pd.DataFrame]]:
    """(key, words, first row, rows) per series of the view."""
    if not view.series:
        return []
    out = []
    for _, group in view.frame.groupby(list(view.series), dropna=False, sort=False):
        row = group.iloc[0].to_dict()
        out.append((series_label(row, view.series), series_words(row, [c for c in view.series if c != view.col]),
                    row, group))
    return out


def _roles(view: StudyView, series) -> list[tuple[int, int]]:
    """(candidate, baseline) index pairs: LSH-like kinds against dense kinds, or ours against each peer."""
    pairs = []
    for i, (_, _, ri, _) in enumerate(series):
        for j, (_, _, rj, _) in enumerate(series):
            if i == j or (view.col and plain(ri.get(view.col)) != plain(rj.get(view.col))):
                continue
            ai, aj = plain(ri.get("attention")), plain(rj.get("attention"))
            if "attention" in view.series and ai not in DENSE and aj in DENSE:
                pairs.append((i, j))
            elif "attention" not in view.series and "impl" in view.series and ri.get("impl") == "ours" != rj.get("impl"):
                pairs.append((i, j))
    return pairs


def _noise(rows: pd.DataFrame, metric: str) -> pd.Series:
    lo, hi = ((metric.replace("_median", "_q25"), metric.replace("_median", "_q75")) if metric.endswith("_median")
              else (f"{metric}_min", f"{metric}_max"))
    if lo in rows and hi in rows:
        return ((rows[hi] - rows[lo]).abs() / rows[metric]).fillna(0.0)
    return pd.Series(0.0, index=rows.index)


def study_pairs(view: StudyView) -> list[Pair]:
    """Every (candidate, baseline) pair of the view on its time and memory figures, over common lengths."""
    if view.x not in LENGTH_AXES:
        return []
    series = _series(view)
    metrics = [m for m in dict.fromkeys((*view.fitted, *view.metrics)) if m in view.frame.columns]
    out = []
    for i, j in _roles(view, series):
        (ka, wa, _, ga), (kb, wb, _, gb) = series[i], series[j]
        for metric in metrics:
            left = ga.assign(_noise=_noise(ga, metric)).set_index(view.x)
            right = gb.assign(_noise=_noise(gb, metric)).set_index(view.x)
            common = sorted(set(left.index[left[metric].notna()]) & set(right.index[right[metric].notna()]))
            if len(common) < 2:
                continue
            la, lb = left.loc[common], right.loc[common]
            under = la.get("under_load", pd.Series(False, index=common)).fillna(False).astype(bool) | \
                lb.get("under_load", pd.Series(False, index=common)).fillna(False).astype(bool)
            frame = pd.DataFrame({"x": [float(c) for c in common],
                                  "ratio": (la[metric].astype(float) / lb[metric].astype(float)).to_numpy(),
                                  "under_load": under.to_numpy(),
                                  "noise": (la["_noise"] + lb["_noise"]).to_numpy()})
            out.append(Pair(view.name, metric, wa, wb, ka, kb, frame))
    return out


def crossover_table(views: Sequence[StudyView]) -> pd.DataFrame:
    """One row per pair and metric: the crossing(s) as a sentence and as numbers (first crossing)."""
    rows = []
    for view in views:
        for p in study_pairs(view):
            f = p.frame
            found = crossings(f["x"], f["ratio"], f["under_load"], f["noise"])
            first = found[0] if found else None
            rows.append({
                "study": p.study, "metric": p.metric, "a": p.a, "b": p.b, "a_key": p.a_key, "b_key": p.b_key,
                "finding": describe(p.a, p.b, p.metric, list(f["x"]), list(f["ratio"]), found),
                "lo": None if first is None else first.lo, "hi": None if first is None else first.hi,
                "estimate": None if first is None else round(first.estimate),
                "a_wins_above": None if first is None else first.a_wins_above,
                "ratio_first": round(float(f["ratio"].iloc[0]), 3), "ratio_last": round(float(f["ratio"].iloc[-1]), 3),
                "x_first": float(f["x"].iloc[0]), "x_last": float(f["x"].iloc[-1]),
                "under_load": any(c.under_load for c in found), "within_noise": any(c.within_noise for c in found),
            })
    return pd.DataFrame(rows, columns=COLUMNS)
