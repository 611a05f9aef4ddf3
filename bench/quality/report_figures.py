"""The quality report's figures: learning curves per study, quality against cost (Pareto) and the
LSH approximation study. Each function draws one figure from frames it is given and saves it with
its caption underneath; nothing here decides a verdict."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.quality.report_frames import AS_TRAINED, memory_column, pareto_front
from bench.report.figures import _caption_below

DPI = 120
BPB = "bits per byte (bpb)"
CURVE_METRICS = {"valid_bpb": "held-out bits per byte", "train_bpb": "training loss (bits per byte)"}
CURVE_X = {"step": "training step", "train_s": "training time (s, wall clock)"}


def model_colours(models: Sequence[str], x_of: Mapping[str, Any]) -> dict[str, Any]:
    """A sequential palette in x order for models with the study's x, dark grey and categorical
    colours for the others (e.g. full attention beside hash rounds); colorblind-safe otherwise."""
    xs = sorted({x_of[m] for m in models if x_of.get(m) is not None})
    if len(xs) < 2:
        return dict(zip(models, sns.color_palette("colorblind", len(models))))
    ramp = dict(zip(xs, sns.color_palette("viridis", len(xs) + 1)[: len(xs)][::-1]))
    others = iter(["#222222", *sns.color_palette("colorblind")])
    return {m: ramp[x_of[m]] if x_of.get(m) is not None else next(others) for m in models}


def _save(fig, caption: str, path: Path) -> Path:
    _caption_below(fig, caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _band(ax, xs, mean, lo, hi, colour, name: str, marker: Optional[str] = None, style: str = "-") -> None:
    ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, linewidth=0)
    ax.plot(xs, mean, color=colour, linewidth=1.8, marker=marker, markersize=4, label=name, linestyle=style)


def plot_learning_curves(curves: pd.DataFrame, models: Sequence[str], colours: Mapping[str, Any], title: str,
                         caption: str, path: Path, names: Mapping[str, str] = {}) -> Path:
    """Held-out bpb and training loss in bpb (rows) against step and wall-clock seconds (columns):
    the mean over seeds as a line, the min–max over seeds as a band, one colour per model."""
    fig = Figure(figsize=(11, 7), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(2, 2, sharey="row")
    for row, metric in enumerate(CURVE_METRICS):
        for col, x in enumerate(CURVE_X):
            ax = axes[row][col]
            for i, m in enumerate(models):
                data = curves[(curves["model"] == m) & curves[metric].notna()]
                if data.empty:
                    continue
                g = data.groupby("step").agg(x=(x, "mean"), mean=(metric, "mean"), lo=(metric, "min"),
                                             hi=(metric, "max"))
                _band(ax, g["x"], g["mean"], g["lo"], g["hi"], colours[m], names.get(m, m),
                      "o" if metric == "valid_bpb" else None, ("-", "--", ":", "-.")[i % 4])
            ax.set_xlabel(CURVE_X[x])
            ax.set_ylabel(CURVE_METRICS[metric] if col == 0 else "")
    handles, names = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][1].legend(handles, names, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                          fontsize="small", title="model", title_fontsize="small")
    fig.suptitle(title, fontsize="medium")
    return _save(fig, caption, path)


def plot_pareto(table: pd.DataFrame, trains: pd.DataFrame, caption: str, path: Path,
                references: Sequence[tuple[str, float, str]] = ()) -> Path:
    """Mean bpb as trained (bars: min–max over seeds) against step time and against memory, one
    labelled point per model coloured by attention kind, the Pareto front dashed. A model whose
    training ran under load (table's `under_load`) is hollow in the step-time panel. `references`
    (label, bpb, role): baselines drawn as labelled horizontal lines, dash-dot for a control and
    dotted for a count model, outside the front."""
    mem = memory_column(trains)
    rows = table[table["setting"] == AS_TRAINED].reset_index(drop=True)
    kinds = {m: g["attention"].iloc[0] for m, g in trains.groupby("model")}
    palette = dict(zip(("full", "lsh", "local", "sdpa"), sns.color_palette("colorblind")))
    fig = Figure(figsize=(12, 5), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(1, 2, sharey=True)
    for ax, col, xlabel in ((axes[0], "step_ms", "time per training step (ms, median of each seed, mean over seeds)"),
                            (axes[1], mem, "peak allocated GPU memory (MiB)" if mem == "peak_alloc_mib"
                             else "activation memory saved for backward (MiB)")):
        for r in rows.itertuples():
            xs = trains.loc[trains["model"] == r.model, col].astype(float)
            colour = palette.get(kinds.get(r.model), "#444444")
            hollow = col == "step_ms" and bool(r.under_load)
            ax.errorbar(getattr(r, col), r.bpb_mean, yerr=[[r.bpb_mean - r.bpb_min], [r.bpb_max - r.bpb_mean]],
                        xerr=[[getattr(r, col) - xs.min()], [xs.max() - getattr(r, col)]] if len(xs) else None,
                        fmt="o", color=colour, capsize=3, markersize=6, markerfacecolor="white" if hollow else colour,
                        markeredgewidth=1.5)
        front = pareto_front(list(rows[col].astype(float)), list(rows["bpb_mean"].astype(float)))
        ax.scatter(rows.loc[front, col], rows.loc[front, "bpb_mean"], s=130, facecolors="none", edgecolors="k",
                   zorder=3)
        if len(front) > 1:
            ax.plot(rows.loc[front, col], rows.loc[front, "bpb_mean"], "k--", drawstyle="steps-post", linewidth=1)
        span = max([*rows["bpb_max"].astype(float), *(b for _, b, _ in references)]) - min(
            [*rows["bpb_min"].astype(float), *(b for _, b, _ in references)])
        placed: list[tuple[float, float]] = []  # (x, bpb) of labels drawn: close lines get their labels apart
        for label, bpb, role in sorted(references, key=lambda ref: ref[1]):
            ax.axhline(bpb, color="#777777", linewidth=1, linestyle="-." if role == "control" else ":")
            near = {x for x, b in placed if abs(b - bpb) < 0.04 * span}
            x = next(x for x in (0.01, 0.35, 0.69) if x not in near) if len(near) < 3 else 0.01
            placed.append((x, bpb))
            ax.annotate(label, (x, bpb), xycoords=("axes fraction", "data"), fontsize="x-small", va="bottom",
                        color="#555555")
        ax.set_xlabel(xlabel)
        if rows[col].max() > 8 * rows[col].min() > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        _labels(ax, list(rows[col].astype(float)), list(rows["bpb_mean"].astype(float)), list(rows["model"]))
    axes[0].set_ylabel(f"held-out {BPB}, as trained")
    handles = [Line2D([], [], color=palette[k], marker="o", linestyle="none") for k in palette if k in kinds.values()]
    names = [f"{k} attention" for k in palette if k in kinds.values()]
    front = Line2D([], [], color="k", linestyle="--", marker="o", markerfacecolor="none", markersize=10)
    if rows["under_load"].astype(bool).any():
        handles.append(Line2D([], [], color="#444444", marker="o", markerfacecolor="white", linestyle="none"))
        names.append("hollow: step time measured\nunder load (left panel)")
    for role, style, name in (("control", "-.", "no-attention control\n(baseline)"), ("count model", ":", "count model\n(baseline)")):
        if any(r == role for _, _, r in references):
            handles.append(Line2D([], [], color="#777777", linestyle=style))
            names.append(name)
    axes[1].legend(handles + [front], names + ["Pareto front (lower is better)"],
                   loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize="small")
    fig.suptitle("Quality against cost: every model as trained", fontsize="medium")
    return _save(fig, caption, path)


def _labels(ax, xs: Sequence[float], ys: Sequence[float], names: Sequence[str], step: float = 0.045) -> None:
    """Name each point; a label that would overlap one already placed moves down in steps of
    `step` (axes fraction), with a thin line back to its point."""
    ax.autoscale_view()
    to_axes = ax.transData + ax.transAxes.inverted()
    placed: list[tuple[float, float, float]] = []  # (x, y, width) in axes fractions
    for x, y, name in sorted(zip(xs, ys, names), key=lambda t: (-t[1], t[0])):
        px, py = to_axes.transform((x, y))
        lx, ly, width = px + 0.015, py + 0.015, 0.011 * len(name)
        while any(abs(ly - qy) < step and lx < qx + qw and qx < lx + width for qx, qy, qw in placed):
            ly -= step
        placed.append((lx, ly, width))
        moved = abs(ly - py - 0.015) > 1e-9
        ax.annotate(name, (x, y), xytext=(lx, ly), textcoords="axes fraction", fontsize="x-small", va="bottom",
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5} if moved else None)


def plot_approximation(approx: pd.DataFrame, caption: str, path: Path) -> Path:
    """Mass recall and relative error against hash rounds (log2), one line per chunk_len, the band
    the min–max over rotation and training seeds."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(1, 2)
    chunks = sorted(approx["chunk_len"].unique())
    colours = dict(zip(chunks, sns.color_palette("colorblind", len(chunks))))
    for ax, metric, ylabel in ((axes[0], "mass_recall", "softmax mass inside LSH's keys (mass recall)"),
                               (axes[1], "relative_error", "relative error of the LSH output")):
        for c in chunks:
            g = approx[approx["chunk_len"] == c].groupby("n_hashes")[metric].agg(["mean", "min", "max"])
            _band(ax, g.index, g["mean"], g["min"], g["max"], colours[c], f"chunk_len {c}", "o")
        ax.set_xscale("log", base=2)
        ticks = sorted(approx["n_hashes"].unique())
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("hash rounds (n_hashes)")
        ax.set_ylabel(ylabel)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize="small")
    fig.suptitle("How closely LSH attention approximates full attention", fontsize="medium")
    return _save(fig, caption, path)
