"""Reports regenerated from a run's records.jsonl and run.json alone: markdown and CSV tables, seaborn
plots per study, and each series' fitted growth exponent next to the paper's Table 3 prediction.

Everything but write_report is a pure function of records (plots aside, which only write PNGs).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd
from pydantic import BaseModel, ConfigDict

from bench.complexity import fit_loglog, is_power_law_axis, predicted_exponent
from bench.store import RECORDS, read_records

STATUSES = ("ok", "oom", "timeout", "error", "skipped")
# Axes we know how to plot, in the order a default x is chosen.
X_PREFERENCE = ("seq_len", "n_layers", "ff_chunks", "n_hashes", "d_ff", "batch_size", "chunk_len", "d_model")
PARAM_KEYS = (
    "workload", "impl", "device", "dtype", "batch_size", "seq_len", "attention", "n_layers", "reversible",
    "ff_chunks", "d_ff", "d_model", "n_heads", "n_hashes", "chunk_len", "n_buckets", "causal",
)
TIME_METRICS = ("step_ms_median", "fwd_ms_median", "bwd_ms_median", "opt_ms_median")
GPU_MEMORY = ("peak_alloc_mib", "saved_for_backward_mib")
CPU_MEMORY = ("rss_delta_mib", "saved_for_backward_mib")
MEMORY_METRICS = (
    "peak_alloc_mib", "peak_reserved_mib", "nvml_device_used_mib", "nvml_process_used_mib",
    "peak_rss_mib", "rss_delta_mib", "saved_for_backward_mib",
)
MEMORY_NOTE = (
    "**Memory figures.** On GPU the main figure is `peak_alloc_mib`, the torch allocator's peak over "
    "one training iteration (weights, inputs, optimizer state and activations; NVML device and process "
    "figures sit beside it and include the CUDA context and the allocator cache). On CPU it is "
    "`rss_delta_mib`, the process's peak RSS during one iteration minus its RSS before the workload was "
    "built (each point runs in a fresh process). `saved_for_backward_mib` counts the bytes autograd "
    "keeps from one forward for the backward (parameters excluded, each storage once) and is the same "
    "on every device."
)


class PlotHint(BaseModel):
    """A study's plot hint as run.json carries it; every field optional here, defaults come from data."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    x: Optional[str] = None
    y: Optional[list[str]] = None
    hue: Optional[str] = None
    style: Optional[str] = None
    logx: Optional[bool] = None
    logy: Optional[bool] = None


@dataclass(frozen=True)
class Run:
    """A run dir read back: run.json's content and the records, in file order."""

    meta: Mapping[str, Any]
    records: tuple[Mapping[str, Any], ...]

    @property
    def device(self) -> str:
        return str(self.meta.get("device") or (self.meta.get("environment") or {}).get("device") or "cpu")


@dataclass(frozen=True)
class StudyView:
    """What one study plots: its ok rows, x axis, the columns that tell series apart, metrics, scales."""

    name: str
    description: str
    frame: pd.DataFrame
    x: str
    series: tuple[str, ...]  # hue first, then style, then any other column that splits an x value
    hue: Optional[str]
    style: Optional[str]
    metrics: tuple[str, ...]  # plotted: the hint's y, or the defaults
    fitted: tuple[str, ...]  # tabled and fitted: the plotted ones, the main memory figures and step time
    logx: bool
    logy: bool


# --------------------------------------------------------------------------- reading


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return Run(meta=meta, records=tuple(read_records(run_dir / RECORDS)))


# --------------------------------------------------------------------------- frames


def ok_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per ok record: params and metrics as plain columns, effective as `effective.<key>`."""
    rows = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        row: dict[str, Any] = {"point_id": rec.get("point_id"), "studies": tuple(rec.get("studies") or ())}
        row.update(rec.get("params") or {})
        row.update({f"effective.{k}": _scalar(v) for k, v in (rec.get("effective") or {}).items()})
        row.update(rec.get("metrics") or {})
        row["wall_s"] = rec.get("wall_s")
        rows.append(row)
    return pd.DataFrame(rows)


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def config_label(params: Mapping[str, Any]) -> str:
    """`k=v, ...` over the usual axes that are set, to name a point in status tables."""
    return ", ".join(f"{k}={params[k]}" for k in PARAM_KEYS if params.get(k) is not None)


def status_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Every record that is not ok, with its status, reason and config."""
    rows = [
        {
            "point_id": rec.get("point_id"),
            "studies": ", ".join(rec.get("studies") or ()),
            "status": rec.get("status"),
            "reason": _one_line(rec.get("reason")),
            "config": config_label(rec.get("params") or {}),
        }
        for rec in records
        if rec.get("status") != "ok"
    ]
    return pd.DataFrame(rows, columns=["point_id", "studies", "status", "reason", "config"])


def status_counts(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """How many records ended in each status (every status listed, zeros included)."""
    counts = {s: 0 for s in STATUSES}
    for rec in records:
        counts[str(rec.get("status"))] = counts.get(str(rec.get("status")), 0) + 1
    return pd.DataFrame({"status": list(counts), "count": list(counts.values())})


def _one_line(text: Any, limit: int = 300) -> str:
    if text is None:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def main_memory_metrics(device: str) -> tuple[str, ...]:
    return GPU_MEMORY if str(device).startswith("cuda") else CPU_MEMORY


def _has_values(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].notna().any()


# --------------------------------------------------------------------------- studies


def study_names(run: Run) -> list[str]:
    """Studies in suite order, then any that only the records name."""
    names = list((run.meta.get("suite_spec") or {}).get("studies") or {})
    for rec in run.records:
        for s in rec.get("studies") or ():
            if s not in names:
                names.append(s)
    return names


def _hashable(value: Any) -> Any:
    """None for missing; integral floats (pandas' upcast next to NaN) back to int for labels."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _splits(df: pd.DataFrame, col: str, by: Sequence[str]) -> bool:
    """Whether `col` takes more than one value within some group of `by`: it then tells series apart;
    otherwise it is a function of them (batch_size in a fixed-token study, chunk_len next to attention)."""
    keyed = df[[*by, col]].map(lambda v: str(_hashable(v)))
    return bool((keyed.groupby(list(by))[col].nunique() > 1).any())


def series_columns(df: pd.DataFrame, x: str, candidates: Sequence[str]) -> list[str]:
    """The candidates, in order, that each split a group of x and the columns already chosen."""
    chosen: list[str] = []
    for col in candidates:
        if col != x and col not in chosen and _splits(df, col, [x, *chosen]):
            chosen.append(col)
    return chosen


def choose_x(df: pd.DataFrame, axes: Sequence[str]) -> Optional[str]:
    """The grid axis (or, failing that, param column) to plot along: preferred names first."""
    candidates = [a for a in axes if a in df.columns] or [c for c in X_PREFERENCE if c in df.columns]
    varying = [c for c in candidates if df[c].map(_hashable).nunique(dropna=False) > 1]
    for name in X_PREFERENCE:
        if name in varying:
            return name
    return varying[0] if varying else None


def resolve_metrics(df: pd.DataFrame, wanted: Sequence[str] | None, device: str) -> tuple[str, ...]:
    """The hint's metrics that have data; a memory metric without data (e.g. peak_alloc_mib on CPU) is
    replaced by the device's main memory figures. Default: main memory figures and step time."""
    main = main_memory_metrics(device)
    out: list[str] = []
    for metric in wanted or (*main, "step_ms_median"):
        chosen = [metric] if _has_values(df, metric) else (list(main) if metric in MEMORY_METRICS else [])
        out.extend(c for c in chosen if c not in out and _has_values(df, c))
    return tuple(out)


def study_view(df: pd.DataFrame, name: str, spec: Mapping[str, Any], device: str) -> Optional[StudyView]:
    """The view of one study, or None when it has no ok rows or no axis that varies."""
    frame = df[df["studies"].map(lambda s: name in s)] if "studies" in df.columns else df.iloc[0:0]
    if frame.empty:
        return None
    hint = PlotHint.model_validate(spec.get("plot") or {})
    axes = list((spec.get("grid") or {}).keys())
    x = hint.x if hint.x in frame.columns else choose_x(frame, axes)
    if x is None:
        return None
    hinted = [c for c in (hint.hue, hint.style) if c]
    pool = [c for c in (*hinted, *(axes or PARAM_KEYS)) if c in frame.columns]
    splitting = series_columns(frame, x, pool)
    hue = hint.hue if hint.hue in splitting else (splitting[0] if splitting else None)
    rest = [c for c in splitting if c != hue]
    style = hint.style if hint.style in rest else (rest[0] if rest else None)
    series = tuple(c for c in (hue, style) if c) + tuple(c for c in rest if c != style)
    log_default = x in ("seq_len", "batch_size")
    return StudyView(
        name=name,
        description=str(spec.get("description") or ""),
        frame=frame.sort_values([*series, x], key=lambda s: s.map(str) if s.name != x else s),
        x=x,
        series=series,
        hue=hue,
        style=style,
        metrics=resolve_metrics(frame, hint.y, device),
        fitted=resolve_metrics(frame, [*(hint.y or ()), *main_memory_metrics(device), "step_ms_median"], device),
        logx=hint.logx if hint.logx is not None else log_default,
        logy=hint.logy if hint.logy is not None else log_default,
    )


def series_label(row: Mapping[str, Any], cols: Sequence[str]) -> str:
    parts = [f"{c}={_hashable(row.get(c))}" for c in cols if _hashable(row.get(c)) is not None]
    if parts:
        return ", ".join(parts)
    return f"{'/'.join(cols)} n/a" if cols else "all"


def study_table(view: StudyView) -> pd.DataFrame:
    """The study's rows: series columns, x, then its metrics (and the time IQR where there is one)."""
    cols = [*view.series, view.x]
    metrics = list(view.fitted)
    for m in view.fitted:
        if m.endswith("_ms_median"):
            metrics += [q for q in (m.replace("_median", "_q25"), m.replace("_median", "_q75")) if q in view.frame]
    keep = [c for c in dict.fromkeys(cols + metrics) if c in view.frame.columns]
    return view.frame[keep].reset_index(drop=True)


# --------------------------------------------------------------------------- exponents


def exponent_table(views: Sequence[StudyView]) -> pd.DataFrame:
    """Per study, series and metric: the measured log-log slope against x (with R^2) and the slope of
    the same Table 3 term evaluated on the same points."""
    rows = []
    for view in views:
        if not is_power_law_axis(list(view.frame[view.x].dropna())):
            continue
        metrics = [m for m in view.fitted if m in MEMORY_METRICS or m in TIME_METRICS]
        groups = view.frame.groupby(list(view.series), dropna=False) if view.series else [((), view.frame)]
        for _, group in groups:
            label = series_label(group.iloc[0].to_dict(), view.series)
            for metric in metrics:
                rows.append(_fit_row(view, label, group, metric))
    cols = ["study", "series", "metric", "x", "n", "measured_slope", "r2", "predicted_slope", "table3_row"]
    return pd.DataFrame([r for r in rows if r is not None], columns=cols)


def _fit_row(view: StudyView, label: str, group: pd.DataFrame, metric: str) -> Optional[dict[str, Any]]:
    data = group[[view.x, metric]].dropna()
    if data[view.x].nunique() < 2 or not (data[metric] > 0).sum() >= 2:
        return None
    try:
        fit = fit_loglog(data[view.x].astype(float), data[metric].astype(float))
    except ValueError:
        return None
    term = "time" if metric in TIME_METRICS else "memory"
    try:
        params = [{k: _hashable(v) for k, v in r.items()} for _, r in group.loc[data.index].iterrows()]
        predicted: Optional[float] = predicted_exponent(params, view.x, term)
    except (ValueError, KeyError, TypeError):
        predicted = None
    rows = group.get("effective.table3_row")
    row_name = ", ".join(sorted({str(v) for v in rows.dropna()})) if rows is not None else ""
    return {
        "study": view.name, "series": label, "metric": metric, "x": view.x, "n": fit.n,
        "measured_slope": round(fit.slope, 3) + 0.0, "r2": round(fit.r2, 3),
        "predicted_slope": None if predicted is None else round(predicted, 3) + 0.0, "table3_row": row_name,
    }


# --------------------------------------------------------------------------- plots


def plot_metric(view: StudyView, metric: str, path: Path) -> Path:
    """One PNG of metric against x: for a numeric x a line per hue (dashes per style) with the time
    IQR shaded; for a categorical x (e.g. attention kind) grouped bars."""
    import seaborn as sns
    from matplotlib.figure import Figure  # object API: no pyplot state, renders with Agg

    data = view.frame[view.frame[metric].notna()].copy()
    data["_hue"] = data[view.hue].map(lambda v: str(_hashable(v))) if view.hue else "all"
    others = [c for c in view.series if c != view.hue]
    data["_style"] = data.apply(lambda r: series_label(r.to_dict(), others), axis=1) if others else "all"
    hue_order = sorted(data["_hue"].unique(), key=_natural)
    palette = dict(zip(hue_order, sns.color_palette("colorblind", len(hue_order))))

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    with sns.axes_style("whitegrid"):  # the style applies to axes created inside it
        ax = fig.subplots()
    if _numeric(data[view.x]):
        _lines(ax, data, view, metric, palette, hue_order, bool(others))
        if view.logx:
            ax.set_xscale("log", base=2)
    else:
        data["_group"] = data.apply(lambda r: series_label(r.to_dict(), view.series), axis=1)
        data["_x"] = data[view.x].map(lambda v: str(_hashable(v)))
        sns.barplot(data=data, x="_x", y=metric, hue="_group" if view.series else None,
                    errorbar=None, palette="colorblind" if view.series else None, ax=ax)
        ax.set_xlabel(view.x)
    if view.logy:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"{view.name}: {metric} vs {view.x}")
    handles, labels = ax.get_legend_handles_labels()
    if handles and view.series:  # seaborn titles legend sections after helper columns: use the axes
        names = {"_hue": view.hue or "", "_style": "/".join(others), "_group": ", ".join(view.series)}
        keep = [(h, names[lab] if lab in names else lab) for h, lab in zip(handles, labels)
                if lab not in names]  # section headers out: the title names the hue, styles say k=v
        ax.legend(*zip(*keep), fontsize="small", title=view.hue if _numeric(data[view.x]) else None)
    elif ax.get_legend() is not None:
        ax.get_legend().remove()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _numeric(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


def _lines(ax, data: pd.DataFrame, view: StudyView, metric: str, palette, hue_order, styled: bool) -> None:
    import seaborn as sns

    style_kw = {"style": "_style", "markers": True} if styled else {"marker": "o"}
    sns.lineplot(data=data, x=view.x, y=metric, hue="_hue", hue_order=hue_order, palette=palette,
                 errorbar=None, ax=ax, **style_kw)
    q25, q75 = metric.replace("_median", "_q25"), metric.replace("_median", "_q75")
    if metric.endswith("_median") and _has_values(data, q25) and _has_values(data, q75):
        for (hue, _), grp in data.groupby(["_hue", "_style"]):
            grp = grp.sort_values(view.x)
            ax.fill_between(grp[view.x], grp[q25], grp[q75], color=palette[hue], alpha=0.2, linewidth=0)


def _natural(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "study"


# --------------------------------------------------------------------------- markdown


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_"
    return df.to_markdown(index=False, floatfmt=".4g")


def header_markdown(run: Run, run_dir: Path) -> str:
    """Title, environment and the commands that reproduce the run and this report."""
    meta, env = run.meta, run.meta.get("environment") or {}
    suite = meta.get("suite") or (run.records[0].get("suite") if run.records else "?")
    run_id = meta.get("run_id") or run_dir.name
    profile = meta.get("profile") or "auto"
    commit = env.get("git_commit")
    dirty = " (dirty)" if env.get("git_dirty") else ""
    facts = [
        ("device", f"{run.device} ({env.get('device_name') or 'unknown'})"),
        ("torch", env.get("torch")), ("CUDA / driver", f"{env.get('cuda')} / {env.get('driver')}"),
        ("CPU", f"{env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} torch threads)"),
        ("python", env.get("python")), ("git commit", f"{commit}{dirty}" if commit else "unknown"),
        ("date", env.get("date") or meta.get("created_at")), ("profile", profile),
    ]
    table = pd.DataFrame(facts, columns=["", "value"])
    rel = f"results/{suite}/{run_id}"
    checkout = f"git checkout {commit}\n" if commit else ""
    return "\n".join([
        f"# Report: suite `{suite}`, run `{run_id}`", "",
        str((meta.get("suite_spec") or {}).get("description") or "").strip(), "",
        "## Environment", "", _md(table), "",
        "## Reproduce", "", "```",
        f"{checkout}python -m bench run {suite} --profile {profile} --device {run.device} --run-id {run_id}",
        f"python -m bench report {rel}", "```", "",
        MEMORY_NOTE, "",
    ])


def write_report(run_dir: Path) -> Path:
    """Regenerate report.md, tables/*.csv and plots/*.png in `run_dir` from records.jsonl and run.json."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    tables, plots = run_dir / "tables", run_dir / "plots"
    tables.mkdir(parents=True, exist_ok=True)
    for old in plots.glob("*.png") if plots.exists() else ():
        old.unlink()

    df = ok_frame(run.records)
    counts, failed = status_counts(run.records), status_frame(run.records)
    df.to_csv(tables / "records.csv", index=False)
    counts.to_csv(tables / "status.csv", index=False)
    failed.to_csv(tables / "not_ok.csv", index=False)

    parts = [header_markdown(run, run_dir), "## Status", "", _md(counts), ""]
    if not failed.empty:
        parts += ["Points that did not finish ok:", "", _md(failed), ""]

    specs = (run.meta.get("suite_spec") or {}).get("studies") or {}
    views = []
    for name in study_names(run):
        view = study_view(df, name, specs.get(name) or {}, run.device) if not df.empty else None
        parts += [f"## Study `{name}`", ""]
        if view is None:
            parts += ["_No ok points with a varying axis to show._", ""]
            continue
        views.append(view)
        table = study_table(view)
        table.to_csv(tables / f"{_slug(name)}.csv", index=False)
        series = ", ".join(view.series) or "none"
        parts += [view.description, "", f"x = `{view.x}`; series by {series}.", "", _md(table), ""]
        for metric in view.metrics:
            png = plot_metric(view, metric, plots / f"{_slug(name)}__{_slug(metric)}.png")
            parts += [f"![{name}: {metric}](plots/{png.name})", ""]

    exps = exponent_table(views)
    exps.to_csv(tables / "exponents.csv", index=False)
    parts += [
        "## Fitted growth exponents vs Table 3", "",
        "Least-squares slope of log(metric) against log(x) per series, next to the slope of the same "
        "Table 3 term (memory or time) evaluated on the same points, with c = 2 * chunk_len keys per "
        "query. Measured memory includes terms Table 3 leaves out (weights, inputs, optimizer state), "
        "so measured slopes sit below the predicted ones at small sizes; `saved_for_backward_mib` "
        "leaves out what is only transient (a reversible layer's recomputed attention, a fused SDPA "
        "kernel that keeps no L x L matrix), so it can grow slower than Table 3's peak term.", "",
        _md(exps), "",
    ]
    out = run_dir / "report.md"
    out.write_text("\n".join(parts))
    return out
