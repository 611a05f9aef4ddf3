"""The capacity report, regenerated from a run's run.json and records alone: findings first (the
longest length per configuration, which limit stopped it, the calibrated prediction and its error,
Table 3's bound), then the table, the prediction errors and the figure; a CSV beside them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from bench.capacity.planner import MAX_VALUE, REACH
from bench.capacity.report_frame import (  # noqa: F401  (the report's public names)
    TARGET_ERROR, capacity_frame, findings, plan_from_meta, reference_label,
)
from bench.capacity.report_plot import plot
from bench.capacity.searches import budget_gib
from bench.capacity.spec import CapacityPlan
from bench.store import RECORDS, RUN_JSON, read_records


def held_fixed(plan: CapacityPlan) -> dict[str, Any]:
    """Settings every configuration shares, for the caption."""
    keys = ("d_model", "n_heads", "d_ff", "n_layers", "vocab_size", "chunk_len", "dtype", "batch_size", "seq_len",
            "causal", "pos_emb")
    out = {}
    for key in keys:
        values = {json.dumps(c.settings.get(key)) for c in plan.configs}
        if len(values) == 1 and key != plan.over and plan.configs[0].settings.get(key) is not None:
            out[key] = plan.configs[0].settings[key]
    return out


def caption(meta: Mapping[str, Any], plan: CapacityPlan) -> str:
    env = meta.get("environment") or {}
    fixed = ", ".join(f"{k}={v}" for k, v in held_fixed(plan).items())
    enforced = ("torch allocator capped with set_per_process_memory_fraction (CUDA context not counted)"
                if str(plan.device).startswith("cuda") else "whole-process resident memory (RSS)")
    if plan.mmap_threshold_kib is not None:
        enforced += f", glibc's mmap threshold fixed at {plan.mmap_threshold_kib} KiB in each probe worker"
    budgets = sorted({budget_gib(plan, c) for c in plan.configs})
    own = "".join(f"; {c.label}: " + ", ".join(f"{k} {v}" for k, v in c.search.items())
                  for c in plan.configs if c.search)
    return (f"Longest {plan.over} whose full training step (forward, backward, AdamW step) ran within "
            f"{' / '.join(f'{b:g}' for b in budgets)} GiB ({enforced}) on {env.get('device_name') or plan.device}; "
            f"held fixed: {fixed}. Search: three calibration probes (start x 1/4, 1/2, 1 unless the suite "
            f"names them), one at the prediction / {REACH:g} while it is over {REACH:g}x the longest of them, "
            f"the calibrated prediction and just above it, then bisection to "
            f"{plan.search.resolution:g} of the length; cap {plan.search.max_value}, timeout {plan.timeout_s:g} s"
            + own + ".")


COLUMN_LABELS = {
    "longest_seq_len": "longest seq_len (tokens)", "longest_batch_size": "largest batch_size",
    "budget_gib": "budget (GiB)", "tokens": "tokens per step", "peak_mib": "peak there (MiB)",
    "step_ms": "step time there (ms)", "limited_by": "stopped by", "predicted": "calibrated prediction",
    "prediction_error": "prediction error", "table3_longest": "Table 3 bound (paper)",
    "table3_over_measured": "Table 3 / measured", "ratio_to_full": "ratio to full attention",
    "probes": "probes", "calibration_probes": "of which calibration",
    "calibration_longest": "longest calibration fit", "memory_fit": "peak fit (MiB, L tokens)",
    "first_failure": "first failure",
}


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None or v != v else format(v, spec)


def markdown(df: pd.DataFrame, plan: CapacityPlan, meta: Mapping[str, Any], ref: str | None) -> str:
    col = f"longest_{plan.over}"
    main = df[["configuration", "budget_gib", col, "peak_mib", "step_ms", "limited_by", "predicted",
               "prediction_error", "table3_longest", "ratio_to_full", "probes", "calibration_probes"]].copy()
    for c in (col, "peak_mib", "step_ms", "predicted", "table3_longest"):
        main[c] = main[c].map(lambda v: _fmt(v, ",.0f"))
    main["budget_gib"] = main.budget_gib.map(lambda v: _fmt(v, "g"))
    main["prediction_error"] = main.prediction_error.map(lambda v: _fmt(v, "+.1%"))
    main["ratio_to_full"] = main.ratio_to_full.map(lambda v: _fmt(v, ".2f"))
    capped = df.limit == MAX_VALUE  # a lower bound: neither memory nor time stopped it
    for c in (col, "ratio_to_full"):
        main.loc[capped, c] = ">= " + main.loc[capped, c]
    errors = df[["configuration", "limit", col, "predicted", "predicted_limit", "prediction_error",
                 "calibration_longest", "memory_fit", "table3_longest", "table3_over_measured"]].copy()
    for c in (col, "predicted", "calibration_longest", "table3_longest"):
        errors[c] = errors[c].map(lambda v: _fmt(v, ",.0f"))
    errors["prediction_error"] = errors.prediction_error.map(lambda v: _fmt(v, "+.1%"))
    errors["table3_over_measured"] = errors.table3_over_measured.map(lambda v: _fmt(v, ".2f"))
    errors.loc[capped, col] = ">= " + errors.loc[capped, col]
    errors.loc[capped, "table3_over_measured"] = "<= " + errors.loc[capped, "table3_over_measured"]
    errors = errors.rename(columns={**COLUMN_LABELS, "limit": "limit", "predicted_limit": "predicted limit"})
    peak = "allocator peak" if str(plan.device).startswith("cuda") else "peak RSS of the worker"
    lines = [
        f"# Capacity: {plan.suite}, profile {plan.profile}", "",
        "## Findings", "",
        *[f"- {line}" for line in findings(df, plan)], "",
        caption(meta, plan), "",
        "## Longest length per configuration", "",
        f"Peak: {peak} at the longest value. "
        + (f"Ratio: longest value over `{ref}`'s. " if ref is not None else "")
        + "Calibrated prediction: the "
        "step's peak measured at the calibration lengths (the longest three), fitted by a + b L (linear-memory attention) or "
        "a + b L + c L^2 (naive full attention), solved for the budget; where the fitted wall time reaches "
        "the per-probe timeout first, that length (bench/capacity/calibrate.py). Table 3 bound: the paper's "
        "memory term of the configuration's row (one copy of the largest activation) plus weights, "
        "gradients, AdamW state and inputs"
        + ("" if str(plan.device).startswith("cuda") else ", plus the worker's RSS before the model is built")
        + ", solved for the budget: a lower bound on the memory, so an upper bound on the length "
        "(bench/capacity/predict.py). `>=`: capped by the search's max_value, a lower bound.", "",
        main.rename(columns=COLUMN_LABELS).to_markdown(index=False), "",
        "![capacity](capacity.png)", "",
        "## Prediction error", "",
        f"Error: calibrated prediction over the searched longest {plan.over}, minus one, for searches that "
        f"memory or time stopped (target: within {TARGET_ERROR:.0%} where memory stopped it); the search "
        f"brackets the limit to {plan.search.resolution:g} of the length, which bounds how exactly an error "
        "is known.", "",
        errors.to_markdown(index=False), "",
    ]
    return "\n".join(lines)


def write_report(run_dir: Path) -> Path:
    """report.md, capacity.csv and capacity.png in the run directory, from its records alone."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / RUN_JSON).read_text())
    records = read_records(run_dir / RECORDS)
    plan = plan_from_meta(meta)
    df = capacity_frame(meta, records)
    df.to_csv(run_dir / "capacity.csv", index=False)
    plot(df, plan, run_dir / "capacity.png", caption(meta, plan))
    path = run_dir / "report.md"
    path.write_text(markdown(df, plan, meta, reference_label(plan)))
    return path
