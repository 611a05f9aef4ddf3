"""The capacity plan: for each configuration in turn, the next probe of its search from the
outcomes recorded so far (doubling, then bisection, then done: `bench.capacity.planner`), run in a
fresh worker under the configuration's memory budget and timeout (its own, else the profile's). The records are the only state, so a kill at any
moment loses nothing a rerun does not redo exactly once (the probe that was running)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from bench.capacity.planner import Done, Probe, next_probe
from bench.capacity.budget import WORKER_FLOOR_MIB, enforcement
from bench.capacity.runner import (
    PROBE_MEASURE, below_footprint, budget_mib, done_line, finish_record, probe_env, recorded_probes, repeat_message,
    search_outcomes, status_line,
)
from bench.capacity.searches import outcome_of, search_for
from bench.capacity.spec import CapacityConfig, CapacityPlan, load_capacity_suite, resolve
from bench.executors.local import PointRunner
from bench.options import RunError, RunOptions, check_cuda, resolve_profile
from bench.plans.base import Record, Say, refuse
from bench.plans.progress import search_progress
from bench.point import GridPoint
from bench.store import plan_key

REMOTE = "a probe's outcome is decided by the memory budget this machine's fork-server worker enforces"


@dataclass(frozen=True)
class ProbeUnit:
    config: CapacityConfig
    value: int
    point: GridPoint


@dataclass
class CapacitySearchPlan:
    """Every configuration's search of one profile, one probe at a time."""

    resolved: CapacityPlan
    path: Path
    kind: str = "capacity"
    report_module: str = "bench.capacity.report"
    checkpoints: bool = False  # the lifecycle keeps the time budget between probes
    units_word: str = "searches"
    say: Say = print
    _outcomes: dict[str, dict[int, str]] = field(default_factory=dict)
    _probed: dict[str, dict[int, Record]] = field(default_factory=dict)  # per config: each value's latest record
    _records: list[Record] = field(default_factory=list)
    run_id: str = ""

    progress = staticmethod(search_progress)

    def __post_init__(self) -> None:
        self.suite, self.profile, self.device = self.resolved.suite, self.resolved.profile, self.resolved.device

    @classmethod
    def for_options(cls, path: Path, opts: RunOptions, has_cuda: bool) -> "CapacitySearchPlan":
        """The suite resolved for the options' profile and device, `--only` keeping named configs."""
        if opts.executor != "local":
            refuse("capacity", f"--executor {opts.executor}", REMOTE)
        if opts.data is not None:
            refuse("capacity", "--data", "probes run the train_step workload on random tokens")
        if opts.max_points is not None:
            refuse("capacity", "--max-points", "a search plans its probes one at a time; it expands no grid")
        check_cuda(opts.device, has_cuda)
        path, spec = load_capacity_suite(path)
        profile = resolve_profile(opts.profile, opts.device, has_cuda)
        if profile not in spec.profiles:
            raise RunError(f"{path}: profiles: no profile '{profile}' (has: {', '.join(spec.profiles)})")
        wanted = opts.device if opts.device != "auto" else spec.profiles[profile].device
        device = ("cuda" if has_cuda else "cpu") if wanted == "auto" else wanted
        if device == "cuda" and not has_cuda:
            raise RunError(f"{path}: profile '{profile}' runs on cuda, but CUDA is not available; "
                           "use --profile cpu")
        if device == "cpu" and opts.memory_limit_mib is not None:
            refuse("capacity", "--memory-limit-mib", "on cpu the suite's memory_budget_gib is the watchdog's limit")
        if opts.only:
            names = [c.name for c in spec.configs]
            unknown = sorted(set(opts.only) - set(names))
            if unknown:
                raise RunError(f"--only {', '.join(unknown)}: no such config in {path} (has: {', '.join(names)})")
        # --only names the configs to search, also one the profile's `configs` leaves out (hf on cpu)
        resolved = resolve(spec, profile, device, path, only=opts.only or None)
        if device == "cpu":
            check_footprint(resolved, path)
        return cls(resolved, path)

    def spec(self) -> dict[str, Any]:
        return self.resolved.to_json()

    def planned(self) -> list[str]:
        return [c.label for c in self.resolved.configs]

    def key(self) -> str:
        return plan_key(self.spec(), self.planned())

    def check_kept(self, kept: Mapping[str, Any], run_dir: Path, say: Say) -> None:
        now, old = json.loads(json.dumps(self.spec())), kept.get("suite_spec") or {}
        for key in ("memory_budget_gib", "search", "timeout_s", "mmap_threshold_kib"):
            if old.get(key) != now.get(key):
                raise RunError(f"{run_dir}: this run was started with {key}={old.get(key)!r}, the suite now "
                               f"says {now.get(key)!r}; use --fresh or another --run-id")
        before = {c.get("label"): c for c in old.get("configs") or ()}
        for config in now["configs"]:
            kept_config = before.get(config["label"])
            for key in ("memory_budget_gib", "timeout_s"):  # a configuration's own (None: the profile's)
                if kept_config is not None and kept_config.get(key) != config[key]:
                    raise RunError(f"{run_dir}: this run was started with {config['label']}'s {key}="
                                   f"{kept_config.get(key)!r}, the suite now says {config[key]!r}; "
                                   "use --fresh or another --run-id")

    def start(self, records: Sequence[Record], retry_failed: bool) -> tuple[int, int]:
        plan = self.resolved
        self._records = list(records)
        self._outcomes = {c.label: search_outcomes(records, plan, c, retry_failed) for c in plan.configs}
        self._probed = {c.label: dict(recorded_probes(records, plan, c, retry_failed)) for c in plan.configs}
        self._reported: set[str] = set()
        own = "".join(f", {c.label}: {plan.budget_gib_for(c):g} GiB, {plan.timeout_for(c):g} s per probe"
                      for c in plan.configs if c.memory_budget_gib is not None or c.timeout_s is not None)
        mmap = "" if plan.mmap_threshold_kib is None else f", glibc mmap threshold fixed at {plan.mmap_threshold_kib} KiB"
        self.say(f"{plan.suite} profile={plan.profile} device={plan.device} "
                 f"budget={plan.memory_budget_gib:g} GiB ({enforcement(plan.device)}){mmap}{own}")
        done = sum(isinstance(self._step(c), Done) for c in plan.configs)
        return done, len(plan.configs)

    def nothing_left(self, run_dir: Path, total: int) -> str:
        return (f"{run_dir}: every one of its {total} searches is done; its report is left as it was "
                "(--fresh starts a new run)")

    def nothing_to_run(self) -> str | None:
        return None

    def _step(self, config: CapacityConfig) -> Done | Probe:
        """The search's next step; a RunError, never a probe, for a value the run holds a record of."""
        step = next_probe(search_for(self.resolved, config), self._outcomes[config.label])
        if isinstance(step, Probe) and (record := self._probed.get(config.label, {}).get(step.value)) is not None:
            raise RunError(repeat_message(self.resolved, config, step.value, record))
        return step

    def ask(self) -> list[ProbeUnit]:
        for config in self.resolved.configs:
            step = self._step(config)
            if isinstance(step, Done):
                if config.label not in self._reported:
                    self._reported.add(config.label)
                    note = below_footprint(self._records, self.resolved, config)
                    self.say(f"  {config.label}: {done_line(step, self.resolved.over, note)}")
                continue
            return [ProbeUnit(config, step.value, self.resolved.point(config, step.value))]
        return []

    def tell(self, unit: ProbeUnit, record: Record) -> Record:
        record = finish_record(record, self.resolved, unit.config, unit.value, record.get("run_id") or self.run_id)
        self._records.append(record)
        self._outcomes[unit.config.label][unit.value] = outcome_of(record, self.device)
        self._probed.setdefault(unit.config.label, {})[unit.value] = record
        return record

    def executor(self, opts: RunOptions, run_dir: Path, say: Say) -> "ProbeExecutor":
        self.run_id = run_dir.name
        return ProbeExecutor(self.resolved, None if self.device == "cpu" else opts.memory_limit_mib)

    def one_line(self, unit: ProbeUnit, record: Record) -> str:
        return f"    {self.resolved.over}={unit.value:>7} {status_line(record)}"

    def summary(self, console: Console, records: Sequence[Record]) -> None:
        plan = self.resolved
        table = Table(title=f"capacity: longest {plan.over} under each configuration's budget")
        for col in ("configuration", "budget (GiB)", f"longest {plan.over}", "limited by", "probes"):
            table.add_column(col)
        for config in plan.configs:
            outcomes = search_outcomes(records, plan, config)
            step = next_probe(search_for(plan, config), outcomes)
            budget = f"{plan.budget_gib_for(config):g}"
            if isinstance(step, Done):
                why = step.why
                if step.longest is None and (note := below_footprint(records, plan, config)):
                    why = f"{why}: {note}"
                table.add_row(config.label, budget, str(step.longest or "-"), why, str(len(step.probes)))
            else:
                table.add_row(config.label, budget, "-", "not finished", str(len(outcomes)))
        console.print(table)


def check_footprint(plan: CapacityPlan, path: Path) -> None:
    """A CPU budget below what any probe worker holds before its model is built fits nothing: refused
    up front, naming the field."""
    for config in plan.configs:
        mib = budget_mib(plan, config)
        if mib < WORKER_FLOOR_MIB:
            name = config.label.split(" ")[0]
            where = (f"config_budget.{name}.memory_budget_gib" if config.memory_budget_gib is not None
                     else "memory_budget_gib")
            raise RunError(f"{path}: profiles.{plan.profile}.{where}={plan.budget_gib_for(config):g} ({mib:.0f} MiB): "
                           f"below the footprint of an idle probe worker on cpu (at least {WORKER_FLOOR_MIB:.0f} MiB "
                           "resident before its model is built: Python with torch loaded, typically 150-400 MiB); "
                           "no probe could fit")


class ProbeExecutor:
    """One fork server for every probe of the run, one fresh worker per probe, each under its
    configuration's budget (handed to the worker by `probe_env`; on CPU also the RSS watchdog's limit)
    and timeout (its point's timeout_s). On CUDA the watchdog keeps `host_watchdog_mib`."""

    def __init__(self, plan: CapacityPlan, host_watchdog_mib: float | None, measure: str = PROBE_MEASURE) -> None:
        self.plan = plan
        self.runner = PointRunner(host_watchdog_mib, processes=1, measure=measure)

    def run(self, units: Sequence[ProbeUnit]) -> Iterator[tuple[ProbeUnit, Record]]:
        for unit in units:
            budget = budget_mib(self.plan, unit.config)
            watchdog = budget if self.plan.device == "cpu" else None  # None: the runner's own limit
            yield unit, self.runner.run(unit.point, unit.point.timeout_s, memory_limit_mib=watchdog,
                                        env=probe_env(self.plan, unit.config))

    def close(self) -> None:
        self.runner.close()

