"""One command for a GPU: every suite's profile (memory, speed, lsh_vs_full, peers, capacity,
duplication) run in slices that fit a short machine lease, each resuming where the last stopped.

A slice launches work until `slice_s` is spent (a point already started finishes, bounded by its
timeout), then prints what remains; the same command again continues. `--dry-run` surveys the run
directories and lists the slices and points it would run, on any machine (no CUDA needed).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from bench.capacity.planner import Done, next_probe
from bench.capacity.runner import search_outcomes
from bench.capacity.searches import search_for
from bench.capacity.spec import load_capacity_suite, resolve
from bench.lifecycle import run_suite
from bench.options import RunOptions
from bench.rundir import continuing_run
from bench.store import FINISHED, RECORDS, latest_by_point, read_records, runs_dir
from bench.suite import load_suite, resolve_suite_path, suite_kind
from bench.training.suites import training_plan

SUITES = ("memory", "speed", "lsh_vs_full", "peers", "capacity", "duplication", "quality")
SLICE_S = 480.0  # launches stop after 8 minutes, so the last point ends within the ninth
MIN_START_S = 20.0  # a suite is not begun with less than this left in the slice
DEFAULT_ITEM_S = 20.0  # a point's or probe's time before this run has recorded any


@dataclass(frozen=True)
class Work:
    """What one suite still has to do in its run directory: items in run order, each a short label,
    and a per-item time estimate (median recorded wall_s, else DEFAULT_ITEM_S)."""

    suite: str
    kind: str
    run_dir: Path
    items: tuple[str, ...]
    done: int
    item_s: float
    note: str = ""


def _estimate(records: Sequence[dict[str, Any]]) -> float:
    walls = [float(r["wall_s"]) for r in records if r.get("wall_s")]
    return statistics.median(walls) if walls else DEFAULT_ITEM_S


def _run_dir(suite: str, profile: str, device: str, results_root: Path) -> Path:
    """The run a slice would continue, or where a new one would go (nothing is created here)."""

    found = continuing_run(suite, profile, device, results_root)
    return found if found is not None else runs_dir(Path(results_root), suite) / "(new run)"


def survey_suite(name: str, profile: str, results_root: Path) -> Work:
    """The remaining work of one suite for a profile, read from the run directory a run would use
    (the gpu profile's points on cuda, the cpu profile's on cpu); nothing runs, no CUDA needed."""

    path = resolve_suite_path(name)
    kind = suite_kind(path)
    device = "cuda" if profile == "gpu" else "cpu"
    return SURVEYS[kind](path, kind, profile, device, results_root)


def _survey_grid(path: Path, kind: str, profile: str, device: str, results_root: Path) -> Work:
    suite = load_suite(path, trial_expand=False)  # expanded once, below, for this profile only
    run_dir = _run_dir(suite.name, profile, device, results_root)
    records = read_records(run_dir / RECORDS)
    points = suite.expand(profile, auto_device=device)
    latest = latest_by_point(records)
    todo = [p for p in points if (latest.get(p.point.point_id) or {}).get("status") not in FINISHED]
    items = tuple(f"{p.point.point_id} {p.point.workload} {p.point.model.get('attention')} "
                  f"seq_len={p.point.seq_len} batch={p.point.batch_size}"
                  + (" (recorded as skipped)" if p.skip_reason else "") for p in todo)
    return Work(suite.name, kind, run_dir, items, len(points) - len(todo), _estimate(records))


def _survey_capacity(path: Path, kind: str, profile: str, device: str, results_root: Path) -> Work:

    path, spec = load_capacity_suite(path)
    plan = resolve(spec, profile, device, path)
    run_dir = _run_dir(plan.suite, profile, device, results_root)
    records = read_records(run_dir / RECORDS)
    items, done = [], 0
    for config in plan.configs:
        search = search_for(plan, config)
        step = next_probe(search, search_outcomes(records, plan, config))
        if isinstance(step, Done):
            done += 1
            continue
        bound = math.ceil(math.log2(search.max_value / search.first)) + math.ceil(-math.log2(search.resolution)) + 1
        items.append(f"{config.label}: next {plan.over}={step.value} (at most {bound} probes in all)")
    return Work(spec.name, "capacity", run_dir, tuple(items), done, _estimate(records) * 6,
                note="one item = one configuration's search; estimate ~6 probes each")


def _survey_training(path: Path, kind: str, profile: str, device: str, results_root: Path) -> Work:
    """What a training suite (duplication, quality) has left: trainings, evaluations and analyses."""

    plan = training_plan(path, kind, profile)
    run_dir = _run_dir(plan.suite, plan.profile, device, results_root)
    ok = {pid for pid, r in latest_by_point(read_records(run_dir / RECORDS)).items() if r["status"] == "ok"}
    items = [f"train {p.point_id} ({p.settings.steps} steps, checkpointed)" for p in plan.trains if p.point_id not in ok]
    items += [f"eval {p.point_id}" for p in plan.evals if p.point_id not in ok]
    items += [f"analysis {p.point_id}" for p in plan.analyses if p.point_id not in ok]
    total = len(plan.planned_ids())
    return Work(plan.suite, kind, run_dir, tuple(items), total - len(items), SLICE_S,
                note="training resumes from its checkpoint in every slice; estimate: a whole slice per item")


SURVEYS = {"grid": _survey_grid, "capacity": _survey_capacity, "duplication": _survey_training,
           "quality": _survey_training}


def plan_slices(works: Sequence[Work], slice_s: float) -> list[list[tuple[str, list[str]]]]:
    """Pack the remaining items, in suite order, into slices of `slice_s` by their estimates
    (an item longer than a slice gets one of its own). Pure."""
    slices: list[list[tuple[str, list[str]]]] = []
    used = slice_s  # forces a first slice
    for work in works:
        for item in work.items:
            if used + work.item_s > slice_s and not (used == 0):
                slices.append([])
                used = 0.0
            current = slices[-1]
            if not current or current[-1][0] != work.suite:
                current.append((work.suite, []))
            current[-1][1].append(item)
            used += work.item_s
    return slices


def print_remaining(works: Sequence[Work], console: Console, profile: str) -> int:
    """A table of what each suite has left; returns the number of items left."""
    table = Table(title=f"campaign, profile {profile}: what remains")
    for col in ("suite", "kind", "done", "left", "run dir"):
        table.add_column(col, overflow="fold")
    for w in works:
        table.add_row(w.suite, w.kind, str(w.done), str(len(w.items)), str(w.run_dir))
    console.print(table)
    return sum(len(w.items) for w in works)


def dry_run(suites: Sequence[str], profile: str, results_root: Path, slice_s: float, console: Console) -> int:
    """List the slices and points a campaign would run (nothing runs; no CUDA needed)."""
    works = [survey_suite(s, profile, results_root) for s in suites]
    left = print_remaining(works, console, profile)
    slices = plan_slices(works, slice_s)
    console.print(f"{left} items left; about {len(slices)} slice(s) of {slice_s:g} s by the estimates "
                  f"(median recorded time per point, else {DEFAULT_ITEM_S:g} s)")
    for w in works:
        if w.note:
            console.print(f"  {w.suite}: {w.note}")
    for number, chunks in enumerate(slices, start=1):
        console.print(f"[bold]slice {number}[/]")
        for suite, items in chunks:
            console.print(f"  {suite}: {len(items)} item(s)")
            for item in items:
                console.print(f"    {item}", markup=False)
    return 0


def run_campaign(suites: Sequence[str], profile: str, results_root: Path, slice_s: float,
                 console: Console, base_opts: Any = None) -> int:
    """Run one slice: each suite in order with what is left of `slice_s` as its time budget; then
    print what remains. Returns the number of items left (0: the campaign is complete)."""

    opts = base_opts or RunOptions(profile=profile, results_root=results_root)
    deadline = time.monotonic() + slice_s
    for name in suites:
        work = survey_suite(name, profile, results_root)
        if not work.items:
            console.print(f"[green]{name}: complete[/]")
            continue
        left = deadline - time.monotonic()
        if left < MIN_START_S:
            console.print(f"[yellow]slice spent before {name}[/]")
            break
        console.print(f"[bold]{name}[/]: {len(work.items)} item(s) left, {left:.0f} s of this slice")
        run_suite(name, replace(opts, time_budget_s=left), console)
    works = [survey_suite(s, profile, results_root) for s in suites]
    left = print_remaining(works, console, profile)
    if left:
        console.print(f"[yellow]{left} items left: run the same command again to continue[/]")
    else:
        console.print("[green]campaign complete[/]")
    return left
