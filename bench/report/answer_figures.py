"""The figures that answer a study's question: the crossover plot (cost ratio of each pair against
length, a line at 1) and the stage breakdown (a stacked bar per point of the profiled step)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from bench.report.crossover import Pair, crossings
from bench.report.derived import stage_columns, stage_name
from bench.report.figures import Figure, _caption_below
from bench.report.frames import StudyView, series_words
from bench.report.labels import label, plain, short


def plot_crossovers(view: StudyView, pairs: Sequence[Pair], path: Path) -> Figure | None:
    """One panel per metric: a/b against length for every pair, log-log, the tie line at 1,
    hollow markers where either point was measured under load, crossings marked."""
    # plotting stack on first draw (seconds to import): publishing loads this module, draws nothing
    import seaborn as sns
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if not pairs:
        return None
    metrics = list(dict.fromkeys(p.metric for p in pairs))
    names = list(dict.fromkeys(f"{p.a} / {p.b}" for p in pairs))
    colours = dict(zip(names, sns.color_palette("colorblind", len(names))))
    fig = MplFigure(figsize=(4.0 * len(metrics) + 3.4, 4.0), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0])
    loaded_any = False
    for ax, metric in zip(axes, metrics):
        for p in (p for p in pairs if p.metric == metric):
            name, f = f"{p.a} / {p.b}", p.frame
            colour = colours[name]
            ax.plot(f["x"], f["ratio"], color=colour, linewidth=1.6, label=name)
            load = f["under_load"].to_numpy(bool)
            ax.scatter(f["x"][~load], f["ratio"][~load], color=colour, s=18, zorder=3)
            if load.any():
                loaded_any = True
                ax.scatter(f["x"][load], f["ratio"][load], facecolors="none", edgecolors=colour, s=28, zorder=3)
            for c in crossings(f["x"], f["ratio"], f["under_load"], f["noise"]):
                ax.axvline(c.estimate, color=colour, linestyle=":", linewidth=1)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({x for p in pairs if p.metric == metric for x in p.frame["x"]})
        ax.set_xticks(ticks, [str(plain(v)) for v in ticks], rotation=45 if len(ticks) > 6 else 0)
        ax.minorticks_off()
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(short(metric) if metric != "step_ms_median" else "time per step", fontsize="medium")
        ax.set_xlabel(label(view.x))
    axes[0].set_ylabel("ratio a / b (below 1: a costs less)")
    handles, labels_ = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, t in zip(*ax.get_legend_handles_labels()):
            if t not in labels_:
                handles.append(h)
                labels_.append(t)
    axes[-1].legend(handles, ["\n".join(textwrap.wrap(t, 40)) for t in labels_], loc="upper left",
                    bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False, title="a / b", title_fontsize="small")
    fig.suptitle(f"Cost ratio against {short(view.x)} ({view.name})", fontsize="medium")
    caption = ("Each line: one kind's cost over another's at the lengths both measured; below the black line "
               "at 1 the first costs less. Dotted: log-log interpolated crossover lengths.")
    if loaded_any:
        caption += " Hollow markers: either point was measured while other processes used the CPU."
    _caption_below(fig, caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return Figure(path=path, caption=caption)


def _short_stage(column: str) -> str:
    """A stage's legend name: the range name without its package prefix ('reformer.hash' -> 'hash')."""
    return stage_name(column).split(".", 1)[-1] if stage_name(column).startswith("reformer.") else stage_name(column)


def plot_stages(view: StudyView, path: Path) -> Figure | None:
    """A stacked bar per point (panel per series) of the profiled step's stage shares, its wall time on top."""
    # plotting stack on first draw (seconds to import): publishing loads this module, draws nothing
    import seaborn as sns
    from matplotlib.figure import Figure as MplFigure

    frame = view.frame.dropna(subset=["stage_total_ms"]) if "stage_total_ms" in view.frame else view.frame.iloc[0:0]
    stages = stage_columns(frame)
    if frame.empty or not stages:
        return None
    stages = sorted(stages, key=lambda c: (c.endswith(".other"), -float(frame[c].fillna(0).sum())))
    colours = dict(zip(stages, sns.color_palette("tab10", len(stages))))
    cols = [c for c in view.series]
    groups = list(frame.groupby(cols, dropna=False, sort=False)) if cols else [((), frame)]
    fig = MplFigure(figsize=(3.2 * len(groups) + 3.0, 4.0), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = np.atleast_1d(fig.subplots(1, len(groups), sharey=False, squeeze=False)[0])
    loaded_any = False
    for ax, (_, rows) in zip(axes, groups):
        rows = rows.sort_values(view.x)
        pos = np.arange(len(rows))
        total = rows["stage_total_ms"].to_numpy(float)
        bottom = np.zeros(len(rows))
        for c in stages:
            values = 100 * rows[c].fillna(0.0).to_numpy(float) / total
            ax.bar(pos, values, bottom=bottom, color=colours[c], label=_short_stage(c), width=0.7)
            bottom += values
        loaded = rows["under_load"].fillna(False).astype(bool).to_numpy() if "under_load" in rows else np.zeros(len(rows), bool)
        loaded_any |= bool(loaded.any())
        for p, ms, busy in zip(pos, total, loaded):
            ax.text(p, 101, f"{ms:,.0f} ms" + (" *" if busy else ""), ha="center", va="bottom", fontsize="x-small")
        ax.set_ylim(0, 110)
        ax.set_xticks(pos, [str(plain(v)) for v in rows[view.x]], rotation=45 if len(rows) > 5 else 0)
        ax.set_xlabel(label(view.x))
        ax.set_title(series_words(rows.iloc[0].to_dict(), cols) if cols else view.name, fontsize="medium")
    axes[0].set_ylabel("share of the profiled step (%)")
    handles, names = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles[::-1], names[::-1], loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small",
                    frameon=False, title="stage", title_fontsize="small")
    fig.suptitle(f"Where the time of a step goes ({view.name})", fontsize="medium")
    caption = ("One extra iteration per point under torch.profiler, split by the model's record_function ranges "
               "(each range's own time, nested ranges taken out; 'other' is the rest of the step), as shares of "
               "that iteration; above each bar its wall time, profiler overhead included.")
    if loaded_any:
        caption += " *: measured while other processes used the CPU."
    _caption_below(fig, caption)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return Figure(path=path, caption=caption)
