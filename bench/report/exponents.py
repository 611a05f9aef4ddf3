"""Each series' growth exponent next to Table 3's: fitted on the largest sizes (where the leading
term dominates), with R^2 and the number of points, and every gap over GAP_LIMIT explained by a
figure of the same run, or called unexplained (bench.report.explain). Pure."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import pandas as pd

from bench.complexity import fit_offset_power, fit_tail, is_power_law_axis, predicted_exponent
from bench.report.explain import GAP_LIMIT, explain_gap
from bench.report.frames import MEMORY_METRICS, TIME_METRICS, StudyView, series_label
from bench.report.labels import plain

# Axes along which Table 3's terms are power laws (ff_chunks only switches a row on or off).
POWER_AXES = ("seq_len", "n_layers", "n_hashes", "d_ff", "d_model", "batch_size", "chunk_len")
COLUMNS = ["study", "series", "metric", "x", "fit_range", "n", "measured_slope", "r2", "predicted_slope",
           "gap", "flag", "offset_fit_p", "table3_row", "explanation"]


def exponent_table(views: Sequence[StudyView]) -> pd.DataFrame:
    """Per study, series and metric: the log-log slope over the largest sizes (>= 3 points where
    the series has them), R^2 (None for two points), Table 3's slope over the same points, the gap,
    the exponent p of a + b*x^p over all points, and an explanation for each flagged gap."""
    rows = []
    for view in views:
        if view.x not in POWER_AXES or not is_power_law_axis(list(view.frame[view.x].dropna())):
            continue
        metrics = [m for m in view.fitted if m in MEMORY_METRICS or m in TIME_METRICS]
        groups = view.frame.groupby(list(view.series), dropna=False, sort=False) if view.series else [((), view.frame)]
        for _, group in groups:
            label = series_label(group.iloc[0].to_dict(), view.series)
            for metric in metrics:
                row = fit_row(view, label, group, metric)
                if row is not None:
                    rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def fit_row(view: StudyView, label: str, group: pd.DataFrame, metric: str) -> Optional[dict[str, Any]]:
    data = group[[view.x, metric]].dropna()
    data = data[(data[view.x] > 0) & (data[metric] > 0)]
    if data[view.x].nunique() < 2:
        return None
    fit = fit_tail(data[view.x].astype(float), data[metric].astype(float))
    tail = data[data[view.x].astype(float) >= fit.x_min]  # the points the fit used
    term = "time" if metric in TIME_METRICS else "memory"
    try:
        params = [{k: plain(v) for k, v in r.items()} for _, r in group.loc[tail.index].iterrows()]
        predicted: Optional[float] = predicted_exponent(params, view.x, term)
    except (ValueError, KeyError, TypeError):
        predicted = None
    rows = group.get("effective.table3_row")
    row_name = ", ".join(sorted({str(v) for v in rows.dropna()})) if rows is not None else ""
    gap = None if predicted is None else fit.slope - predicted
    offset_p = fit_offset_power(data[view.x].astype(float), data[metric].astype(float))
    flagged = gap is not None and abs(gap) > GAP_LIMIT
    out = {
        "study": view.name, "series": label, "metric": metric, "x": view.x,
        "fit_range": f"{plain(fit.x_min)}-{plain(fit.x_max)}", "n": fit.n,
        "measured_slope": round(fit.slope, 3) + 0.0,
        "r2": "too few points" if fit.r2 is None else round(fit.r2, 3),
        "predicted_slope": None if predicted is None else round(predicted, 3) + 0.0,
        "gap": None if gap is None else round(gap, 3) + 0.0,
        "flag": "GAP" if flagged else "",
        "offset_fit_p": None if offset_p is None else round(offset_p, 3) + 0.0,
        "table3_row": row_name,
    }
    fitted = group.loc[tail.index]
    out["explanation"] = (explain_gap(fitted, view.x, metric, fit.slope, predicted, two_points=fit.r2 is None)
                          if flagged or fit.r2 is None else "")
    return out

