"""A capacity run's probes and their records: a probe's identity and budget, a worker's record made a
probe's, the outcomes so far of each configuration's search (`bench.capacity.searches`) and how many
searches are done. Run by the common lifecycle through `bench.plans.capacity`; read by the capacity report."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Mapping

from bench.capacity.oom import oom_source, parse_oom_message
from bench.capacity.planner import Done, next_probe
from bench.capacity import searches
from bench.capacity.budget import BEFORE_MODEL, BUDGET_ENV, MMAP_THRESHOLD_ENV, enforcement, footprint_note
from bench.capacity.spec import CapacityConfig, CapacityPlan
from bench.store import Record, jsonable

PROBE_MEASURE = "bench.capacity.probe:measure"  # what the fork server's workers call
_PEAK_RSS = re.compile(r"peak RSS ([0-9.]+) MiB")
_BASELINE = re.compile(rf"held ([0-9.]+) MiB {BEFORE_MODEL}")


def budget_mib(plan: CapacityPlan, config: CapacityConfig) -> float:
    """The budget a configuration's probes run under, in MiB (its own, else the plan's)."""
    return plan.budget_gib_for(config) * 1024


def probe_env(plan: CapacityPlan, config: CapacityConfig) -> dict[str, str]:
    """What a probe's worker is told before it measures: its budget, and the fixed mmap threshold
    where the profile sets one."""
    env = {BUDGET_ENV: f"{budget_mib(plan, config):g}"}
    if plan.mmap_threshold_kib is not None:
        env[MMAP_THRESHOLD_ENV] = str(plan.mmap_threshold_kib)
    return env


def probe_id(plan: CapacityPlan, config: CapacityConfig, value: int) -> str:
    """A probe's identity: its point's canonical config and the budget it ran under."""
    point = plan.point(config, value)
    identity = {**point.canonical(), "memory_budget_gib": plan.budget_gib_for(config)}
    if plan.mmap_threshold_kib is not None:  # absent otherwise: the ids of runs before the setting stand
        identity["mmap_threshold_kib"] = plan.mmap_threshold_kib
    blob = json.dumps(identity, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def search_outcomes(records: Iterable[Mapping[str, Any]], plan: CapacityPlan, config: CapacityConfig,
                    retry_failed: bool = False) -> dict[int, Any]:
    """What the run's (calibrated) search of one configuration knows: its probes' outcomes
    (`bench.capacity.searches`), without the errors and timeouts `--retry-failed` probes again."""
    records = list(records)
    if retry_failed:
        latest = {int((r.get("params") or {}).get(plan.over, -1)): r.get("status") for r in records
                  if (r.get("params") or {}).get("config") == config.label}
        records = [r for r in records if latest.get(int((r.get("params") or {}).get(plan.over, -1))) != "timeout"]
    return searches.config_outcomes(records, plan, config, retry_failed)


def recorded_probes(records: Iterable[Mapping[str, Any]], plan: CapacityPlan, config: CapacityConfig,
                    retry_failed: bool = False) -> dict[int, Mapping[str, Any]]:
    """The latest record of each value of one configuration that the run holds, whatever budget it
    names (a run's probes are all of its one plan): what its search must never probe again; with
    retry_failed, less those that ended in error or timeout (the flag probes them once more)."""
    latest: dict[int, Mapping[str, Any]] = {}
    for r in records:
        params = r.get("params") or {}
        if params.get("config") == config.label and params.get("search_over") == plan.over \
                and isinstance(params.get(plan.over), int):
            latest[params[plan.over]] = r
    if retry_failed:
        latest = {v: r for v, r in latest.items() if r.get("status") not in ("error", "timeout")}
    return latest


def repeat_message(plan: CapacityPlan, config: CapacityConfig, value: int, record: Mapping[str, Any]) -> str:
    """Why a search that asks again for a value it has a record of is stopped, not probed again."""
    recorded = (record.get("params") or {}).get("memory_budget_gib")
    return (f"capacity config {config.label!r}: its search asks for {plan.over}={value} again, but the run already "
            f"holds that probe's record (status {record.get('status')}, memory_budget_gib={recorded!r}) and does not "
            f"count it as an outcome of this search (budget {plan.budget_gib_for(config):g} GiB); stopping rather "
            "than probing it again: start a new run with --fresh")


def capacity_progress(records: Iterable[Mapping[str, Any]], spec: Mapping[str, Any],
                      retry_failed: bool = False) -> tuple[int, int]:
    """(searches done, searches planned) of a capacity run from its run.json suite_spec and records:
    what decides whether a run is finished or is continued."""
    records, plan = list(records), CapacityPlan.from_json(spec)
    done = sum(isinstance(next_probe(searches.search_for(plan, c), search_outcomes(records, plan, c, retry_failed)), Done)
               for c in plan.configs)
    return done, len(plan.configs)


def finish_record(record: Record, plan: CapacityPlan, config: CapacityConfig, value: int, run_id: str) -> Record:
    """A worker's record made a probe's: identity, the budget and how it was enforced, the OOM's
    detection and the sizes its message states; an allocator failure the worker called `error`
    becomes `oom`."""
    record = dict(record)
    source = oom_source(record["status"], record.get("reason"))
    if record["status"] == "error" and source is not None:
        record["status"] = "oom"
    record["point_id"] = probe_id(plan, config, value)
    record["run_id"] = run_id
    record["params"] = {
        **(record.get("params") or {}), "config": config.label, "search_over": plan.over,
        "memory_budget_gib": plan.budget_gib_for(config), "budget_enforcement": enforcement(plan.device),
        "mmap_threshold_kib": plan.mmap_threshold_kib,
    }
    metrics = dict(record.get("metrics") or {})
    effective = dict(record.get("effective") or {})
    if record["status"] == "oom":
        effective["oom_detected_by"] = source
        metrics.update(parse_oom_message(record.get("reason") or ""))
        if (match := _PEAK_RSS.search(record.get("reason") or "")) and metrics.get("peak_rss_mib") is None:
            metrics["peak_rss_mib"] = float(match.group(1))
        if (match := _BASELINE.search(record.get("reason") or "")) and metrics.get("baseline_rss_mib") is None:
            metrics["baseline_rss_mib"] = float(match.group(1))
    record["metrics"], record["effective"] = metrics, effective
    return jsonable(record)


def worker_footprint_mib(records: Iterable[Mapping[str, Any]]) -> float | None:
    """The least resident memory a probe worker of the run held before its model was built (its
    records' baseline_rss_mib; every worker is a fork of one server), None if none says."""
    seen = [float(b) for r in records if (b := (r.get("metrics") or {}).get("baseline_rss_mib")) is not None]
    return min(seen) if seen else None


def below_footprint(records: Iterable[Mapping[str, Any]], plan: CapacityPlan, config: CapacityConfig) -> str | None:
    """The note for a CPU configuration whose budget (the worker's RSS) is below the worker's own
    footprint, else None (on CUDA the budget is the allocator's, apart from the host's RSS)."""
    footprint = None if str(plan.device).startswith("cuda") else worker_footprint_mib(records)
    if footprint is None or footprint <= budget_mib(plan, config):
        return None
    return footprint_note(budget_mib(plan, config), footprint)


def status_line(record: Mapping[str, Any]) -> str:
    m = record.get("metrics") or {}
    peak = m.get("peak_alloc_mib") if m.get("peak_alloc_mib") is not None else m.get("peak_rss_mib")
    if record["status"] == "ok":
        return f"ok      peak {peak:.0f} MiB, step {m.get('step_ms', 0):.0f} ms"
    return f"{record['status']:<7} {(record.get('reason') or '')[:110]}"


def done_line(done: Done, over: str, note: str | None = None) -> str:
    what = {"bracketed": f"longest {over} {done.longest} (first failure {done.first_failure})",
            "max_value": f"fits up to the search's max_value {done.longest}",
            "nothing_fits": f"nothing fits (smallest failure {done.first_failure})",
            "error": f"stopped by an error (longest fit so far {done.longest})"}[done.why]
    return f"{what}; {len(done.probes)} probes" + (f"; {note}" if note and done.longest is None else "")
