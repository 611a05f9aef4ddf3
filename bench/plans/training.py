"""The training plan: first the trainings a run still lacks (each resuming from its checkpoint),
then the evaluations and analyses of the models that finished (a `skipped` row, once, for those
whose model did not). A training keeps to the time budget itself, stopping at a checkpoint."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from rich.console import Console
from rich.table import Table

from bench.executors.local import PointRunner
from bench.options import RunError, RunOptions, check_cuda, check_gpu_profile, resolve_profile
from bench.plans.base import Record, Say, refuse
from bench.plans.progress import planned_progress
from bench.store import StoreError, latest_by_point, pending_ids
from bench.training.checkpoint import CheckpointDamaged, checkpoint_progress
from bench.training.plan import AnalysisPoint, EvalPoint, TrainingPlan, TrainPoint, resume_spec
from bench.training import unit_worker
from bench.training.records import analysis_record, eval_record, train_record
from bench.training.runner import Units, checkpoint_path
from bench.training.suites import training_plan
from bench.worker import RECORD_PREFIX

REMOTE = ("a training is one long unit that checkpoints into this machine's run folder; "
          "only the local executor runs trainings")


@dataclass(frozen=True)
class Unit:
    """A training, an evaluation or analysis to run, or one to record as skipped (`why`)."""

    point: TrainPoint | EvalPoint | AnalysisPoint
    why: str = ""

    def run(self, units: Units) -> Record | None:
        if self.why:
            return units.skipped(self.point, self.why)
        if isinstance(self.point, TrainPoint):
            return units.train(self.point)
        return units.evaluate(self.point) if isinstance(self.point, EvalPoint) else units.analyse(self.point)


@dataclass
class TrainingRunPlan:
    """One profile of a training suite (duplication, quality) on one device. `train=False` only
    evaluates the run's checkpoints; `reevaluate` evaluates every finished model again."""

    plan: TrainingPlan
    device: str
    reevaluate: bool = False
    train: bool = True
    checkpoints: bool = True  # the units keep to the time budget themselves
    units_word: str = "points"
    # Where the plan comes from (path, kind, profile, data), so that a fresh worker process can rebuild
    # it and run one unit; None for a plan built in code (then its units run in this process).
    source: dict[str, Any] | None = None
    _latest: dict[str, Record] = field(default_factory=dict)

    progress = staticmethod(planned_progress)

    def __post_init__(self) -> None:
        self.kind, self.suite, self.profile = self.plan.kind, self.plan.suite, self.plan.profile
        self.report_module = f"bench.{self.kind}.report"
        self._round, self.stopped, self._trained = 0, False, {}

    @classmethod
    def for_options(cls, path: Path, kind: str, opts: RunOptions, has_cuda: bool) -> "TrainingRunPlan":
        if opts.executor != "local":
            refuse(kind, f"--executor {opts.executor}", REMOTE)
        if opts.max_points is not None:
            refuse(kind, "--max-points", "its points are the suite's models and evaluations; it expands no grid")
        check_cuda(opts.device, has_cuda)
        profile = resolve_profile(opts.profile, opts.device, has_cuda)
        check_gpu_profile(profile, opts.device, has_cuda)
        device = ("cuda" if has_cuda else "cpu") if opts.device == "auto" else opts.device
        try:
            plan = training_plan(path, kind, profile, opts.data)
        except ValueError as exc:  # a bad suite, an unknown profile, a corpus refused: nothing ran
            raise RunError(str(exc)) from exc
        source = {"path": str(path), "kind": kind, "profile": profile, "data": None if opts.data is None else str(opts.data)}
        return cls(only_studies(plan, opts.only, path), device, source=source)

    def spec(self) -> dict[str, Any]:
        return self.plan.spec_json()

    def planned(self) -> list[str]:
        return self.plan.planned_ids()

    def key(self) -> str:
        return self.plan.resume_key()

    def check_kept(self, kept: Mapping[str, Any], run_dir: Path, say: Say) -> None:
        if resume_spec(kept.get("suite_spec") or {}) != resume_spec(self.spec()):
            raise StoreError(f"{run_dir / 'run.json'}: this run was started with another resolved suite (profile "
                             f"{kept.get('profile')!r}); pass another run_id (--run-id) or --fresh")

    def start(self, records: Sequence[Record], retry_failed: bool) -> tuple[int, int]:
        self._latest = latest_by_point(records)
        self._pending = set(pending_ids(records, self.planned(), retry_failed))
        total = len(self.planned())
        if not self.train or self.reevaluate:
            return 0, total  # evaluation on request: never "nothing to do"
        return total - len(self._pending), total

    def nothing_to_run(self) -> str | None:
        return None

    def nothing_left(self, run_dir: Path, total: int) -> str:
        ok = all((self._latest.get(pid) or {}).get("status") == "ok" for pid in self.planned())
        what = "an ok record" if ok else "a final record (--retry-failed reruns error and timeout)"
        return (f"{run_dir} already holds {what} of every one of its {total} points; its report is left as it "
                "was (`python -m bench report` rewrites it, --fresh starts a new run)")

    def ask(self) -> list[Unit]:
        if self.stopped:
            return []
        self._round += 1
        if self._round == 1:
            trains = [Unit(p) for p in self.plan.trains if self.train and p.point_id in self._pending]
            if trains:
                return trains
            self._round += 1
        if self._round == 2:
            return [u for p in (*self.plan.evals, *self.plan.analyses) if (u := self._after_training(p))]
        return []

    def _why_not(self, train: TrainPoint) -> str:
        """"" when the model can be evaluated, else why not."""
        if train.point_id in self._trained:
            return self._trained[train.point_id]
        try:
            if checkpoint_progress(checkpoint_path(self.run_dir, train))[1]:
                return ""
        except CheckpointDamaged as exc:  # a finished training's file damaged since: nothing to evaluate
            return f"{exc}; start a new run (--fresh) to train {train.name!r} again"
        return _did_not_finish(train, (self._latest.get(train.point_id) or {}).get("status") or "not run")

    def _after_training(self, point: EvalPoint | AnalysisPoint) -> Unit | None:
        why = "" if isinstance(point, AnalysisPoint) and not point.needs_model else self._why_not(point.train)
        latest = self._latest.get(point.point_id) or {}
        if latest.get("status") == "ok" and (not self.reevaluate or why):
            return None
        if why:
            return None if latest.get("reason") == why else Unit(point, why)  # skipped once per reason
        if point.point_id in self._pending or self.reevaluate or latest.get("status") == "skipped" \
                or self._trained.get(point.train.point_id) == "":
            return Unit(point)
        return None

    def tell(self, unit: Unit, record: Record | None) -> Record | None:
        if record is None:
            self.stopped = True
            return None
        if isinstance(unit.point, TrainPoint):
            ok = record["status"] == "ok"
            self._trained[unit.point.point_id] = "" if ok else _did_not_finish(unit.point, record["status"])
        self._latest[record["point_id"]] = record
        return record

    def executor(self, opts: RunOptions, run_dir: Path, say: Say) -> "TrainingExecutor | WorkerExecutor":
        self.run_dir = run_dir
        units = Units(self.plan, run_dir, self.device, deadline=_deadline(opts), say=lambda m: say(f"[{self.kind}] {m}"))
        if self.source is None:
            return TrainingExecutor(units)
        return WorkerExecutor(units, self.source, opts.memory_limit_mib)

    def one_line(self, unit: Unit, record: Record) -> str:
        return ""  # the units say their own lines as they go

    def summary(self, console: Console, records: Sequence[Record]) -> None:
        print_training_summary(console, self.plan, latest_by_point(records))


def _deadline(opts: RunOptions) -> float | None:
    return None if opts.time_budget_s is None else time.monotonic() + opts.time_budget_s


def _did_not_finish(point: TrainPoint, status: str) -> str:
    return f"training of {point.name!r} (seed {point.seed}) did not finish ({status})"


class TrainingExecutor:
    """Runs the units one after another, in this process (not yet in fork-server workers)."""

    def __init__(self, units: Units) -> None:
        self.units = units

    def run(self, units: Sequence[Unit]) -> Iterator[tuple[Unit, Record | None]]:
        for unit in units:
            yield unit, unit.run(self.units)

    def close(self) -> None:
        pass


class WorkerExecutor:
    """Runs each unit in a fresh worker process of one fork server (`bench.training.unit_worker`), under
    the host-memory watchdog: a worker the kernel or the watchdog kills is the unit's `error` or
    `oom` row, and the run goes on (a training resumes from its checkpoint on a rerun)."""

    def __init__(self, units: Units, source: Mapping[str, Any], memory_limit_mib: float | None) -> None:
        self.units, self.source = units, dict(source)
        self.runner = PointRunner(memory_limit_mib, processes=1, measure=unit_worker.MEASURE)

    def run(self, units: Sequence[Unit]) -> Iterator[tuple[Unit, Record | None]]:
        for unit in units:
            if unit.why:
                yield unit, self.units.skipped(unit.point, unit.why)
                continue
            left = None if self.units.deadline is None else max(0.0, self.units.deadline - time.monotonic())
            req = unit_worker.request(self.source, unit.point.point_id, self.units.run_dir, self.units.device, left)
            record, _ = self.runner.run_request({"unit": req}, math.inf, self._fail(unit))
            for line in self.runner.last_stdout.splitlines():
                if not line.startswith(RECORD_PREFIX):
                    self.units.say(line)
            if record.get("status") != unit_worker.STOPPED:
                self.units.say(f"{unit.point.point_id}: {record['status']} {record.get('reason') or ''}".rstrip())
            yield unit, None if record.get("status") == unit_worker.STOPPED else record

    def _fail(self, unit: Unit) -> Callable[..., Record]:
        """The row of a unit whose worker left no record (killed, crashed, silent)."""
        def fail(status: str, reason: str, effective: Mapping[str, Any] | None = None, wall_s: float = 0.0,
                 traceback: str | None = None) -> Record:
            point, u = unit.point, self.units
            if isinstance(point, TrainPoint):
                record = train_record(u.plan, u.run_id, point, u.device, None, status, reason, wall_s)
            elif isinstance(point, EvalPoint):
                record = eval_record(u.plan, u.run_id, point, u.device, None, status, reason, wall_s,
                                     u.plan.task_of(point.train).eval_batch_size)
            else:
                record = analysis_record(u.plan, u.run_id, point, u.device, None, status, reason, wall_s)
            record["effective"] = {**(record.get("effective") or {}), **(effective or {})}
            record["traceback"] = traceback
            return record
        return fail

    def close(self) -> None:
        self.runner.close()


def only_studies(plan: TrainingPlan, only: Sequence[str], path: Path) -> TrainingPlan:
    """The plan cut to the points of the `--only` studies (all when none are named)."""
    if not only:
        return plan
    known = list(dict.fromkeys(s for p in (*plan.trains, *plan.evals, *plan.analyses) for s in p.studies))
    unknown = sorted(set(only) - set(known))
    if unknown:
        raise RunError(f"--only {', '.join(unknown)}: no such study in {path} (has: {', '.join(known)})")
    keep = lambda p: bool(set(p.studies) & set(only))  # noqa: E731
    evals = tuple(p for p in plan.evals if keep(p))
    analyses = tuple(p for p in plan.analyses if keep(p))
    needed = {p.train.point_id for p in (*evals, *analyses)}
    trains = tuple(p for p in plan.trains if keep(p) or p.point_id in needed)
    return dataclasses.replace(plan, trains=trains, evals=evals, analyses=analyses)


def print_training_summary(console: Console, plan: TrainingPlan, latest: Mapping[str, Record]) -> None:
    """One row per trained model: status, step time, activation memory, and its evaluations'
    headline figure (bpb or accuracy) per setting; then the count of each status."""
    table = Table(title=f"{plan.suite}: trainings and evaluations")
    for col in ("model", "seed", "status", "step ms", "activation MiB", "evaluations"):
        table.add_column(col, overflow="fold")
    counts: dict[str, int] = {}
    for rec in latest.values():
        counts[rec["status"]] = counts.get(rec["status"], 0) + 1
    for point in plan.trains:
        rec = latest.get(point.point_id) or {}
        metrics = rec.get("metrics") or {}
        evals = []
        for ev in (e for e in plan.evals if e.train.point_id == point.point_id):
            er = latest.get(ev.point_id) or {}
            em = er.get("metrics") or {}
            head = next((k for k in ("bpb", "accuracy") if em.get(k) is not None), None)
            evals.append(f"{ev.setting}: {em[head]:.4g} {head}" if head else f"{ev.setting}: {er.get('status', 'not run')}")
        step, mem = metrics.get("step_ms_median"), metrics.get("saved_for_backward_mib")
        table.add_row(point.name, str(point.seed), rec.get("status", "not run"),
                      "-" if step is None else f"{step:.4g}", "-" if mem is None else f"{mem:.3g}", "; ".join(evals))
    console.print(table)
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
