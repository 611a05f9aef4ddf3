"""The capacity report's numbers, from a run's run.json and records alone: per configuration the
search's result replayed from its probes (longest fit, first failure, which limit stopped it), the
peak and step time there, the calibrated prediction and its error, and Table 3's term beside them
(the paper's lower bound on memory, so an upper bound on the length). Pure: pandas, no torch."""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

import pandas as pd

from bench.capacity.planner import FIT, MAX_VALUE, MEMORY, TIME, Done, calibration_of, calibration_probes, next_probe
from bench.capacity.predict import predict_longest
from bench.capacity.runner import below_footprint
from bench.capacity.searches import budget_gib, config_outcomes, search_for, timeout_for
from bench.capacity.spec import CapacityConfig, CapacityPlan

TARGET_ERROR = 0.15  # issue 22: a calibrated prediction within 15% of the searched longest length


def plan_from_meta(meta: Mapping[str, Any]) -> CapacityPlan:
    """The CapacityPlan a run.json describes."""
    return CapacityPlan.from_json(meta["suite_spec"])


def replay(plan: CapacityPlan, config: CapacityConfig, records: Sequence[Mapping[str, Any]]):
    """(search, outcomes, step) of one configuration: the calibrated search if it explains the
    recorded probes, else the classic doubling search (runs recorded before calibration)."""
    outcomes = config_outcomes(records, plan, config)
    calibrated = search_for(plan, config)
    classic = plan.search_for(config)
    for search in (calibrated, classic):
        step = next_probe(search, outcomes)
        if isinstance(step, Done) and set(step.probes) == set(outcomes):
            return search, outcomes, step
    step = next_probe(calibrated, outcomes)
    return calibrated, outcomes, step


def probe_record(records: Sequence[Mapping[str, Any]], plan: CapacityPlan, config: CapacityConfig,
                 value: int | None) -> Mapping[str, Any] | None:
    """The latest record of one configuration's probe at `value` under its budget."""
    if value is None:
        return None
    budget = budget_gib(plan, config)
    found = None
    for r in records:
        p = r.get("params") or {}
        if p.get("config") == config.label and p.get("memory_budget_gib") == budget and p.get(plan.over) == value:
            found = r
    return found


def reference_label(plan: CapacityPlan) -> str | None:
    """The configuration the ratio column divides by: naive full attention without reversible
    layers if the suite has one, else the first full-attention configuration."""
    full = [c for c in plan.configs if c.settings.get("attention") == "full"]
    plain = [c for c in full if not c.settings.get("reversible")]
    return (plain or full)[0].label if (plain or full) else None


def limited_by(done: Done | None, failure: Mapping[str, Any] | None, timeout_s: float) -> str:
    """What stopped the search, in words: the limit and how it was detected."""
    if done is None:
        return "not finished"
    if done.why == "error":
        return "error"
    if done.limit == MAX_VALUE:
        return "max_value (search cap)"
    if done.limit == TIME:
        return f"time (timeout {timeout_s:g} s)"
    source = ((failure or {}).get("effective") or {}).get("oom_detected_by")
    what = "memory" if done.limit == MEMORY else (failure or {}).get("status", "?")
    return f"{what} ({source})" if source else what


def capacity_frame(meta: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per configuration: the search's result, read back from the probes' records."""
    plan = plan_from_meta(meta)
    cuda = str(plan.device).startswith("cuda")
    ok_baselines = [r["metrics"]["baseline_rss_mib"] for r in records
                    if r.get("status") == "ok" and (r.get("metrics") or {}).get("baseline_rss_mib") is not None]
    overhead_mib = 0.0 if cuda or not ok_baselines else statistics.median(ok_baselines)
    rows = [_row(plan, config, records, overhead_mib, cuda) for config in plan.configs]
    df = pd.DataFrame(rows)
    ref = reference_label(plan)
    col = f"longest_{plan.over}"
    ref_value = df.loc[df.configuration == ref, col] if ref else None
    base = ref_value.iloc[0] if ref_value is not None and len(ref_value) else None
    df["ratio_to_full"] = [v / base if base and v is not None and v == v else None for v in df[col]]
    return df


def _row(plan: CapacityPlan, config: CapacityConfig, records: Sequence[Mapping[str, Any]],
         overhead_mib: float, cuda: bool) -> dict[str, Any]:
    search, outcomes, step = replay(plan, config, records)
    done = step if isinstance(step, Done) else None
    longest = done.longest if done else None
    at = probe_record(records, plan, config, longest)
    failure = probe_record(records, plan, config, done.first_failure if done else None)
    metrics = (at or {}).get("metrics") or {}
    other = config.settings
    batch = longest if plan.over == "batch_size" else other.get("batch_size")
    length = longest if plan.over == "seq_len" else other.get("seq_len")
    budget = budget_gib(plan, config)
    table3, row_name = None, None
    if metrics.get("n_params") is not None:
        pred = predict_longest({**other, "seq_len": length, "batch_size": batch}, plan.over, budget * 2**30,
                               int(metrics["n_params"]), overhead_mib * 2**20, search.multiple)
        table3, row_name = pred.value, pred.row
    cal = calibration_of(search, outcomes)
    predicted = (cal.time if cal.limit == TIME else cal.memory) if cal is not None else None
    limit = done.limit if done else None
    error = (predicted / longest - 1) if predicted is not None and longest and limit in (MEMORY, TIME) else None
    asked = [v for v in calibration_probes(search, outcomes) if v in outcomes]
    n_cal = len(asked)
    cal_top = max((v for v in asked if outcomes[v].status == FIT), default=None)
    stopped = limited_by(done, failure, timeout_for(plan, config))
    if done is not None and longest is None and (note := below_footprint(records, plan, config)):
        stopped = f"{stopped}; {note}"
    return {
        "configuration": config.label,
        "attention": other.get("attention"),
        "n_hashes": other.get("n_hashes") if other.get("attention") == "lsh" else None,
        "reversible": other.get("reversible"),
        "ff_chunks": other.get("ff_chunks"),
        "budget_gib": budget,
        f"longest_{plan.over}": longest,
        "first_failure": done.first_failure if done else None,
        "tokens": batch * length if longest is not None else None,
        "peak_mib": metrics.get("peak_alloc_mib") if cuda else metrics.get("peak_rss_mib"),
        "step_ms": metrics.get("step_ms"),
        "wall_s": (at or {}).get("wall_s"),
        "limit": limit if done else "not finished",
        "limited_by": stopped,
        "predicted": predicted,
        "predicted_limit": cal.limit if cal is not None else None,
        "prediction_error": error,
        "memory_fit": _fit_text(cal.memory_fit) if cal is not None else None,
        "table3_longest": table3,
        "table3_over_measured": table3 / longest if table3 and longest else None,
        "table3_row": row_name,
        "probes": len(done.probes) if done else len(outcomes),
        "calibration_probes": n_cal,
        "calibration_longest": cal_top,
    }


def _fit_text(fit) -> str:
    """The memory fit in MiB and tokens, e.g. '310 + 0.0192 L'."""
    text = f"{fit.a:.0f} + {fit.b:.4g} L"
    return text + (f" + {fit.c:.3g} L^2" if fit.c else "")


def findings(df: pd.DataFrame, plan: CapacityPlan) -> list[str]:
    """The answers, computed from the frame: the longest length per configuration and what stopped
    it, how close the calibrated prediction came, and Table 3's bound beside it."""
    col = f"longest_{plan.over}"
    unit = "tokens" if plan.over == "seq_len" else "sequences"
    lines = []
    counts = df.limit.value_counts()
    lines.append("Stopped by: " + ", ".join(f"{what} {int(counts.get(what, 0))}" for what in
                                           (MEMORY, TIME, MAX_VALUE, "error", "not finished")
                                           if counts.get(what, 0)) + f" (of {len(df)} configurations).")
    mem = df[df.limit == MEMORY]
    errs = mem.prediction_error.dropna()
    if len(errs):
        within = int((errs.abs() <= TARGET_ERROR).sum())
        worst = mem.loc[errs.abs().idxmax()]
        share = (mem.calibration_longest / mem[f"longest_{plan.over}"]).dropna()
        lines.append(f"Calibrated prediction (the peak at small lengths, fitted and solved for the budget): "
                     f"within {TARGET_ERROR:.0%} of the searched longest {plan.over} for {within} of "
                     f"{len(errs)} memory-limited configurations; worst `{worst.configuration}` "
                     f"{worst.prediction_error:+.1%}; median |error| {errs.abs().median():.1%}"
                     + (f"; the longest calibration probe at {share.min():.0%}-{share.max():.0%} of the searched "
                        f"length (median {share.median():.0%})" if len(share) else "") + ".")
    t3 = mem.table3_over_measured.dropna()
    if len(t3):
        lines.append(f"Table 3's term (the paper's lower bound on memory: one copy of the largest activation) "
                     f"puts the longest {plan.over} {t3.min():.1f}x-{t3.max():.1f}x past the measured one "
                     "for the memory-limited configurations.")
    best = df.dropna(subset=[col]).sort_values(col, ascending=False)
    if len(best):
        top = best.iloc[0]
        secs = top.step_ms / 1000 if top.step_ms == top.step_ms and top.step_ms else None
        step = "" if secs is None else f", one step {secs:.0f} s" if secs >= 10 else f", one step {secs:.2g} s"
        lines.append(f"Longest: `{top.configuration}` trained {int(top[col]):,} {unit} under "
                     f"{top.budget_gib:g} GiB ({top.limited_by}{step}).")
    for row in df.itertuples():
        value = getattr(row, col)
        if value is None or value != value:
            lines.append(f"`{row.configuration}`: {row.limited_by}.")
            continue
        bound = ">= " if row.limit == MAX_VALUE else ""
        pred = ""
        if row.predicted is not None and row.predicted == row.predicted:
            pred = f"; predicted {row.predicted:,.0f} ({row.predicted_limit})"
            if row.prediction_error is not None and row.prediction_error == row.prediction_error:
                pred += f", error {row.prediction_error:+.1%}"
        t3 = (f"; Table 3 bound {row.table3_longest:,.0f}" if row.table3_longest is not None
              and row.table3_longest == row.table3_longest else "")
        lines.append(f"`{row.configuration}`: {bound}{int(value):,} {unit} under {row.budget_gib:g} GiB, "
                     f"stopped by {row.limited_by}{pred}{t3}.")
    return lines
