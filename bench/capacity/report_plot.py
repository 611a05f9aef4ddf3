"""The capacity figure: per configuration the measured longest length as a bar and the calibrated
prediction as a hatched bar beside it, Table 3's bound as a marker, on a log axis."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # the object API: no pyplot state, no backend to choose (renders with Agg)
from matplotlib.patches import Rectangle

from bench.capacity.planner import MAX_VALUE
from bench.capacity.spec import CapacityPlan

UNIT = {"seq_len": "tokens", "batch_size": "sequences"}
KINDS = {"full": "#7f7f7f", "sdpa": "#1f77b4", "lsh": "#d95f02", "local": "#1b9e77"}


def _num(v) -> float | None:
    return None if v is None or v != v else float(v)


def plot(df: pd.DataFrame, plan: CapacityPlan, path: Path, caption: str) -> Path:
    """Horizontal bars, measured (solid) and predicted (hatched) side by side per configuration."""
    col = f"longest_{plan.over}"
    height = 0.62 * len(df) + 3.0
    fig = Figure(figsize=(11, height))
    ax = fig.subplots()
    h = 0.38
    measured = [_num(v) for v in df[col]]
    predicted = [_num(v) for v in df.predicted]
    table3 = [_num(v) for v in df.table3_longest]
    colors = [KINDS.get(a, "#999999") for a in df.attention]
    known = [v for v in measured + predicted + table3 if v] or [plan.search.start]
    left = min(known) / 2
    for i, (m, p, c) in enumerate(zip(measured, predicted, colors)):
        if m:
            ax.barh(i - h / 2, m - left, left=left, height=h, color=c, alpha=0.9)
        if p:
            ax.barh(i + h / 2, p - left, left=left, height=h, color=c, alpha=0.35, hatch="///", edgecolor=c)
    for i, (m, why, limit, err) in enumerate(zip(measured, df.limited_by, df.limit, df.prediction_error)):
        note = (">= " if limit == MAX_VALUE else "") + f"{m:,.0f}  {why}" if m else why
        ax.text(m if m else left, i - h / 2, f" {note}", va="center", fontsize=7)
        if predicted[i]:
            e = f" ({err:+.0%})" if _num(err) is not None else ""
            ax.text(predicted[i], i + h / 2, f" {predicted[i]:,.0f}{e}", va="center", fontsize=7, color="#444444")
    t3 = [(i, v) for i, v in enumerate(table3) if v]
    if t3:
        ax.scatter([v for _, v in t3], [i for i, _ in t3], marker="|", color="black", s=120, zorder=3,
                   label="Table 3 term: the paper's lower bound on memory (an upper bound on the length)")
    ax.set_xscale("log", base=2)
    ax.set_xlim(left=left, right=max(known) * 6)
    budgets = sorted(set(df.budget_gib))
    names = [f"{c} ({b:g} GiB)" if len(budgets) > 1 else c for c, b in zip(df.configuration, df.budget_gib)]
    ax.set_yticks(range(len(df)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"longest {plan.over.replace('_', ' ')} under the budget ({UNIT[plan.over]}, log scale)")
    present = [k for k in KINDS if k in set(df.attention)]
    handles = [Rectangle((0, 0), 1, 1, color=KINDS[k], alpha=0.9) for k in present]
    labels = [f"measured, attention={k}" for k in present]
    if any(predicted):
        handles.append(Rectangle((0, 0), 1, 1, facecolor="#bbbbbb", hatch="///", edgecolor="#777777"))
        labels.append("calibrated prediction (small probes, fitted, solved for the budget)")
    hs, ls = ax.get_legend_handles_labels()
    # above the bars, not beside them: a legend at the side squeezed the axis to a quarter of the figure
    ax.legend(handles + hs, labels + ls, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8,
              frameon=False)
    ax.set_title(f"{plan.suite} ({plan.profile}): how long a sequence fits in "
                 f"{' / '.join(f'{b:g}' for b in budgets)} GiB", fontsize=10, pad=10 + 16 * math.ceil(len(handles + hs) / 2))
    lines = textwrap.wrap(caption, 150)
    fig.text(0.01, 0.005, "\n".join(lines), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, min(0.5, (0.14 * len(lines) + 0.15) / height), 1, 1))  # room for the caption
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path
