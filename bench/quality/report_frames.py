"""The quality report's frames, read from records alone: trainings (cost and load), evaluations
(bpb per model, setting and seed), learning curves, the LSH approximation rows, spreads over seeds
and the final table. Pure functions over records and data frames."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from bench import store
from bench.report.labels import plain

AS_TRAINED = "as trained"
# The model fields a quality model can change, as record columns (the paper's names; `residual` is
# 'two_stream' for the RevNet-style two streams, 'standard' for the ordinary x + F(x)).
AXES = ("attention", "n_hashes", "n_layers", "chunk_len", "shared_qk", "reversible", "residual")
TRAIN_COLUMNS = ["model", "seed", *AXES, "step_ms", "saved_for_backward_mib", "peak_alloc_mib", "n_params",
                 "train_s", "under_load", "other_cpu_frac"]


def _latest(records: Iterable[Mapping[str, Any]], role: str) -> list[Mapping[str, Any]]:
    return [r for r in store.latest_by_point(records).values()
            if r.get("status") == "ok" and (r.get("params") or {}).get("role") == role]


def train_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per ok training point: model, seed, its model fields, what training cost and whether
    other processes were busy meanwhile (`under_load`: None where the record does not say)."""
    rows = []
    for r in _latest(records, "train"):
        m, load = r.get("metrics") or {}, r.get("load") or {}
        rows.append({"model": r["params"]["train_model"], "seed": r["params"].get("seed"),
                     **{k: r["params"].get(k) for k in AXES},
                     "step_ms": m.get("step_ms_median"), "saved_for_backward_mib": m.get("saved_for_backward_mib"),
                     "peak_alloc_mib": m.get("peak_alloc_mib"), "n_params": m.get("n_params"),
                     "train_s": m.get("train_s"), "under_load": load.get("under_load"),
                     "other_cpu_frac": load.get("other_cpu_frac")})
    return pd.DataFrame(rows, columns=TRAIN_COLUMNS)


def _window_bpb(record: Mapping[str, Any]) -> Optional[list[float]]:
    """An evaluation's per-window bpb (None where its record keeps only the mean: older runs)."""
    values = (record.get("per_window") or {}).get("bpb") if isinstance(record.get("per_window"), Mapping) else None
    return [float(v) for v in values] if isinstance(values, list) and values else None


def eval_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per ok evaluation: trained model, evaluation setting, training seed, bpb, and its
    per-window bpb (a list, or None where the record has none)."""
    rows = [{"model": r["params"]["train_model"], "setting": r["params"].get("eval_setting") or AS_TRAINED,
             "seed": r["params"].get("seed"), "bpb": r["metrics"].get("bpb"), "window_bpb": _window_bpb(r)}
            for r in _latest(records, "eval")]
    return pd.DataFrame(rows, columns=["model", "setting", "seed", "bpb", "window_bpb"])


def windows_by_seed(evals: pd.DataFrame) -> dict[tuple[str, str], dict[Any, list[float]]]:
    """(model, setting) -> {training seed: per-window bpb}, for evaluations that kept them."""
    out: dict[tuple[str, str], dict[Any, list[float]]] = {}
    for r in evals.itertuples():
        if isinstance(r.window_bpb, list):
            out.setdefault((r.model, r.setting), {})[r.seed] = r.window_bpb
    return out


def _analyses(records: Iterable[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """Ok analysis records of one analysis (`lsh_approximation` for records that do not name theirs)."""
    return [r for r in _latest(records, "analysis") if (r["params"].get("analysis") or "lsh_approximation") == name]


COUNT_ANALYSIS = "count_baselines"  # bench.quality.spec.BASELINES


def count_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The count-model baselines' rows: model (count-order-k), order, alpha, bpb, bytes, per-window bpb."""
    rows = [{k: row.get(k) for k in ("model", "order", "alpha", "bpb", "n_bytes", "window_bpb")}
            for r in _analyses(records, COUNT_ANALYSIS) for row in r.get("table") or ()]
    return pd.DataFrame(rows, columns=["model", "order", "alpha", "bpb", "n_bytes", "window_bpb"])


def curve_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Learning curves, long: model, seed, step, train_s, train_bpb (loss / ln 2), valid_bpb (or NaN)."""
    rows = [{"model": r["params"]["train_model"], "seed": r["params"].get("seed"), "step": c["step"],
             "train_s": c.get("train_s"), "train_bpb": c["loss"] / math.log(2),
             "valid_bpb": (c.get("valid") or {}).get("valid_bpb", np.nan)}
            for r in _latest(records, "train") for c in r.get("curve") or ()]
    return pd.DataFrame(rows, columns=["model", "seed", "step", "train_s", "train_bpb", "valid_bpb"])


def approx_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The LSH approximation rows of every training seed (`seed` there is the rotation seed)."""
    rows = [{"train_seed": r["params"].get("seed"),
             **{("rotation_seed" if k == "seed" else k): v for k, v in row.items()}}
            for r in _analyses(records, "lsh_approximation") for row in r.get("table") or ()]
    return pd.DataFrame(rows, columns=["train_seed", "n_hashes", "chunk_len", "n_buckets", "rotation_seed",
                                       "mass_recall", "relative_error"])


@dataclass(frozen=True)
class Spread:
    """Mean of one quantity over seeds, its min–max range and std (n - 1; None for one value)."""

    n: int
    mean: float
    lo: float
    hi: float
    std: Optional[float]

    @property
    def range(self) -> float:
        return self.hi - self.lo


def spread(values: Iterable[Any]) -> Optional[Spread]:
    """Spread of the non-missing values; None when there are none."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return None
    return Spread(len(xs), float(np.mean(xs)), min(xs), max(xs), float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def bpb_spreads(evals: pd.DataFrame) -> dict[tuple[str, str], Spread]:
    """(model, setting) -> spread of bpb over seeds."""
    return {key: s for key, g in evals.groupby(["model", "setting"], sort=False) if (s := spread(g["bpb"]))}


def bpb_by_seed(evals: pd.DataFrame) -> dict[tuple[str, str], dict[Any, float]]:
    """(model, setting) -> {training seed: bpb}, for differences paired by seed."""
    out: dict[tuple[str, str], dict[Any, float]] = {}
    for r in evals.itertuples():
        if r.bpb is not None and not math.isnan(float(r.bpb)):
            out.setdefault((r.model, r.setting), {})[r.seed] = float(r.bpb)
    return out


def study_x(trains: pd.DataFrame, models: Sequence[str], x: Optional[str]) -> dict[str, Any]:
    """Each model's value of the study's varying field `x` (e.g. n_hashes), None where it has none."""
    first = trains.drop_duplicates("model").set_index("model")
    return {m: plain(first.loc[m, x]) if x in first.columns and m in first.index else None for m in models}


def memory_column(trains: pd.DataFrame) -> str:
    """The memory figure to plot: the CUDA allocator's peak when recorded, else activation memory."""
    return "peak_alloc_mib" if trains["peak_alloc_mib"].notna().any() else "saved_for_backward_mib"


def _flag(value: Any) -> Optional[bool]:
    """A yes/no cell as bool; None where it is missing (None or NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else bool(value)


def loaded_models(trains: pd.DataFrame) -> set[str]:
    """Models with at least one seed's training measured under load (their step time is suspect)."""
    return {m for m, v in zip(trains["model"], trains["under_load"]) if _flag(v)}


def load_summary(trains: pd.DataFrame) -> tuple[int, int, Optional[float]]:
    """(trainings measured under load, trainings whose record says, largest other_cpu_frac)."""
    flags = [f for f in map(_flag, trains["under_load"]) if f is not None]
    frac = trains["other_cpu_frac"].astype(float)
    return sum(flags), len(flags), float(frac.max()) if frac.notna().any() else None


ROLES = ("model", "control", "count model")  # a final-table row: a study's model, the no-attention control, a count model
COUNTED = "counted"  # a count model's "setting"


def final_table(evals: pd.DataFrame, trains: pd.DataFrame, models: Sequence[str],
                settings: Sequence[str], controls: Sequence[str] = (),
                counts: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per (model, setting) in suite order: bpb over seeds, and on the as-trained row the
    training cost (step ms, activation MiB, allocator MiB, params; means over seeds) and whether any
    seed's training ran under load; `role` says which rows are baselines: the no-attention
    `controls` and, last, one row per count model of `counts` (no seeds, no cost)."""
    bpb, rows, loaded = bpb_spreads(evals), [], loaded_models(trains)
    for m in models:
        cost = trains[trains["model"] == m]
        for s in (AS_TRAINED, *settings):
            if (b := bpb.get((m, s))) is None:
                continue
            own = s == AS_TRAINED and not cost.empty
            mean = (lambda c: cost[c].astype(float).mean() if own and cost[c].notna().any() else np.nan)
            rows.append({"model": m, "setting": s, "n_seeds": b.n, "bpb_mean": b.mean, "bpb_min": b.lo,
                         "bpb_max": b.hi, "bpb_std": b.std, "step_ms": mean("step_ms"),
                         "saved_for_backward_mib": mean("saved_for_backward_mib"),
                         "peak_alloc_mib": mean("peak_alloc_mib"), "n_params": mean("n_params"),
                         "under_load": own and m in loaded, "role": "control" if m in controls else "model"})
    for r in (counts if counts is not None else pd.DataFrame()).itertuples():
        rows.append({"model": r.model, "setting": f"{COUNTED} (add-{r.alpha:g})", "n_seeds": np.nan,
                     "bpb_mean": float(r.bpb), "bpb_min": float(r.bpb), "bpb_max": float(r.bpb), "bpb_std": np.nan,
                     "step_ms": np.nan, "saved_for_backward_mib": np.nan, "peak_alloc_mib": np.nan,
                     "n_params": np.nan, "under_load": False, "role": "count model"})
    return pd.DataFrame(rows, columns=["model", "setting", "n_seeds", "bpb_mean", "bpb_min", "bpb_max", "bpb_std",
                                       "step_ms", "saved_for_backward_mib", "peak_alloc_mib", "n_params",
                                       "under_load", "role"])


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on each), by x."""
    pts = [(float(x), float(y), i) for i, (x, y) in enumerate(zip(xs, ys)) if not (math.isnan(x) or math.isnan(y))]
    front = [i for x, y, i in pts
             if not any(qx <= x and qy <= y and (qx < x or qy < y) for qx, qy, _ in pts)]
    return sorted(front, key=lambda i: (float(xs[i]), float(ys[i])))


def coinciding(curves: pd.DataFrame, models: Sequence[str], metric: str = "valid_bpb",
               rtol: float = 1e-6) -> list[list[str]]:
    """Groups of two or more models whose mean `metric` curves agree at every step (drawn on top of
    each other, so the caption must say so)."""
    means = {m: g.groupby("step")[metric].mean() for m, g in curves[curves[metric].notna()].groupby("model")
             if m in models}
    groups: list[list[str]] = []
    for m in models:
        if m not in means:
            continue
        grp = next((g for g in groups if means[g[0]].index.equals(means[m].index)
                    and np.allclose(means[g[0]], means[m], rtol=rtol, atol=0)), None)
        grp.append(m) if grp is not None else groups.append([m])
    return [g for g in groups if len(g) > 1]


def spec_controls(spec: Mapping[str, Any]) -> list[str]:
    """The run's no-attention controls: as its suite_spec names them, else its models of attention `none`."""
    if spec.get("controls") is not None:
        return list(spec["controls"])
    return [m for m, cfg in model_configs(spec).items() if cfg.get("attention") == "none"]


def model_configs(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each named model's full configuration: the profile's model with the model's changes."""
    base = dict(spec.get("model") or {})
    return {m: {**base, **(changes or {})} for m, changes in (spec.get("models") or {}).items()}


def models_frame(trains: pd.DataFrame, spec: Mapping[str, Any], models: Sequence[str]) -> pd.DataFrame:
    """One row per model: its model fields as trained (first seed's record) and the studies using it."""
    first = trains.drop_duplicates("model").set_index("model")
    studies = spec.get("studies") or {}
    rows = [{"model": m, **{k: first.loc[m, k] if m in first.index else None for k in AXES},
             "studies": ", ".join(s for s, st in studies.items() if m in (st.get("models") or ()))} for m in models]
    return pd.DataFrame(rows, columns=["model", *AXES, "studies"])


def curve_gap(curves: pd.DataFrame, a: str, b: str) -> pd.Series:
    """Held-out bpb of `a` minus `b` at each validation step, mean over the seeds both have there
    (paired: the same seed saw the same batches); empty when they share no validated step."""
    valid = curves.dropna(subset=["valid_bpb"])
    wide = {m: valid[valid.model == m].pivot_table(index="step", columns="seed", values="valid_bpb") for m in (a, b)}
    seeds = sorted(set(wide[a].columns) & set(wide[b].columns))
    steps = sorted(set(wide[a].index) & set(wide[b].index))
    if not seeds or not steps:
        return pd.Series(dtype=float)
    return (wide[a].loc[steps, seeds] - wide[b].loc[steps, seeds]).mean(axis=1).dropna()
