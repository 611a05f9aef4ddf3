"""Records into pandas frames: one row per ok point, the non-ok listing, and each study's view (its
x axis, the columns that tell series apart, the metrics, and what was held fixed). Pure."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd
from pydantic import BaseModel, ConfigDict

from bench.load import LOAD_FIELDS
from bench.metrics import MEMORY_METRICS
from bench.report.labels import plain, value_label
from bench.store import RECORDS, read_records

STATUSES = ("ok", "oom", "timeout", "error", "skipped")
# Axes we know how to plot, in the order a default x is chosen.
X_PREFERENCE = ("seq_len", "n_layers", "ff_chunks", "n_hashes", "d_ff", "batch_size", "chunk_len", "d_model")
# Ordered axes: a series split by one of these gets a sequential palette in numeric order.
ORDERED = ("n_hashes", "ff_chunks", "n_layers", "d_ff", "seq_len", "batch_size", "chunk_len", "d_model", "n_heads")
PARAM_KEYS = (
    "workload", "impl", "device", "dtype", "batch_size", "seq_len", "attention", "n_layers", "reversible",
    "ff_chunks", "d_ff", "d_model", "n_heads", "n_hashes", "chunk_len", "n_buckets", "causal",
)
# What a caption states when it is the same at every plotted point.
FIXED_KEYS = ("workload", "impl", "attention", "batch_size", "seq_len", "tokens_per_batch", "d_model", "n_heads",
              "d_ff", "n_layers", "reversible", "ff_chunks", "n_hashes", "chunk_len", "dtype", "device")
TIME_METRICS = ("step_ms_median", "fwd_ms_median", "bwd_ms_median", "opt_ms_median")
GPU_MEMORY = ("peak_alloc_mib", "saved_for_backward_mib")
CPU_MEMORY = ("rss_delta_mib", "saved_for_backward_mib")
LOAD_KEYS = LOAD_FIELDS  # the load record's fields, as bench.load writes them


class PlotHint(BaseModel):
    """A study's plot hint as run.json carries it; every field optional here, defaults come from data."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    x: Optional[str] = None
    y: Optional[list[str]] = None
    hue: Optional[str] = None
    style: Optional[str] = None
    col: Optional[str] = None
    logx: Optional[bool] = None
    logy: Optional[bool] = None
    note: str = ""


@dataclass(frozen=True)
class Run:
    """A run dir read back: run.json's content and the records, in file order."""

    meta: Mapping[str, Any]
    records: tuple[Mapping[str, Any], ...]

    @property
    def device(self) -> str:
        return str(self.meta.get("device") or (self.meta.get("environment") or {}).get("device") or "cpu")

    @property
    def environment(self) -> Mapping[str, Any]:
        return self.meta.get("environment") or {}


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
    col: Optional[str] = None  # one panel per value
    note: str = ""


def load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return Run(meta=meta, records=tuple(read_records(run_dir / RECORDS)))


def ok_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per ok record: params, metrics and load as plain columns, effective as `effective.<key>`.
    Load columns are null for records older than the load field."""
    rows = []
    for rec in records:
        if rec.get("status") != "ok":
            continue
        row: dict[str, Any] = {"point_id": rec.get("point_id"), "studies": tuple(rec.get("studies") or ())}
        row.update(rec.get("params") or {})
        row.update({f"effective.{k}": _scalar(v) for k, v in (rec.get("effective") or {}).items()})
        row.update(rec.get("metrics") or {})
        load = rec.get("load") or {}
        row.update({k: load.get(k) for k in LOAD_KEYS})
        if row.get("batch_size") is not None and row.get("seq_len") is not None:
            row["tokens_per_batch"] = int(row["batch_size"]) * int(row["seq_len"])
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


def load_summary(records: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(ok points measured under load, ok points whose record says whether they were)."""
    known = [rec["load"] for rec in records if rec.get("status") == "ok" and isinstance(rec.get("load"), dict)
             and rec["load"].get("under_load") is not None]
    return sum(bool(x["under_load"]) for x in known), len(known)


def _one_line(text: Any, limit: int = 300) -> str:
    if text is None:
        return ""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def main_memory_metrics(device: str) -> tuple[str, ...]:
    return GPU_MEMORY if str(device).startswith("cuda") else CPU_MEMORY


def has_values(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].notna().any()


def study_names(run: Run) -> list[str]:
    """Studies in suite order, then any that only the records name."""
    names = list((run.meta.get("suite_spec") or {}).get("studies") or {})
    for rec in run.records:
        for s in rec.get("studies") or ():
            if s not in names:
                names.append(s)
    return names


def _splits(df: pd.DataFrame, col: str, by: Sequence[str]) -> bool:
    """Whether `col` takes more than one value within some group of `by`: it then tells series apart;
    otherwise it is a function of them (batch_size in a fixed-token study, chunk_len next to attention)."""
    keyed = df[[*by, col]].map(lambda v: str(plain(v)))
    return bool((keyed.groupby(list(by))[col].nunique() > 1).any())


def series_columns(df: pd.DataFrame, x: str, candidates: Sequence[str]) -> list[str]:
    """The candidates, in order, that each split a group of x and the columns already chosen."""
    chosen: list[str] = []
    for col in candidates:
        if col != x and col in df.columns and col not in chosen and _splits(df, col, [x, *chosen]):
            chosen.append(col)
    return chosen


def choose_x(df: pd.DataFrame, axes: Sequence[str]) -> Optional[str]:
    """The grid axis (or, failing that, param column) to plot along: preferred names first."""
    candidates = [a for a in axes if a in df.columns] or [c for c in X_PREFERENCE if c in df.columns]
    varying = [c for c in candidates if df[c].map(plain).nunique(dropna=False) > 1]
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
        chosen = [metric] if has_values(df, metric) else (list(main) if metric in MEMORY_METRICS else [])
        out.extend(c for c in chosen if c not in out and has_values(df, c))
    return tuple(out)


def _sort_key(series: pd.Series) -> pd.Series:
    """Numeric order for numbers (never text order: 1, 4, 16), text order otherwise, missing first."""
    values = series.map(plain)
    if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        return values.map(lambda v: -float("inf") if v is None else float(v))
    return values.map(lambda v: "" if v is None else str(v))


MAX_LINES = 5  # more series than this in one box, split by a column into panels


def _n_series(frame: pd.DataFrame, cols: Sequence[str]) -> int:
    return len(frame[list(cols)].map(lambda v: str(plain(v))).drop_duplicates())


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
    hinted = [c for c in (hint.col, hint.hue, hint.style) if c]
    pool = [c for c in (*hinted, *(axes or PARAM_KEYS)) if c in frame.columns]
    splitting = series_columns(frame, x, pool)
    col = hint.col if hint.col in splitting else None
    if col is None and len(splitting) >= 2 and _n_series(frame, splitting) > MAX_LINES:
        col = next((c for c in splitting if c not in (hint.hue, x)), None)  # small multiples, not a tangle
    rest = [c for c in splitting if c != col]
    hue = hint.hue if hint.hue in rest else (rest[0] if rest else None)
    others = [c for c in rest if c != hue]
    style = hint.style if hint.style in others else (others[0] if others else None)
    series = tuple(c for c in (col, hue, style) if c) + tuple(c for c in others if c != style)
    # A hinted column that varies but follows the others (attention next to n_hashes: null for full
    # attention) still names its series in legends.
    series += tuple(c for c in hinted if c not in series and c != x and c in frame.columns
                    and frame[c].map(plain).nunique() > 1)
    log_default = x in ("seq_len", "batch_size")
    frame = frame.sort_values([*series, x], key=_sort_key).reset_index(drop=True)
    return StudyView(
        name=name,
        description=str(spec.get("description") or ""),
        frame=frame,
        x=x,
        series=series,
        hue=hue,
        style=style,
        metrics=resolve_metrics(frame, hint.y, device),
        fitted=resolve_metrics(frame, [*(hint.y or ()), *main_memory_metrics(device), "step_ms_median"], device),
        logx=hint.logx if hint.logx is not None else log_default,
        logy=hint.logy if hint.logy is not None else log_default,
        col=col,
        note=hint.note,
    )


def series_label(row: Mapping[str, Any], cols: Sequence[str]) -> str:
    """`k=v, ...` naming a series in tables and CSVs (stable: tests and comparisons key on it)."""
    parts = [f"{c}={plain(row.get(c))}" for c in cols if plain(row.get(c)) is not None]
    if parts:
        return ", ".join(parts)
    return f"{'/'.join(cols)} n/a" if cols else "all"


def series_words(row: Mapping[str, Any], cols: Sequence[str]) -> str:
    """The same series in words for legends: 'LSH, 4 hash rounds'; absent values are left out."""
    parts = [value_label(c, row.get(c)) for c in cols if plain(row.get(c)) is not None]
    return ", ".join(parts) if parts else "all points"


def fixed_values(frame: pd.DataFrame, keys: Sequence[str] = FIXED_KEYS) -> dict[str, Any]:
    """The settings that are the same at every row of `frame` (missing ones left out)."""
    out: dict[str, Any] = {}
    for key in keys:
        if key not in frame.columns:
            continue
        values = {plain(v) for v in frame[key]}
        if len(values) == 1 and None not in values:
            out[key] = values.pop()
    return out


def study_table(view: StudyView) -> pd.DataFrame:
    """The study's rows: series columns, x, its metrics with their spread (time IQR, memory min/max
    over processes) where recorded, and whether the point was measured under load."""
    cols = [*view.series, view.x]
    metrics = []
    for m in view.fitted:
        metrics.append(m)
        if m.endswith("_ms_median"):
            metrics += [m.replace("_median", "_q25"), m.replace("_median", "_q75")]
            if m == "step_ms_median":
                metrics += ["gflop", "achieved_gflops", "pct_of_peak"]
        else:
            metrics += [f"{m}_min", f"{m}_max"]
    metrics += ["under_load"]
    keep = [c for c in dict.fromkeys(cols + metrics) if c in view.frame.columns and
            (c in cols or has_values(view.frame, c))]
    return view.frame[keep].reset_index(drop=True)
