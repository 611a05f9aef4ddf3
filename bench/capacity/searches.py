"""A capacity plan's configurations as calibrated searches, and probe records as the planner's
outcomes (fit with its peak and wall time, or no fit with the limit that stopped it: memory or time).
What the lifecycle's capacity plan asks the planner with; the report replays searches with it too."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

from bench.capacity.calibrate import memory_form, time_form
from bench.capacity.oom import is_oom
from bench.capacity.planner import ERROR, FIT, MEMORY, NO_FIT, TIME, Outcome, Search
from bench.capacity.spec import CapacityConfig, CapacityPlan


def budget_gib(plan: CapacityPlan, config: CapacityConfig) -> float:
    """The configuration's memory budget: its own where the profile gives one, else the profile's."""
    return plan.budget_gib_for(config)


def timeout_for(plan: CapacityPlan, config: CapacityConfig) -> float:
    """The configuration's per-probe timeout: its own where the profile gives one, else the plan's."""
    return plan.timeout_for(config)


def calibrated(base: Search, *, budget_mib: float, attention: str, over: str, timeout_s: float | None,
               calibration: Sequence[int] | None = None) -> Search:
    """`base` made calibrated: the budget, the forms of the attention's memory and time in the
    searched axis (both linear in batch_size at a fixed length), the timeout, the calibration lengths."""
    linear_axis = over == "batch_size"
    return dataclasses.replace(
        base, budget_mib=float(budget_mib),
        memory_form="linear" if linear_axis else memory_form(str(attention)),
        time_form="linear" if linear_axis else time_form(str(attention)),
        timeout_s=timeout_s, calibration=tuple(int(v) for v in calibration) if calibration else None,
    )


def search_for(plan: CapacityPlan, config: CapacityConfig) -> Search:
    """The calibrated search of one configuration: the plan's search with the budget, the forms of
    the configuration's attention and the timeout (calibration lengths from the suite where given)."""
    base = plan.search_for(config)
    if base.budget_mib is not None:  # the loader already made it calibrated
        return base
    return calibrated(base, budget_mib=budget_gib(plan, config) * 1024, attention=config.settings.get("attention"),
                      over=plan.over, timeout_s=timeout_for(plan, config),
                      calibration={**plan.search.model_dump(), **dict(config.search)}.get("calibration"))


def peak_of(record: Mapping[str, Any], device: str) -> float | None:
    """What the budget counts of a probe: the allocator's reserved peak on CUDA (what
    set_per_process_memory_fraction caps), the worker's peak RSS on CPU."""
    m = record.get("metrics") or {}
    if str(device).startswith("cuda"):
        return m.get("peak_reserved_mib") if m.get("peak_reserved_mib") is not None else m.get("peak_alloc_mib")
    return m.get("peak_rss_mib")


def outcome_of(record: Mapping[str, Any], device: str = "cpu") -> Outcome:
    """A probe's record as the planner's outcome: ok -> fit (peak, wall time); any OOM -> no fit
    (memory); timeout -> no fit (time: a step that cannot finish in timeout_s does not fit either);
    anything else -> error."""
    status = record.get("status")
    if status == "ok":
        return Outcome(FIT, peak_mib=peak_of(record, device), wall_s=record.get("wall_s"))
    if is_oom(record):
        return Outcome(NO_FIT, MEMORY)
    if status == "timeout":
        return Outcome(NO_FIT, TIME)
    return Outcome(ERROR)


def config_outcomes(records: Iterable[Mapping[str, Any]], plan: CapacityPlan, config: CapacityConfig,
                    retry_failed: bool = False) -> dict[int, Outcome]:
    """The recorded outcomes of one configuration's probes under its budget, by searched value (the
    latest record of a value wins; with retry_failed, errors count as not probed)."""
    budget = budget_gib(plan, config)
    out: dict[int, Outcome] = {}
    for r in records:
        params = r.get("params") or {}
        if params.get("config") != config.label or params.get("memory_budget_gib") != budget:
            continue
        if params.get("search_over") != plan.over:
            continue
        outcome = outcome_of(r, plan.device)
        value = int(params[plan.over])
        if outcome.status == ERROR and retry_failed:
            out.pop(value, None)
            continue
        out[value] = outcome
    return out
