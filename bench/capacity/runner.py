"""Run (or resume) a capacity suite: for each configuration, ask the planner for the next probe given
the probes already recorded, run it in a fresh worker under the memory budget, append its record,
and repeat until the planner is done. The records are the only state, so a kill at any moment
loses nothing a rerun does not redo exactly once (the probe that was running)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from rich.console import Console
from rich.table import Table

from bench.capacity.oom import is_oom, oom_source, parse_oom_message
from bench.capacity.planner import ERROR, FIT, NO_FIT, Done, Probe, next_probe
from bench.capacity.probe import enforcement
from bench.capacity.spec import CapacityConfig, CapacityPlan, load_capacity_suite, resolve
from bench.capacity.probe import BUDGET_ENV
from bench.rundir import choose_run_dir
from bench.store import Record, RunLock, RunStore, jsonable, now_iso, plan_key

PROBE_MEASURE = "bench.capacity.probe:measure"  # what the fork server's workers call
_PEAK_RSS = re.compile(r"peak RSS ([0-9.]+) MiB")


def budget_mib(plan: CapacityPlan) -> float:
    return plan.memory_budget_gib * 1024


def probe_id(plan: CapacityPlan, config: CapacityConfig, value: int) -> str:
    """A probe's identity: its point's canonical config and the budget it ran under."""
    point = plan.point(config, value)
    blob = json.dumps({**point.canonical(), "memory_budget_gib": plan.memory_budget_gib}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def outcome_of(record: Mapping[str, Any]) -> str:
    """What the planner makes of a probe's record: fit (ok), no fit (any OOM, or over the time
    limit: a length the step cannot finish in timeout_s does not fit either) or error."""
    status = record.get("status")
    if status == "ok":
        return FIT
    if status == "timeout" or is_oom(record):
        return NO_FIT
    return ERROR


def config_outcomes(records: Iterable[Mapping[str, Any]], plan: CapacityPlan, config: CapacityConfig,
                    retry_failed: bool = False) -> dict[int, str]:
    """The recorded outcomes of one configuration's probes under this plan's budget, by searched
    value (the latest record of a value wins; with retry_failed, errors count as not probed)."""
    out: dict[int, str] = {}
    for r in records:
        params = r.get("params") or {}
        if params.get("config") != config.label or params.get("memory_budget_gib") != plan.memory_budget_gib:
            continue
        if params.get("search_over") != plan.over:
            continue
        outcome = outcome_of(r)
        value = int(params[plan.over])
        if outcome == ERROR and retry_failed:
            out.pop(value, None)
            continue
        out[value] = outcome
    return out


def capacity_progress(records: Iterable[Mapping[str, Any]], spec: Mapping[str, Any],
                      retry_failed: bool = False) -> tuple[int, int]:
    """(searches done, searches planned) of a capacity run from its run.json suite_spec and records:
    what decides whether a run is finished or is continued."""
    records, plan = list(records), CapacityPlan.from_json(spec)
    done = sum(isinstance(next_probe(plan.search_for(c), config_outcomes(records, plan, c, retry_failed)), Done)
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
        "memory_budget_gib": plan.memory_budget_gib, "budget_enforcement": enforcement(plan.device),
    }
    metrics = dict(record.get("metrics") or {})
    effective = dict(record.get("effective") or {})
    if record["status"] == "oom":
        effective["oom_detected_by"] = source
        metrics.update(parse_oom_message(record.get("reason") or ""))
        if (match := _PEAK_RSS.search(record.get("reason") or "")) and metrics.get("peak_rss_mib") is None:
            metrics["peak_rss_mib"] = float(match.group(1))
    record["metrics"], record["effective"] = metrics, effective
    return jsonable(record)


def plan_for(path: Path | str, opts: Any, has_cuda: bool) -> CapacityPlan:
    """The suite resolved for the options' profile and device; RunError-worthy problems as ValueError."""
    from bench.runner import RunError, resolve_profile

    path, spec = load_capacity_suite(path)
    profile = resolve_profile(opts.profile, opts.device, has_cuda)
    if profile not in spec.profiles:
        raise RunError(f"{path}: profiles: no profile '{profile}' (has: {', '.join(spec.profiles)})")
    wanted = opts.device if opts.device != "auto" else spec.profiles[profile].device
    device = ("cuda" if has_cuda else "cpu") if wanted == "auto" else wanted
    if device == "cuda" and not has_cuda:
        raise RunError(f"{path}: profile '{profile}' runs on cuda, but CUDA is not available; "
                       "use --profile cpu")
    return resolve(spec, profile, device, path)


def _check_same_plan(kept: Mapping[str, Any], plan: CapacityPlan, run_dir: Path) -> None:
    from bench.runner import RunError

    now = json.loads(json.dumps(plan.to_json()))
    old = kept.get("suite_spec") or {}
    for key in ("memory_budget_gib", "search", "timeout_s"):
        if old.get(key) != now.get(key):
            raise RunError(f"{run_dir}: this run was started with {key}={old.get(key)!r}, the suite now "
                           f"says {now.get(key)!r}; use --fresh or another --run-id")


def run_capacity_suite(path: Path | str, opts: Any, console: Console | None = None) -> Path:
    """Search every configuration of the suite's profile; returns the run directory."""
    from bench.runner import cuda_available

    console = console or Console()
    ignored = [flag for flag, on in (("--only", bool(opts.only)), ("--wandb", opts.wandb),
                                     (f"--executor {opts.executor}", opts.executor != "local")) if on]
    if ignored:
        console.print(f"capacity suites ignore {', '.join(ignored)} (probes run one at a time, locally)",
                      style="yellow", markup=False)
    plan = plan_for(path, opts, cuda_available())
    spec = plan.to_json()
    labels = [c.label for c in plan.configs]
    key = plan_key(spec, labels)
    run_dir = choose_run_dir(plan.suite, plan.profile, plan.device, opts, console, plan_key=key)
    with RunLock(run_dir):
        return _search_all(plan, spec, labels, key, run_dir, opts, console)


def _search_all(plan: CapacityPlan, spec: dict[str, Any], labels: list[str], key: str, run_dir: Path,
                opts: Any, console: Console) -> Path:
    from bench.environment import capture_environment, host_id
    from bench.executors.local import PointRunner
    from bench.runner import nothing_measured, write_report

    run_id = run_dir.name
    store = RunStore(run_dir)
    meta = {"suite": plan.suite, "kind": "capacity", "profile": plan.profile, "run_id": run_id,
            "device": plan.device, "created_at": now_iso(), "host_id": host_id(),
            "environment": capture_environment(plan.device), "suite_spec": spec, "planned": labels,
            "plan_key": key}
    _check_same_plan(store.write_run_json(meta), plan, run_dir)
    store.check_writable()
    budget = budget_mib(plan)
    watchdog = budget if plan.device == "cpu" else opts.memory_limit_mib
    console.print(f"{plan.suite} profile={plan.profile} device={plan.device} "
                  f"budget={plan.memory_budget_gib:g} GiB ({enforcement(plan.device)}) -> {run_dir}", markup=False)
    records = store.records()
    done, total = capacity_progress(records, spec, opts.retry_failed)
    if done == total:
        nothing_measured(console, f"{run_dir}: every one of its {total} searches is done; its report is left "
                                  "as it was (--fresh starts a new run)")
        return run_dir
    os.environ[BUDGET_ENV] = f"{budget:g}"  # the probes' fork server (started below) hands it to each worker
    prober = PointRunner(watchdog, processes=1, measure=PROBE_MEASURE)
    started = time.monotonic()
    try:
        for config in plan.configs:
            search = plan.search_for(config)
            while True:
                step = next_probe(search, config_outcomes(records, plan, config, opts.retry_failed))
                if isinstance(step, Done):
                    console.print(f"  {config.label}: {_done_line(step, plan.over)}", markup=False)
                    break
                if opts.time_budget_s is not None and time.monotonic() - started > opts.time_budget_s:
                    console.print(f"time budget of {opts.time_budget_s:g} s spent; "
                                  "run the same command again to resume", style="yellow")
                    _summary(console, plan, records)
                    return run_dir
                assert isinstance(step, Probe)
                point = plan.point(config, step.value)
                record = finish_record(prober.run(point, plan.timeout_s), plan, config, step.value, run_id)
                store.append(record)
                records.append(record)
                console.print(f"    {plan.over}={step.value:>7} {_status_line(record)}", markup=False)
    finally:
        prober.close()
    _summary(console, plan, records)
    write_report(run_dir, console, module="bench.capacity.report")
    return run_dir


def _status_line(record: Mapping[str, Any]) -> str:
    m = record.get("metrics") or {}
    peak = m.get("peak_alloc_mib") if m.get("peak_alloc_mib") is not None else m.get("peak_rss_mib")
    if record["status"] == "ok":
        return f"ok      peak {peak:.0f} MiB, step {m.get('step_ms', 0):.0f} ms"
    return f"{record['status']:<7} {(record.get('reason') or '')[:110]}"


def _done_line(done: Done, over: str) -> str:
    what = {"bracketed": f"longest {over} {done.longest} (first failure {done.first_failure})",
            "max_value": f"fits up to the search's max_value {done.longest}",
            "nothing_fits": f"nothing fits (smallest failure {done.first_failure})",
            "error": f"stopped by an error (longest fit so far {done.longest})"}[done.why]
    return f"{what}; {len(done.probes)} probes"


def _summary(console: Console, plan: CapacityPlan, records: list[Record]) -> None:
    table = Table(title=f"capacity: longest {plan.over} under {plan.memory_budget_gib:g} GiB")
    for col in ("configuration", f"longest {plan.over}", "limited by", "probes"):
        table.add_column(col)
    for config in plan.configs:
        step = next_probe(plan.search_for(config), config_outcomes(records, plan, config))
        if isinstance(step, Done):
            table.add_row(config.label, str(step.longest or "-"), step.why, str(len(step.probes)))
        else:
            table.add_row(config.label, "-", "not finished", str(len(config_outcomes(records, plan, config))))
    console.print(table)
