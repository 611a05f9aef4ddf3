"""Pure views of a run's records for publishing: a flat table, lines against seq_len, and the
duplication task's train x eval accuracy matrix (paper Table 2). No W&B here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pandas as pd

Record = dict[str, Any]

TOP_COLUMNS = ("point_id", "run_id", "suite", "studies", "status", "reason", "wall_s", "finished_at")
NESTED = ("params", "effective", "metrics")
X_COLUMN = "params.seq_len"
# Which metric columns get a line against seq_len, and under which panel: units in the name.
MEMORY_SUFFIX = "_mib"
TIME_SUFFIX = "_ms_median"
LOG_AXES = ("seq_len", "batch_size")  # axes our report plots on log scales unless the hint says otherwise


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = json.dumps(list(value))  # a table cell holds one value
    else:
        out[prefix] = value


def flatten_record(record: Record) -> dict[str, Any]:
    """One record as one flat row: the top-level fields, then params.*, effective.*, metrics.*.

    `point` is left out (`params` holds the same fields flat, after canonicalisation), and so is
    any other nested extra such as a training curve; scalar extras (`traceback`) are kept.
    """
    row: dict[str, Any] = {}
    for key in TOP_COLUMNS:
        value = record.get(key)
        row[key] = ", ".join(map(str, value)) if key == "studies" and isinstance(value, (list, tuple)) else value
    for key, value in record.items():
        if key not in row and key not in NESTED and not isinstance(value, (Mapping, list, tuple)):
            row[key] = value
    for key in NESTED:
        _flatten(key, record.get(key) or {}, row)
    return row


def records_frame(records: Iterable[Record]) -> pd.DataFrame:
    """All records as a DataFrame, one row per record, columns in a stable order."""
    rows = [flatten_record(r) for r in records]
    columns = list(TOP_COLUMNS)
    columns += sorted({c for row in rows for c in row if "." not in c and c not in TOP_COLUMNS})
    for key in NESTED:
        columns += sorted({c for row in rows for c in row if c.startswith(key + ".")})
    return pd.DataFrame(rows, columns=columns)


def status_counts(records: Iterable[Record]) -> dict[str, int]:
    """{"n_records": N, "n_ok": ..., "n_error": ...}: how the points ended, for the run summary."""
    counts: dict[str, int] = {"n_records": 0}
    for r in records:
        counts["n_records"] += 1
        key = f"n_{r.get('status') or 'unknown'}"
        counts[key] = counts.get(key, 0) + 1
    return counts


@dataclass(frozen=True)
class LineSeries:
    """One chart: a metric against a numeric param (seq_len mostly), one line per configuration."""

    name: str  # where it is logged, e.g. "memory/vs_seq_len/peak_alloc_mib_vs_seq_len"
    title: str
    xname: str
    yname: str
    keys: tuple[str, ...]
    xs: tuple[tuple[float, ...], ...]
    ys: tuple[tuple[float, ...], ...]
    study: str = ""  # "" when the run has no suite_spec


@dataclass(frozen=True)
class StudyAxes:
    """How a study's points spread and are drawn: the x axis, the params that tell its lines apart
    (empty: whatever varies), the hinted y metrics (empty: the defaults) and log scales, as in
    our own plots (log by default along seq_len and batch_size)."""

    x: str = "seq_len"
    hue: tuple[str, ...] = ()
    y: tuple[str, ...] = ()
    logx: bool = True
    logy: bool = True


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


def study_axes(suite_spec: Mapping[str, Any]) -> dict[str, StudyAxes]:
    """Axes per study from run.json's suite_spec: the plot hint's x and hue/style when given, else
    x = seq_len (or the first numeric grid axis) and hue = the other grid axes."""
    studies = suite_spec.get("studies") if isinstance(suite_spec, Mapping) else None
    if not isinstance(studies, Mapping):
        return {}
    axes = {}
    for name, study in studies.items():
        if not isinstance(study, Mapping):
            continue
        plot = study.get("plot") if isinstance(study.get("plot"), Mapping) else {}
        grid = study.get("grid") if isinstance(study.get("grid"), Mapping) else {}
        numeric = [k for k, v in grid.items() if isinstance(v, list) and v
                   and all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in v)]
        x = plot.get("x") if isinstance(plot.get("x"), str) else None
        x = x or ("seq_len" if "seq_len" in grid or not numeric else numeric[0])
        # W&B line plots have no facets: our plots' panels (col/row) become lines too
        hue = (_names(plot.get("hue")) + _names(plot.get("style")) + _names(plot.get("col"))
               + _names(plot.get("row"))) or [k for k in grid if k != x]
        log_default = x in LOG_AXES
        axes[str(name)] = StudyAxes(
            x=x, hue=tuple(h for h in hue if h != x), y=tuple(_names(plot.get("y"))),
            logx=_flag(plot.get("logx"), log_default), logy=_flag(plot.get("logy"), log_default),
        )
    return axes


def _flag(value: Any, default: bool) -> bool:
    return value if isinstance(value, bool) else default


def _fmt(value: Any) -> str:
    """Cell values as people write them: 4 not 4.0 (pandas widens int columns holding None), '-' for none."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _label(columns: list[str], values: tuple[Any, ...]) -> str:
    return ", ".join(f"{c.split('.', 1)[1]}={_fmt(v)}" for c, v in zip(columns, values))


def _line_columns(rows: pd.DataFrame, x: str, hue: tuple[str, ...]) -> list[str]:
    """The params that split rows into lines: the hinted ones that vary, else every varying param
    except those that only go from null to one value (canonicalisation drops n_hashes for full
    attention: that says nothing the attention column does not)."""
    if hue:
        return [c for c in (f"params.{h}" for h in hue) if c in rows.columns and rows[c].nunique(dropna=False) > 1]
    params = [c for c in rows.columns if c.startswith("params.") and c != x]
    varying = [c for c in params if rows[c].nunique(dropna=False) > 1]
    informative = [c for c in varying if rows[c].nunique() > 1]
    return informative or varying


def _metric_panel(metric: str) -> str | None:
    short = metric.split(".", 1)[1]
    if short.endswith(MEMORY_SUFFIX):
        return "memory"
    if short.endswith(TIME_SUFFIX):
        return "time"
    return None


def _charts(ok: pd.DataFrame, x: str, hue: tuple[str, ...], prefix: str) -> list[LineSeries]:
    charts = []
    for metric in [c for c in ok.columns if c.startswith("metrics.")]:
        panel = _metric_panel(metric)
        if panel is None:
            continue
        rows = ok[ok[metric].notna() & ok[x].notna()]
        if rows[x].nunique() < 2:
            continue
        split = _line_columns(rows, x, hue)
        keys, xs, ys = [], [], []
        groups = rows.groupby(split, sort=True, dropna=False) if split else [((), rows)]
        short, xname = metric.split(".", 1)[1], x.split(".", 1)[1]
        for values, group in groups:
            values = values if isinstance(values, tuple) else (values,)
            line = group.groupby(x)[metric].median().sort_index()  # one y per x, even if repeated
            keys.append(_label(split, values) if split else short)
            xs.append(tuple(float(v) for v in line.index))
            ys.append(tuple(float(v) for v in line.to_numpy()))
        charts.append(LineSeries(
            name=f"{panel}/{prefix}{short}_vs_{xname}", title=f"{prefix}{short} vs {xname}", xname=xname,
            yname=short, keys=tuple(keys), xs=tuple(xs), ys=tuple(ys), study=prefix.rstrip("/"),
        ))
    return charts


def _numeric(df: pd.DataFrame, column: str) -> bool:
    return column in df.columns and pd.api.types.is_numeric_dtype(df[column]) and not pd.api.types.is_bool_dtype(df[column])


def line_series(df: pd.DataFrame, axes: Mapping[str, StudyAxes] | None = None) -> list[LineSeries]:
    """Memory (`*_mib`) and time (`*_ms_median`) metrics of `ok` records, one chart per study and
    metric, against the study's x (seq_len unless its axes say another numeric param).

    Without axes (no suite_spec) there is one chart per metric over all records, lines keyed by
    whatever varies. A chart needs two distinct x values; a categorical x falls back to seq_len.
    """
    if "status" not in df.columns:
        return []
    ok = df[df["status"] == "ok"]
    membership = ok["studies"].fillna("").map(lambda s: set(filter(None, s.split(", "))))
    named = sorted(set().union(*membership)) if len(ok) else []
    if not axes or not named:
        groups = [("", StudyAxes(), ok)]
    else:
        groups = [(f"{name}/", axes.get(name, StudyAxes()), ok[membership.map(lambda m: name in m)]) for name in named]
    charts = []
    for prefix, study, rows in groups:
        x = f"params.{study.x}"
        if not _numeric(rows, x):
            x = X_COLUMN
        if _numeric(rows, x):
            charts += _charts(rows, x, study.hue, prefix)
    return charts


def _setting_columns(df: pd.DataFrame, prefix: str) -> list[str]:
    """params named `<prefix>...` that tell rows apart (a constant `train_seed` labels nothing);
    all of them when none varies."""
    named = sorted(c for c in df.columns if c.startswith("params.") and c.split(".", 1)[1].startswith(prefix))
    varying = [c for c in named if df[c].nunique(dropna=False) > 1]
    return varying or named


def _setting_label(columns: list[str], row: pd.Series) -> str:
    """The value itself for one setting column, 'k=v, ...' pairs for several."""
    if len(columns) == 1:
        return _fmt(row[columns[0]])
    return _label(columns, tuple(row[c] for c in columns))


def accuracy_matrix(df: pd.DataFrame) -> pd.DataFrame | None:
    """Table 2: accuracy with rows = how the model was trained, columns = how it was evaluated.

    Train and eval settings are the params whose names start with `train` / `eval` (flat keys like
    `train_model` or nested `train.n_hashes` alike) and that vary among the accuracy rows. Accuracy is `metrics.accuracy` per record,
    or `metrics.accuracy.<eval label>` when one record holds a whole row. None when the records
    carry no accuracy or no train setting.
    """
    accuracy = [c for c in df.columns if c == "metrics.accuracy" or c.startswith("metrics.accuracy.")]
    if not accuracy:
        return None
    rows = df[df[accuracy].notna().any(axis=1)]
    rows = rows.loc[:, rows.notna().any(axis=0)]  # settings the accuracy rows actually carry
    train = _setting_columns(rows, "train")
    evals = _setting_columns(rows, "eval")
    if not train:
        return None
    cells: dict[tuple[str, str], float] = {}
    if "metrics.accuracy" in rows.columns and evals:
        for _, row in rows[rows["metrics.accuracy"].notna()].iterrows():
            cells[(_setting_label(train, row), _setting_label(evals, row))] = float(row["metrics.accuracy"])
    for col in [c for c in rows.columns if c.startswith("metrics.accuracy.")]:
        for _, row in rows[rows[col].notna()].iterrows():
            cells[(_setting_label(train, row), col.split(".", 2)[2])] = float(row[col])
    if not cells:
        return None
    trains = list(dict.fromkeys(t for t, _ in cells))  # first-seen order: the grid's order
    cols = list(dict.fromkeys(e for _, e in cells))
    matrix = pd.DataFrame(
        [[cells.get((t, e)) for e in cols] for t in trains], index=pd.Index(trains, name="train"), columns=cols
    )
    matrix.columns.name = "eval"
    return matrix
