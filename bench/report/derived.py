"""Columns derived from each ok row's params and readings: parameters and the bytes of weights,
gradients, optimizer state and inputs; analytic FLOPs, the achieved GFLOP/s and its share of the
run's measured matmul rate; the stage shares of a profiled step. Pure (pandas)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import pandas as pd

from bench import flops as fl
from bench.report.labels import plain

MIB = 2**20
STAGE_PREFIX = "stage_ms."  # metrics of the profiled step: stage_ms.<range name>
DERIVED = ("n_params", "state_mib", "input_mib", "gflop", "achieved_gflops", "pct_of_peak")


def peak_gflops(env: Mapping[str, Any], dtype: Any) -> Optional[float]:
    """The run's measured dense matmul rate for `dtype` (run.json environment.matmul_gflops)."""
    rates = env.get("matmul_gflops") or {}
    value = rates.get(str(dtype)) if isinstance(rates, Mapping) else None
    return float(value) if value else None


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: plain(v) for k, v in row.items() if not str(k).startswith(("effective.", STAGE_PREFIX))}


def _effective(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {k.removeprefix("effective."): plain(v) for k, v in row.items() if str(k).startswith("effective.")}
    return {k: v for k, v in out.items() if not (isinstance(v, str) and v.startswith(("[", "{")))}


def _row_figures(row: Mapping[str, Any], env: Mapping[str, Any]) -> dict[str, Any]:
    params = _params(row)
    out: dict[str, Any] = dict.fromkeys(DERIVED)
    if params.get("impl", "ours") == "ours":
        try:
            n = plain(row.get("n_params")) or fl.param_count(params)  # older records lack n_params
            out["n_params"] = int(n)
            out["state_mib"] = fl.state_bytes(params, n) / MIB
        except (ValueError, TypeError):
            pass
    try:
        out["input_mib"] = (plain(row.get("input_bytes")) or fl.input_bytes(params)) / MIB
    except (ValueError, TypeError):
        pass
    try:
        count = fl.flop_count(params, _effective(row))
    except (ValueError, TypeError):
        count = None
    if count is not None:
        out.update({f"gflop.{k}": v / 1e9 for k, v in count.by_stage().items()})
    total = plain(row.get("flops_fwd_bwd")) or (count.total if count is not None else None)
    if not total:
        return out
    out["gflop"] = total / 1e9
    fwd, bwd = plain(row.get("fwd_ms_median")), plain(row.get("bwd_ms_median"))
    ms = fwd + bwd if fwd is not None and bwd is not None else plain(row.get("step_ms_median"))
    if ms:
        out["achieved_gflops"] = total / (ms * 1e6)
        peak = peak_gflops(env, params.get("dtype"))
        out["pct_of_peak"] = 100 * out["achieved_gflops"] / peak if peak else None
    return out


def add_derived(df: pd.DataFrame, env: Mapping[str, Any]) -> pd.DataFrame:
    """The ok frame with the DERIVED columns (null where a figure does not apply) and, where the
    records carry a stage breakdown, `stage_share.<name>` (its share of the profiled step)."""
    if df.empty:
        return df
    derived = pd.DataFrame([_row_figures(r, env) for r in df.to_dict("records")], index=df.index)
    out = df.drop(columns=[c for c in DERIVED if c in df.columns and c != "n_params"]).copy()
    for col in derived.columns:
        out[col] = derived[col]
    stages = stage_columns(out)
    if stages and "stage_total_ms" in out:
        for col in stages:
            out[col.replace(STAGE_PREFIX, "stage_share.")] = out[col] / out["stage_total_ms"]
    return out


def stage_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if str(c).startswith(STAGE_PREFIX) and df[c].notna().any()]


def stage_name(column: str) -> str:
    return column.removeprefix(STAGE_PREFIX).removeprefix("stage_share.")

