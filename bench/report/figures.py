"""PNG figures of one study metric: small multiples per `col`, one colour per series (sequential in
numeric order for ordered axes), Table 3's slope as a dashed guide through each series' largest point
on growth plots, hollow markers for points measured under load, and a caption of what was fixed."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from bench.report.frames import ORDERED, StudyView, fixed_values, has_values, series_label, series_words
from bench.report.labels import label, plain, short, value_label

CATEGORICAL_FIRST = ("#222222",)  # series without the ordered axis (e.g. full attention next to hash rounds)
COINCIDE_RTOL = 0.02  # closer than this, two lines cannot be told apart on the plot


@dataclass(frozen=True)
class Figure:
    """A written plot: its file and the caption printed under it (also for the markdown)."""

    path: Path
    caption: str


def is_growth_plot(view: StudyView) -> bool:
    return view.logx and view.logy and numeric(view.frame[view.x])


def numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def series_colours(frame: pd.DataFrame, cols: Sequence[str]) -> dict[str, Any]:
    """A colour per series key: a sequential palette over the first ordered column's values in
    numeric order (series without it in dark grey and categorical colours), else colorblind-safe."""
    # plotting stack on first draw (seconds to import): publishing loads this module, draws nothing
    import seaborn as sns

    keys = frame.apply(lambda r: series_label(r.to_dict(), cols), axis=1)
    order = list(dict.fromkeys(keys))
    ordered = next((c for c in cols if c in ORDERED and frame[c].map(plain).dropna().nunique() > 1), None)
    if ordered is None:
        return dict(zip(order, sns.color_palette("colorblind", len(order))))
    values = sorted({plain(v) for v in frame[ordered] if plain(v) is not None})
    ramp = dict(zip(values, sns.color_palette("viridis", len(values) + 1)[: len(values)][::-1]))
    others = list(CATEGORICAL_FIRST) + list(sns.color_palette("colorblind"))
    out: dict[str, Any] = {}
    n_other = 0
    for key, (_, row) in zip(keys, frame.iterrows()):
        if key in out:
            continue
        v = plain(row[ordered])
        if v is None:
            out[key], n_other = others[n_other % len(others)], n_other + 1
        else:
            out[key] = ramp[v]
    return out


def coinciding(data: pd.DataFrame, x: str, metric: str, key: str = "_series") -> list[list[str]]:
    """Groups of series whose values agree within COINCIDE_RTOL at every x they share (>= 2 x)."""
    curves = {k: g.set_index(x)[metric] for k, g in data.groupby(key, sort=False)}
    groups: list[list[str]] = []
    for k, curve in curves.items():
        for grp in groups:
            ref = curves[grp[0]]
            common = ref.index.intersection(curve.index)
            if len(common) >= 2 and np.allclose(curve[common], ref[common], rtol=COINCIDE_RTOL, atol=0):
                grp.append(k)
                break
        else:
            groups.append([k])
    return groups


def caption_text(view: StudyView, metric: str, env: Mapping[str, Any], device: str,
                 merged: Sequence[str], exps: Optional[pd.DataFrame], loaded: int) -> str:
    """Everything held fixed, how to read the marks, and the study's note."""
    data = view.frame[view.frame[metric].notna()]
    fixed = fixed_values(data)
    fixed.pop(view.x, None)
    if "tokens_per_batch" in fixed and "batch_size" not in fixed:
        pass  # a fixed-token study: the batch shrinks as the length grows
    elif "tokens_per_batch" in fixed:
        fixed.pop("tokens_per_batch")
    parts = [value_label(k, v) if k == "reversible" else
             f"{short(k)} {value_label(k, v) if k in ('attention', 'workload', 'impl') else v}"
             for k, v in fixed.items() if k not in ("device", "dtype")]
    dev = env.get("device_name") or device
    machine = f"{fixed.get('dtype', '')} on {dev}".strip()
    if env.get("torch"):
        machine += f", torch {env['torch']}"
    text = [f"Held fixed: {', '.join(parts)}; {machine}." if parts else f"Measured with {machine}."]
    if is_growth_plot(view) and exps is not None and not exps.empty:
        text.append("Dashed: Table 3's growth rate drawn through each series' largest point; legend: "
                    "exponent fitted on the largest sizes vs Table 3's.")
    for grp in merged:
        text.append(f"{grp} coincide (within {COINCIDE_RTOL:.1%}) and are drawn as one line.")
    if view.note:
        text.append(view.note.strip())
    if loaded:
        text.append(f"Hollow markers: {loaded} point(s) measured while other processes used the CPU.")
    if metric.endswith("_mib") and has_values(data, f"{metric}_min"):
        text.append("Bars: lowest to highest reading over the measuring processes.")
    return " ".join(text)


def plot_metric(view: StudyView, metric: str, path: Path, env: Mapping[str, Any] | None = None,
                device: str = "cpu", exps: Optional[pd.DataFrame] = None) -> Figure:
    """One PNG of metric against x (see draw_metric)."""
    fig, caption = draw_metric(view, metric, env, device, exps)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return Figure(path=path, caption=caption)


def draw_metric(view: StudyView, metric: str, env: Mapping[str, Any] | None = None, device: str = "cpu",
                exps: Optional[pd.DataFrame] = None):
    """The matplotlib Figure of metric against x, panels per view.col, bars when x is categorical,
    and its caption (drawn under it)."""
    # plotting stack on first draw (seconds to import): publishing loads this module, draws nothing
    import seaborn as sns
    from matplotlib.figure import Figure as MplFigure  # object API: no pyplot state, renders with Agg
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    env = env or {}
    data = view.frame[view.frame[metric].notna()].copy()
    line_cols = [c for c in view.series if c != view.col]
    data["_series"] = data.apply(lambda r: series_label(r.to_dict(), line_cols), axis=1)
    data["_words"] = data.apply(lambda r: series_words(r.to_dict(), line_cols), axis=1)
    data["_panel"] = data[view.col].map(lambda v: value_label(view.col, v)) if view.col else ""
    panels = list(dict.fromkeys(data["_panel"]))
    colours = series_colours(data, line_cols)
    loaded = int(data["under_load"].fillna(False).astype(bool).sum()) if "under_load" in data else 0

    width = 4.0 * len(panels) + 3.2
    fig = MplFigure(figsize=(width, 4.2), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, squeeze=False)[0])
    merged_notes: list[str] = []
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes, panels):
        sub = data[data["_panel"] == panel]
        if numeric(sub[view.x]):
            merged_notes += _lines(ax, sub, view, metric, colours, handles, exps)
            if view.logx:
                ax.set_xscale("log", base=2)
            ticks = sorted(sub[view.x].unique())
            ax.set_xticks(ticks, [str(plain(v)) for v in ticks], rotation=45 if len(ticks) > 6 else 0)
            ax.minorticks_off() if view.logx else None
        else:
            _bars(ax, sub, view, metric, colours, handles)
        if view.logy:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.4)
        ax.set_xlabel(label(view.x))
        if view.col:
            ax.set_title(panel, fontsize="medium")
    axes[0].set_ylabel(label(metric))
    if is_growth_plot(view) and exps is not None and not exps.empty:
        handles["Table 3 slope (guide)"] = Line2D([], [], color="grey", linestyle="--")
    if loaded:
        handles["measured under load"] = Line2D([], [], color="grey", marker="o", markerfacecolor="none",
                                                linestyle="none")
    if handles and (len(handles) > 1 or line_cols):
        names = ["\n".join(textwrap.wrap(n, 42)) for n in handles]
        axes[-1].legend(list(handles.values()), names, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                        fontsize="small", frameon=False, borderaxespad=0,
                        title=", ".join(short(c) for c in line_cols) or None, title_fontsize="small")
    fig.suptitle(f"{short(metric).capitalize()} against {short(view.x)} ({view.name})", fontsize="medium")
    merged_notes = list(dict.fromkeys(merged_notes))
    caption = caption_text(view, metric, env, device, merged_notes, exps, loaded)
    _caption_below(fig, caption)
    return fig, caption


def _caption_below(fig, caption: str) -> None:
    """The caption as wrapped text under everything drawn (bbox_inches='tight' then keeps it)."""
    # plotting stack on first draw (seconds to import): publishing loads this module, draws nothing
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.get_layout_engine().execute(fig)
    box = fig.get_tightbbox(renderer)  # inches
    w, h = fig.get_size_inches()
    fig.text(box.x0 / w, box.y0 / h - 0.02, "\n".join(textwrap.wrap(caption, int(box.width * 14))),
             ha="left", va="top", fontsize="small")


def _lines(ax, sub: pd.DataFrame, view: StudyView, metric: str, colours: Mapping[str, Any],
           handles: dict[str, Any], exps: Optional[pd.DataFrame]) -> list[str]:
    """One line per series (coinciding ones merged), spread bars, hollow markers under load, guides."""
    # plotting stack on first draw (seconds to import): publishing loads this module, draws nothing
    from matplotlib.lines import Line2D

    notes = []
    styles = ["-", "--", ":", "-."]
    for i, grp in enumerate(coinciding(sub, view.x, metric)):
        curve = sub[sub["_series"] == grp[0]].sort_values(view.x)
        names = list(dict.fromkeys(sub.loc[sub["_series"].isin(grp), "_words"]))
        words = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        if len(grp) > 1:
            notes.append(words)
        colour = colours[grp[0]]
        xs, ys = curve[view.x].astype(float), curve[metric].astype(float)
        ax.plot(xs, ys, color=colour, linewidth=1.8, linestyle="-")
        loaded = curve["under_load"].fillna(False).astype(bool).to_numpy() if "under_load" in curve else np.zeros(len(curve), bool)
        ax.scatter(xs[~loaded], ys[~loaded], color=colour, s=22, zorder=3)
        if loaded.any():
            ax.scatter(xs[loaded], ys[loaded], facecolors="none", edgecolors=colour, s=30, zorder=3)
        lo, hi = f"{metric}_min", f"{metric}_max"
        q25, q75 = metric.replace("_median", "_q25"), metric.replace("_median", "_q75")
        if has_values(curve, lo) and has_values(curve, hi):
            ax.vlines(xs, curve[lo], curve[hi], color=colour, linewidth=1)
        elif metric.endswith("_median") and has_values(curve, q25) and has_values(curve, q75):
            ax.fill_between(xs, curve[q25], curve[q75], color=colour, alpha=0.2, linewidth=0)
        panel = str(curve["_panel"].iloc[0])
        if words == "all points":
            words = panel if view.col else "measured"
        elif view.col:
            words = f"{panel}, {words}"
        legend = words + (" (identical)" if len(names) > 1 else "")
        fit = _fit_for(exps, view, metric, grp[0], sub)
        if fit is not None and is_growth_plot(view):
            measured, predicted = fit
            legend += f": fit {measured:.2f}" + ("" if predicted is None else f", Table 3 {predicted:.2f}")
            if predicted is not None:
                x0, y0 = float(xs.iloc[-1]), float(ys.iloc[-1])
                ax.axline((x0, y0), (x0 / 2, y0 / 2**predicted), color=colour, linestyle="--",
                          linewidth=1, alpha=0.8)
        handles[legend] = Line2D([], [], color=colour, marker="o", linestyle=styles[0])
    return notes


def _fit_for(exps: Optional[pd.DataFrame], view: StudyView, metric: str, key: str,
             sub: pd.DataFrame) -> Optional[tuple[float, Optional[float]]]:
    if exps is None or exps.empty:
        return None
    cols = view.series
    row = sub[sub["_series"] == key].iloc[0].to_dict()
    full_key = series_label(row, cols)
    hit = exps[(exps["study"] == view.name) & (exps["series"] == full_key) & (exps["metric"] == metric)]
    if hit.empty:
        return None
    predicted = hit["predicted_slope"].iloc[0]
    return float(hit["measured_slope"].iloc[0]), None if pd.isna(predicted) else float(predicted)


def _bars(ax, sub: pd.DataFrame, view: StudyView, metric: str, colours: Mapping[str, Any],
          handles: dict[str, Any]) -> None:
    """Grouped bars for a categorical x (e.g. attention kind)."""
    # plotting stack on first draw (seconds to import): publishing loads this module, draws nothing
    from matplotlib.patches import Patch

    xs = list(dict.fromkeys(sub[view.x].map(lambda v: value_label(view.x, v))))
    keys = list(dict.fromkeys(sub["_series"]))
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        part = sub[sub["_series"] == key]
        pos = [xs.index(value_label(view.x, v)) + (i - (len(keys) - 1) / 2) * width for v in part[view.x]]
        ax.bar(pos, part[metric], width=width, color=colours[key])
        handles[part["_words"].iloc[0]] = Patch(color=colours[key])
    ax.set_xticks(range(len(xs)), xs)
