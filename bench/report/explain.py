"""Why a fitted exponent differs from Table 3's, from figures of the same run only: the weights +
gradients + optimizer state (from n_params) and inputs, the transient (peak minus saved-for-backward),
the analytic FLOP count against the achieved rate, the stage whose share grows, and the load.
A figure explains a gap when taking it out leaves a gap of at most GAP_LIMIT; otherwise the
figures found are listed and the gap is called unexplained. Pure."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from bench.complexity import fit_loglog
from bench.metrics import MEMORY_METRICS
from bench.report.derived import stage_columns, stage_name

GAP_LIMIT = 0.15
PEAK_METRICS = tuple(m for m in MEMORY_METRICS if m != "saved_for_backward_mib")
MAIN_PEAKS = ("peak_alloc_mib", "rss_delta_mib")  # what a saved-bytes gap is set against, in order


def slope(x: pd.Series, y: pd.Series) -> Optional[float]:
    """Log-log slope of y against x over the rows where both are positive, None if under 2 sizes."""
    data = pd.DataFrame({"x": x.astype(float), "y": pd.to_numeric(y, errors="coerce")}).dropna()
    data = data[(data["x"] > 0) & (data["y"] > 0)]
    if data["x"].nunique() < 2:
        return None
    return fit_loglog(data["x"], data["y"]).slope


def _p(v: float) -> str:
    return f"{round(v, 2) + 0.0:.2f}"


def _range(values: pd.Series, fmt) -> str:
    a, b = fmt(values.iloc[0]), fmt(values.iloc[-1])
    return a if a == b else f"{a} to {b}"


def _mib(v: float) -> str:
    return f"{v:,.1f} MiB"


def _span(tail: pd.DataFrame, x: str, col: str, fmt=_mib) -> str:
    first, last = tail.iloc[0], tail.iloc[-1]
    return f"{fmt(float(first[col]))} at {x} = {first[x]:g} to {fmt(float(last[col]))} at {last[x]:g}"


def _state(tail: pd.DataFrame) -> Optional[pd.Series]:
    if "state_mib" not in tail or tail["state_mib"].isna().any():
        return None
    return tail["state_mib"] + tail.get("input_mib", pd.Series(0.0, index=tail.index)).fillna(0.0)


def memory_reasons(tail: pd.DataFrame, x: str, metric: str, predicted: float) -> tuple[list[str], bool]:
    """(sentences, explained) for a memory gap."""
    reasons: list[str] = []
    if metric in PEAK_METRICS:
        state = _state(tail)
        if state is not None:
            rest = tail[metric] - state
            s_rest = slope(tail[x], rest) if (rest > 0).all() else None
            share = state / tail[metric]
            n = tail.get("n_params")
            what = (f"weights + gradients{' + AdamW moments' if 'model' in set(tail.get('workload', [])) else ''}"
                    f" ({_range(n, lambda v: f'{int(v):,}')} parameters) and inputs"
                    if n is not None and n.notna().all() else "weights, gradients, optimizer state and inputs")
            text = (f"{what} take {_range(state, _mib)}, "
                    f"{share.iloc[0]:.0%} to {share.iloc[-1]:.0%} of the figure")
            if s_rest is not None and abs(s_rest - predicted) <= GAP_LIMIT:
                return [f"{text}; without them it grows with slope {s_rest:.2f}, as Table 3's {_p(predicted)}"], True
            reasons.append(text + (f"; without them the slope is {s_rest:.2f}" if s_rest is not None else ""))
        saved = tail.get("saved_for_backward_mib")
        if saved is not None and saved.notna().all():
            s_saved = slope(tail[x], saved)
            transient = tail[metric] - saved - (state if state is not None else 0.0)
            s_tr = slope(tail[x], transient) if (transient > 0).all() else None
            if s_tr is not None and s_saved is not None:
                text = (f"the transient (peak minus saved-for-backward{' and state' if state is not None else ''}) "
                        f"grows with slope {s_tr:.2f} ({_mib(transient.iloc[0])} to {_mib(transient.iloc[-1])}), "
                        f"the saved bytes with {s_saved:.2f}")
                gap = slope(tail[x], tail[metric])
                if (abs(s_saved - predicted) <= GAP_LIMIT and gap is not None
                        and (s_tr - predicted) * (gap - predicted) > 0):
                    return [text + f", as Table 3's {_p(predicted)}: the transient makes the gap"], True
                reasons.append(text)
    elif metric == "saved_for_backward_mib":
        for peak in MAIN_PEAKS:
            if peak in tail and tail[peak].notna().all():
                s_peak = slope(tail[x], tail[peak])
                if s_peak is not None:
                    text = (f"saved-for-backward leaves out the transient that Table 3's peak term counts: "
                            f"the measured peak `{peak}` grows with slope {s_peak:.2f}")
                    explained = abs(s_peak - predicted) <= GAP_LIMIT
                    return [text + (", as Table 3's" if explained else "")], explained
    return reasons, False


def _flop_stage(tail: pd.DataFrame, x: str) -> str:
    """The FLOP stage whose share of the count grows most over the tail, with its shares."""
    cols = [c for c in tail.columns if str(c).startswith("gflop.") and tail[c].notna().all() and tail[c].iloc[-1] > 0]
    if not cols:
        return ""
    shares = {c: (tail[c].iloc[0] / tail["gflop"].iloc[0], tail[c].iloc[-1] / tail["gflop"].iloc[-1]) for c in cols}
    best = max(shares, key=lambda c: shares[c][1] - shares[c][0])
    a, b = shares[best]
    return f"; {best.removeprefix('gflop.')} is {a:.0%} to {b:.0%} of the FLOPs" if b - a > 0.01 else ""


def time_reasons(tail: pd.DataFrame, x: str, metric: str, measured: float, predicted: float) -> tuple[list[str], bool]:
    """(sentences, explained) for a time gap: the gap split into the analytic FLOP count's part and the
    achieved rate's part, and the stage whose share of the profiled step grows fastest."""
    reasons: list[str] = []
    explained = False
    gap = measured - predicted
    s_flops = slope(tail[x], tail["gflop"]) if "gflop" in tail and tail["gflop"].notna().all() else None
    s_rate = (slope(tail[x], tail["achieved_gflops"])
              if "achieved_gflops" in tail and tail["achieved_gflops"].notna().all() else None)
    if s_flops is not None:
        count = (f"{s_flops - predicted:+.2f} from the analytic FLOP count (slope {s_flops:.2f}"
                 f"{_flop_stage(tail, x)})")
        if s_rate is not None:
            rate = (f"{-s_rate:+.2f} from the achieved rate "
                    f"({_span(tail, x, 'achieved_gflops', lambda v: f'{v:.3g} GFLOP/s')})")
            parts = [count, rate] if abs(s_flops - predicted) >= abs(s_rate) else [rate, count]
            reasons.append(f"of the gap {gap:+.2f}, " + " and ".join(parts))
            explained = abs(gap - (s_flops - predicted) + s_rate) <= GAP_LIMIT
        else:
            reasons.append(f"of the gap {gap:+.2f}, " + count)
            explained = abs(measured - s_flops) <= GAP_LIMIT
    stages = [c for c in stage_columns(tail) if not c.endswith(".other")]
    if stages and "stage_total_ms" in tail:
        shares = {c: (tail[c] / tail["stage_total_ms"]).fillna(0.0) for c in stages}
        growing = max(shares, key=lambda c: shares[c].iloc[-1] - shares[c].iloc[0])
        share = shares[growing]
        if share.iloc[-1] - share.iloc[0] >= 0.01:  # the stage whose share of the step grows most
            s_stage = slope(tail[x], tail[growing])
            reasons.append(f"stage `{stage_name(growing)}` takes a growing share of the profiled step, "
                           f"{share.iloc[0]:.0%} to {share.iloc[-1]:.0%}"
                           + (f" (slope {s_stage:.2f})" if s_stage is not None else ""))
    return reasons, explained


def explain_gap(tail: pd.DataFrame, x: str, metric: str, measured: float, predicted: Optional[float],
                two_points: bool = False) -> str:
    """The explanation column of one flagged fit: measured figures, or "unexplained"."""
    pre = ["only two sizes: the slope is a two-point ratio, no fit quality can be given"] if two_points else []
    if predicted is None:
        return "; ".join(pre + ["Table 3 has no term for this point"])
    tail = tail.sort_values(x)
    if metric.endswith("_ms_median"):
        reasons, explained = time_reasons(tail, x, metric, measured, predicted)
    else:
        reasons, explained = memory_reasons(tail, x, metric, predicted)
    loaded = int(tail["under_load"].fillna(False).astype(bool).sum()) if "under_load" in tail else 0
    if loaded:
        reasons.append(f"{loaded} of the {len(tail)} fitted points were measured under load")
    if abs(measured - predicted) <= GAP_LIMIT:
        return "; ".join(pre + reasons)
    if not explained:
        reasons = ["unexplained"] + ([f"figures of this run: {'; '.join(reasons)}"] if reasons else [])
    return "; ".join(pre + reasons)


def per_step_growth(x: pd.Series, y: pd.Series) -> Optional[float]:
    """Least-squares slope of y against x on linear axes (e.g. MiB per layer)."""
    data = pd.DataFrame({"x": x.astype(float), "y": pd.to_numeric(y, errors="coerce")}).dropna()
    if data["x"].nunique() < 2:
        return None
    return float(np.polyfit(data["x"], data["y"], 1)[0])
