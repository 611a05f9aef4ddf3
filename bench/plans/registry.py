"""A suite file to its kind's plan: `kind:` picks the plan (grid when absent)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from bench import options
from bench.options import RunOptions
from bench.plans.base import Plan
from bench.plans.capacity import CapacitySearchPlan
from bench.plans.grid import GridPlan
from bench.plans.training import TrainingRunPlan
from bench.suite import SuiteError, load_suite, resolve_suite_path, suite_kind


def _grid(path: Path, opts: RunOptions, has_cuda: bool) -> Plan:
    if opts.data is not None:
        raise options.RunError(f"--data {opts.data}: only quality suites read a corpus; {path} is a grid suite")
    # Not trial-expanded: the plan expands the chosen profile once, after counting its points.
    return GridPlan.for_options(load_suite(path, trial_expand=False), opts, has_cuda)


def _training(kind: str) -> Callable[[Path, RunOptions, bool], Plan]:
    return lambda path, opts, has_cuda: TrainingRunPlan.for_options(path, kind, opts, has_cuda)


PLANS: dict[str, Callable[[Path, RunOptions, bool], Plan]] = {
    "grid": _grid,
    "capacity": CapacitySearchPlan.for_options,
    "duplication": _training("duplication"),
    "quality": _training("quality"),
}


def plan_suite(ref: str | Path, opts: RunOptions) -> Plan:
    """Load and validate a suite (by name or path) and plan it for the options; SuiteError or
    RunError naming the field or flag on any problem, before anything runs."""
    path = resolve_suite_path(ref)
    kind = suite_kind(path)
    if kind not in PLANS:
        raise SuiteError(f"{path}: kind: unknown suite kind {kind!r}; expected one of {', '.join(PLANS)}")
    return PLANS[kind](path, opts, options.cuda_available())
