"""The capacity report, regenerated from a run's run.json and records alone: per configuration the
longest length (or batch) that trained under the budget, the peak and step time there, Table 3's
prediction beside it and the ratio to full attention's longest; a markdown table, a CSV and a
log-scale bar chart."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from bench.capacity.planner import Done, next_probe
from bench.capacity.predict import predict_longest
from bench.capacity.runner import config_outcomes
from bench.capacity.spec import CapacityConfig, CapacityPlan
from bench.store import RECORDS, RUN_JSON, read_records

UNIT = {"seq_len": "tokens", "batch_size": "sequences"}


def plan_from_meta(meta: Mapping[str, Any]) -> CapacityPlan:
    """The CapacityPlan a run.json describes."""
    return CapacityPlan.from_json(meta["suite_spec"])


def _probe_record(records: Sequence[Mapping[str, Any]], config: CapacityConfig, plan: CapacityPlan,
                  value: int | None) -> Mapping[str, Any] | None:
    """The latest record of one configuration's probe at `value`."""
    if value is None:
        return None
    found = None
    for r in records:
        p = r.get("params") or {}
        if p.get("config") == config.label and p.get("memory_budget_gib") == plan.memory_budget_gib \
                and p.get(plan.over) == value:
            found = r
    return found


def reference_label(plan: CapacityPlan) -> str | None:
    """The configuration the ratio column divides by: naive full attention without reversible
    layers if the suite has one, else the first full-attention configuration."""
    full = [c for c in plan.configs if c.settings.get("attention") == "full"]
    plain = [c for c in full if not c.settings.get("reversible")]
    return (plain or full or [None])[0].label if (plain or full) else None


def capacity_frame(meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per configuration: the search's result, read back from the probes' records."""
    plan = plan_from_meta(meta)
    cuda = str(plan.device).startswith("cuda")
    budget_bytes = plan.memory_budget_gib * 2**30
    ok_baselines = [r["metrics"]["baseline_rss_mib"] for r in records
                    if r.get("status") == "ok" and (r.get("metrics") or {}).get("baseline_rss_mib") is not None]
    overhead_mib = 0.0 if cuda or not ok_baselines else statistics.median(ok_baselines)
    rows = []
    for config in plan.configs:
        search = plan.search_for(config)
        step = next_probe(search, config_outcomes(records, plan, config))
        done = step if isinstance(step, Done) else None
        longest = done.longest if done else None
        at = _probe_record(records, config, plan, longest)
        failure = _probe_record(records, config, plan, done.first_failure if done else None)
        metrics = (at or {}).get("metrics") or {}
        peak = metrics.get("peak_alloc_mib") if cuda else metrics.get("peak_rss_mib")
        other = config.settings
        batch = longest if plan.over == "batch_size" else other.get("batch_size")
        length = longest if plan.over == "seq_len" else other.get("seq_len")
        predicted = None
        row_name = None
        if metrics.get("n_params") is not None:
            pred = predict_longest({**other, "seq_len": length, "batch_size": batch}, plan.over, budget_bytes,
                                   int(metrics["n_params"]), overhead_mib * 2**20, search.multiple)
            predicted, row_name = pred.value, pred.row
        rows.append({
            "configuration": config.label,
            "attention": other.get("attention"),
            "n_hashes": other.get("n_hashes") if other.get("attention") == "lsh" else None,
            "reversible": other.get("reversible"),
            "ff_chunks": other.get("ff_chunks"),
            f"longest_{plan.over}": longest,
            "tokens": batch * length if longest is not None else None,
            "peak_mib": peak,
            "step_ms": metrics.get("step_ms"),
            "limited_by": _limited_by(done, failure),
            "predicted": predicted,
            "predicted_over_measured": predicted / longest if predicted and longest else None,
            "table3_row": row_name,
            "probes": len(done.probes) if done else len(config_outcomes(records, plan, config)),
        })
    df = pd.DataFrame(rows)
    ref = reference_label(plan)
    ref_value = df.loc[df.configuration == ref, f"longest_{plan.over}"] if ref else None
    base = ref_value.iloc[0] if ref_value is not None and len(ref_value) else None
    df["ratio_to_full"] = [v / base if base and v is not None and v == v else None
                           for v in df[f"longest_{plan.over}"]]
    return df


def _limited_by(done: Done | None, failure: Mapping[str, Any] | None) -> str:
    if done is None:
        return "not finished"
    if done.why == "max_value":
        return "search max_value"
    if done.why == "error":
        return "error"
    status = (failure or {}).get("status", "?")
    source = ((failure or {}).get("effective") or {}).get("oom_detected_by")
    return f"{status} ({source})" if source else status


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
    return (f"Longest {plan.over} whose full training step (forward, backward, AdamW step) ran within "
            f"{plan.memory_budget_gib:g} GiB ({enforced}) on {env.get('device_name') or plan.device}; "
            f"held fixed: {fixed}. Search: doubling from {plan.search.start}, bisection to "
            f"{plan.search.resolution:g} of the length, cap {plan.search.max_value}"
            + "".join(f"; {c.label}: " + ", ".join(f"{k} {v}" for k, v in c.search.items())
                      for c in plan.configs if c.search) + ".")


def plot(df: pd.DataFrame, plan: CapacityPlan, path: Path, title_caption: str) -> Path:
    """Horizontal bars of the measured longest value per configuration (log scale), predicted
    values as black markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    col = f"longest_{plan.over}"
    kinds = {"full": "#7f7f7f", "sdpa": "#1f77b4", "lsh": "#d95f02"}
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(df) + 2.0))
    y = range(len(df))
    values = [v if v == v and v is not None else 0 for v in df[col]]
    ax.barh(list(y), values, color=[kinds.get(a, "#999999") for a in df.attention], alpha=0.85)
    pred = [(i, p) for i, p in zip(y, df.predicted) if p is not None and p == p]
    if pred:
        ax.scatter([p for _, p in pred], [i for i, _ in pred], marker="D", color="black", s=22, zorder=3,
                   label="predicted (Table 3 term + weights, optimizer, inputs)")
    for i, (v, why) in enumerate(zip(values, df.limited_by)):
        note = f"{v:.0f}" + (" (search cap)" if why == "search max_value" else "") if v else why
        ax.text(v if v else plan.search.start, i, f" {note}", va="center", fontsize=7)
    positive = [v for v in values if v] + [plan.search.start]
    ax.set_xlim(left=min(positive) / 2, right=max(positive + [p for _, p in pred]) * 4)
    ax.set_yticks(list(y), df.configuration)
    ax.invert_yaxis()
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"longest {plan.over.replace('_', ' ')} under the budget ({UNIT[plan.over]}, log scale)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.85) for c in kinds.values()]
    labels = [f"measured, attention={k}" for k in kinds]
    h, lab = ax.get_legend_handles_labels()
    ax.legend(handles + h, labels + lab, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set_title(f"{plan.suite} ({plan.profile}): how long a sequence fits in {plan.memory_budget_gib:g} GiB",
                 fontsize=10)
    fig.text(0.01, 0.005, _wrap(title_caption, 150), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


COLUMN_LABELS = {
    "longest_seq_len": "longest seq_len (tokens)", "longest_batch_size": "largest batch_size",
    "tokens": "tokens per step", "peak_mib": "peak there (MiB)", "step_ms": "step time there (ms)",
    "limited_by": "first failure", "predicted": "predicted", "predicted_over_measured": "predicted / measured",
    "ratio_to_full": "ratio to full attention", "probes": "probes",
}


def markdown(df: pd.DataFrame, plan: CapacityPlan, meta: Mapping[str, Any], ref: str | None) -> str:
    cols = ["configuration", f"longest_{plan.over}", "tokens", "peak_mib", "step_ms", "predicted",
            "predicted_over_measured", "ratio_to_full", "limited_by", "probes"]
    shown = df[cols].copy()
    for col in (f"longest_{plan.over}", "tokens", "peak_mib", "step_ms", "predicted"):
        shown[col] = shown[col].map(lambda v: "-" if v is None or v != v else f"{v:.0f}")
    for col in ("predicted_over_measured", "ratio_to_full"):
        shown[col] = shown[col].map(lambda v: "-" if v is None or v != v else f"{v:.2f}")
    capped = df.limited_by == "search max_value"  # a lower bound: memory did not stop it
    for col in (f"longest_{plan.over}", "tokens", "ratio_to_full"):
        shown.loc[capped, col] = ">= " + shown.loc[capped, col]
    shown.loc[capped, "predicted_over_measured"] = "<= " + shown.loc[capped, "predicted_over_measured"]
    shown = shown.rename(columns=COLUMN_LABELS)
    peak = "allocator peak" if str(plan.device).startswith("cuda") else "peak RSS of the worker"
    lines = [
        f"# Capacity: {plan.suite}, profile {plan.profile}", "",
        caption(meta, plan), "",
        f"Peak: {peak} at the longest value. Ratio: longest value over `{ref}`'s. Predicted: Table 3's "
        "memory term of the configuration's row (times the dtype's bytes) plus weights, gradients, AdamW "
        "state and inputs"
        + ("" if str(plan.device).startswith("cuda") else ", plus the worker's RSS before the model is built")
        + ", solved for the longest value under the budget (bench/capacity/predict.py).", "",
        shown.to_markdown(index=False), "",
        "![capacity](capacity.png)", "",
    ]
    gaps = [f"`{row.configuration}` ({row.predicted_over_measured:.2f})" for row in df.itertuples()
            if row.predicted_over_measured is not None and row.predicted_over_measured == row.predicted_over_measured
            and row.limited_by != "search max_value"  # a capped length is a lower bound: no gap to claim
            and not 0.5 <= row.predicted_over_measured <= 2]
    if gaps:
        lines += [
            f"**Prediction off by more than 2x:** {', '.join(gaps)}. Table 3 counts one copy of the largest "
            "activation; a step keeps several (scores, probabilities and their gradients per layer, the LM "
            "head's logits), so for linear-memory configurations the constant it leaves out moves the length "
            "in proportion. SDPA's fused kernel never stores the L x L matrix its Table 3 row assumes, and a "
            "configuration stopped by a timeout was not stopped by memory (capped ones are not listed: their "
            "length is a lower bound).", "",
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

