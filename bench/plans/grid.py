"""The grid plan: a suite's profile expanded into points, all handed out at once; a point skipped by
the suite's rules is recorded without running, the rest go to the chosen executor."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from rich.console import Console

from bench.environment import portable_path
from bench.executors.base import Executor
from bench.executors.factory import make_executor
from bench.grid import PlannedPoint
from bench.options import RunError, RunOptions, check_cuda, check_gpu_profile, resolve_profile
from bench.plans.base import Record, Say
from bench.plans.progress import planned_progress
from bench.plans.grid_summary import one_line, print_summary
from bench.store import latest_by_point, make_record, pending_ids, plan_key, same_spec
from bench.suite import DEFAULT_MAX_POINTS, Suite


@dataclass
class GridPlan:
    """One profile of a grid suite: its points, run once each."""

    suite_: Suite
    profile: str
    device: str  # the points' device, or 'mixed'
    points: tuple[PlannedPoint, ...]
    kind: str = "grid"
    report_module: str = "bench.report"
    checkpoints: bool = False  # the lifecycle keeps the time budget between points
    units_word: str = "points"

    def __post_init__(self) -> None:
        self.suite = self.suite_.name
        self._spec = {**self.suite_.resolved_spec(self.profile), "path": portable_path(self.suite_.path)}
        self._todo: list[PlannedPoint] | None = None
        self._latest: dict[str, Record] = {}

    @classmethod
    def for_options(cls, suite: Suite, opts: RunOptions, has_cuda: bool) -> "GridPlan":
        """Expand the suite for the resolved profile and device, keeping only `--only` studies."""
        check_cuda(opts.device, has_cuda)
        profile = resolve_profile(opts.profile, opts.device, has_cuda)
        check_gpu_profile(profile, opts.device, has_cuda)
        points = suite.expand(profile, auto_device="cuda" if has_cuda else "cpu",
                              force_device=None if opts.device == "auto" else opts.device,
                              max_points=DEFAULT_MAX_POINTS if opts.max_points is None else opts.max_points)
        if opts.only:
            unknown = set(opts.only) - set(suite.spec.studies)
            if unknown:
                raise RunError(f"--only {', '.join(sorted(unknown))}: no such study in {suite.path} "
                               f"(has: {', '.join(suite.spec.studies)})")
            points = [p for p in points if set(p.point.studies) & set(opts.only)]
        devices = sorted({p.point.device for p in points})
        if "cuda" in devices and not has_cuda:
            raise RunError(f"{suite.path}: profile '{profile}' has points on device 'cuda', "
                           "but CUDA is not available; use --profile cpu or --device cpu")
        return cls(suite, profile, devices[0] if len(devices) == 1 else "mixed", tuple(points))

    progress = staticmethod(planned_progress)

    def spec(self) -> dict[str, Any]:
        return self._spec

    def planned(self) -> list[str]:
        return [p.point.point_id for p in self.points]

    def key(self) -> str:
        return plan_key(self._spec, self.planned())

    def check_kept(self, kept: Mapping[str, Any], run_dir: Path, say: Say) -> None:
        if not same_spec(kept.get("suite_spec") or {}, self._spec):
            say(f"{self._spec['path']} changed since this run began; run.json keeps the original suite_spec "
                "(use --fresh for a run that describes the new one)")

    def start(self, records: Sequence[Record], retry_failed: bool) -> tuple[int, int]:
        by_id = {p.point.point_id: p for p in self.points}
        self._todo = [by_id[pid] for pid in pending_ids(records, list(by_id), retry_failed)]
        self._latest = latest_by_point(records)
        return len(self.points) - len(self._todo), len(self.points)

    def nothing_left(self, run_dir: Path, total: int) -> str:
        return (f"{run_dir} already holds a record of every one of its {total} points; its report is left as it "
                "was (`python -m bench report` rewrites it, --fresh starts a new run)")

    def nothing_to_run(self) -> str | None:
        """Why this run measures nothing although points are left (every one is skipped), or None."""
        todo = self._todo or []
        if todo and all(p.skip_reason is not None for p in todo):
            return f"every point left ({len(todo)}) is skipped by the suite's rules"
        return None

    def ask(self) -> list[PlannedPoint]:
        todo, self._todo = self._todo or [], []
        return todo

    def tell(self, unit: PlannedPoint, record: Record) -> Record:
        self._latest[record["point_id"]] = record
        return record

    def executor(self, opts: RunOptions, run_dir: Path, say: Say) -> "GridExecutor":
        measurement = self.suite_.measurement(self.profile)
        return GridExecutor(lambda: make_executor(opts, measurement["timeout_s"], run_dir, say,
                                                  measurement["processes"]))

    def summary(self, console: Console, records: Sequence[Record]) -> None:
        print_summary(console, self.points, latest_by_point(records))

    def one_line(self, unit: Any, record: Record) -> str:
        return one_line(record)


class GridExecutor:
    """Skipped points become their records at once; the rest go to the executor `make()` builds,
    only when there is one to run (a Ray executor connects to its cluster when built)."""

    def __init__(self, make: Callable[[], Executor]) -> None:
        self.make = make

    def run(self, units: Sequence[PlannedPoint]) -> Iterator[tuple[PlannedPoint, Record]]:
        for p in units:
            if p.skip_reason is not None:
                yield p, make_record(p.point, "skipped", p.skip_reason)
        to_run = {p.point.point_id: p for p in units if p.skip_reason is None}
        if to_run:
            for record in self.make().run([p.point for p in to_run.values()]):
                yield to_run.get(record.get("point_id")), record

    def close(self) -> None:
        pass
