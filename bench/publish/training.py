"""Training studies (duplication, quality) as W&B history and tables. Each training record's
learning curve becomes one history row per logged optimiser step, under keys grouped by study:

    train/step                                  the x of every learning curve (W&B's step_metric)
    train/train_s                               training seconds at that step: another x to choose
    train/<study>/<model>-s<seed>/loss          mean training loss (nats) over the logging window
    train/<study>/<model>-s<seed>/accuracy      ... and accuracy
    train/<study>/<model>-s<seed>/lr            learning rate at that step
    train/<study>/<model>-s<seed>/valid_bpb     held-out figures, at the steps that validated

A model in several studies (quality's `full`) is drawn in each of them; one row holds all its
studies' keys for one step. Also the quality suite's tables: final bits per byte per (model,
evaluation setting, seed), and each analysis's rows. Pure: names, rows and frames; no W&B here."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import pandas as pd

Record = dict[str, Any]

PREFIX = "train"
STEP_KEY = f"{PREFIX}/step"
TIME_KEY = f"{PREFIX}/train_s"
GLOB = f"{PREFIX}/*"  # every key above, plotted against STEP_KEY (W&B's define_metric glob)
CURVE_METRICS = ("loss", "accuracy", "lr")  # CurvePoint's per-window figures; `valid` adds its own keys
# A learning curve's axes in words (bench.report.labels words record columns, where `accuracy` is
# the duplication task's evaluated accuracy, not a training window's).
CURVE_LABELS = {STEP_KEY: "training step", TIME_KEY: "training time (s)", "loss": "training loss (nats)",
                "accuracy": "training accuracy", "lr": "learning rate", "valid_bpb": "held-out bits per byte"}
FINAL_TABLE = "quality/final"
FINAL_COLUMNS = ("model", "eval_setting", "seed", "bpb", "status")
ANALYSIS_PREFIX = "quality"


@dataclass(frozen=True)
class HistoryRow:
    """One optimiser step of one training record, as one W&B history row."""

    step: int
    prefixes: tuple[str, ...]  # the curves this row extends, e.g. ("train/depth/full-s0", ...)
    values: dict[str, float]  # {STEP_KEY: step, TIME_KEY: s, "<prefix>/loss": ..., ...}


def _key_part(text: Any) -> str:
    """A name as one key segment: letters, digits, `_` and `-` (W&B nests on `.` and `/`)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "none"


def _number(value: Any) -> float | int | None:
    """A loggable number (NaN kept: a diverged loss is a finding), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _seed(params: Mapping[str, Any]) -> Any:
    """The model's seed: params.seed (duplication records before the common runner had only
    params.train_seed)."""
    return params.get("seed") if params.get("seed") is not None else params.get("train_seed")


def curve_label(record: Record) -> str:
    """`<model>-s<seed>`: params.train_model and its seed; the point id when no model is named."""
    params = record.get("params") or {}
    model = params.get("train_model") or record.get("point_id") or "model"
    seed = _seed(params)
    return _key_part(model) + ("" if seed is None else f"-s{_key_part(seed)}")


def study_prefix(study: str) -> str:
    """`train/<study>/`: how every learning-curve key of `study` begins."""
    return f"{PREFIX}/{_key_part(study)}/"


def curve_prefixes(record: Record) -> tuple[str, ...]:
    """`train/<study>/<model>-s<seed>` for each of the record's studies (the suite when it lists none)."""
    studies = [s for s in record.get("studies") or () if isinstance(s, str) and s]
    studies = studies or [str(record.get("suite") or "all")]
    label = curve_label(record)
    return tuple(dict.fromkeys(f"{PREFIX}/{_key_part(s)}/{label}" for s in studies))


def is_training(record: Record) -> bool:
    """A record with a learning curve (a training point, params.role "train"), whatever its status:
    a failed training's curve up to the failure is worth seeing too."""
    return isinstance(record.get("curve"), list) and bool(record["curve"])


def training_history(record: Record, logged: Mapping[str, int] | None = None) -> list[HistoryRow]:
    """The record's curve as history rows in step order, leaving out the steps `logged` says are
    in the run already ({prefix: last step logged}): a republished or resumed run adds only what
    is new, and a curve is never drawn twice. Points without a numeric step are skipped."""
    if not is_training(record):
        return []
    logged = dict(logged or {})
    prefixes = curve_prefixes(record)
    points = [p for p in record["curve"] if isinstance(p, Mapping) and _number(p.get("step")) is not None]
    rows = []
    for point in sorted(points, key=lambda p: p["step"]):
        step = int(point["step"])
        fresh = tuple(p for p in prefixes if step > logged.get(p, -math.inf))
        if not fresh:
            continue
        figures = {m: _number(point.get(m)) for m in CURVE_METRICS}
        valid = point.get("valid")
        if isinstance(valid, Mapping):
            figures.update({_key_part(k): _number(v) for k, v in valid.items()})
        values: dict[str, float] = {STEP_KEY: step}
        if _number(point.get("train_s")) is not None:
            values[TIME_KEY] = point["train_s"]
        for prefix in fresh:
            values.update({f"{prefix}/{name}": v for name, v in figures.items() if v is not None})
            logged[prefix] = step
        rows.append(HistoryRow(step, fresh, values))
    return rows


def curve_history_keys(record: Record) -> tuple[str, ...]:
    """Every curve key `training_history` logs for `record` (its x keys left out), sorted: what a
    report's panels may plot."""
    keys = {k for row in training_history(record) for k in row.values}
    return tuple(sorted(keys - {STEP_KEY, TIME_KEY}))


def _role(record: Record) -> str | None:
    return (record.get("params") or {}).get("role")


def final_table(records: Iterable[Record]) -> pd.DataFrame | None:
    """Bits per byte of every evaluation (FINAL_COLUMNS, one row per eval record, failed ones with
    bpb empty and their status), or None when no record is a bits-per-byte evaluation."""
    rows = []
    for r in records:
        params, metrics = r.get("params") or {}, r.get("metrics") or {}
        if _role(r) != "eval" or "bpb" not in metrics:
            continue
        seed = _seed(params)
        rows.append({"model": params.get("train_model"), "eval_setting": params.get("eval_setting"),
                     "seed": seed, "bpb": _number(metrics.get("bpb")), "status": r.get("status")})
    return pd.DataFrame(rows, columns=list(FINAL_COLUMNS)) if rows else None


def analysis_tables(records: Iterable[Record]) -> dict[str, pd.DataFrame]:
    """`quality/<analysis>` -> the rows of every record of that analysis, each row led by the model
    and its training seed (`train_seed`: the rows' own `seed` is the analysis's, e.g. the hash seed)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        table = r.get("table")
        if _role(r) != "analysis" or not isinstance(table, list):
            continue
        params = r.get("params") or {}
        name = f"{ANALYSIS_PREFIX}/{_key_part(params.get('analysis') or 'analysis')}"
        seed = _seed(params)
        lead = {"model": params.get("train_model"), "train_seed": seed}
        rows.setdefault(name, []).extend({**lead, **row} for row in table if isinstance(row, Mapping))
    return {name: pd.DataFrame(found) for name, found in rows.items() if found}
