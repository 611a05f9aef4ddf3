"""The runner: plan a suite's points for a profile and device, skip what the run directory already
holds, hand the rest to an executor, append every record as it arrives, then summarise and report.
"""
from __future__ import annotations

import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.executors.base import Executor, Record
from bench.grid import PlannedPoint, point_params
from bench.store import RunStore, default_run_id, fresh_run_id, latest_by_point, machine_run_id, make_record, now_iso
from bench.suite import Suite, SuiteError, load_suite, resolve_suite_path, suite_kind

# Main figures in the summary table: the first metric present wins.
TIME_METRICS = ("step_ms_median", "fwd_bwd_ms_median", "fwd_ms_median")
MEMORY_METRICS = ("peak_alloc_mib", "rss_delta_mib", "peak_rss_mib")
STATUS_STYLE = {"ok": "green", "oom": "yellow", "timeout": "magenta", "error": "red", "skipped": "dim"}


class RunError(RuntimeError):
    """The run cannot start as asked (no CUDA, unknown study, ...)."""


@dataclass(frozen=True)
class RunOptions:
    """What `python -m bench run` was asked for."""

    profile: str = "auto"  # auto | cpu | gpu
    device: str = "auto"  # auto | cpu | cuda
    run_id: str | None = None
    fresh: bool = False
    retry_failed: bool = False
    results_root: Path = Path("results")
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    wandb: bool = False
    only: tuple[str, ...] = ()
    memory_limit_mib: float | None = None  # local executor's watchdog; None = 75% of free RAM
    time_budget_s: float | None = None  # stop launching points after this long; a rerun resumes


@dataclass(frozen=True)
class Plan:
    """The resolved profile and device and the points of this run."""

    profile: str
    device: str  # the points' device, or 'mixed'
    points: tuple[PlannedPoint, ...]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_profile(profile: str, device: str, has_cuda: bool) -> str:
    """`auto` follows an explicit device, else whether CUDA is available."""
    if profile != "auto":
        return profile
    if device != "auto":
        return "gpu" if device == "cuda" else "cpu"
    return "gpu" if has_cuda else "cpu"


def plan_run(suite: Suite, opts: RunOptions, has_cuda: bool) -> Plan:
    """Expand the suite for the resolved profile and device, keeping only `--only` studies."""
    if opts.device == "cuda" and not has_cuda:
        raise RunError("--device cuda: CUDA is not available on this machine")
    profile = resolve_profile(opts.profile, opts.device, has_cuda)
    points = suite.expand(
        profile,
        auto_device="cuda" if has_cuda else "cpu",
        force_device=None if opts.device == "auto" else opts.device,
    )
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
    return Plan(profile=profile, device=devices[0] if len(devices) == 1 else "mixed", points=tuple(points))


def make_executor(opts: RunOptions, plan: Plan, timeout_s: float) -> Executor:
    if opts.executor == "ray":
        from bench.executors.ray_executor import RayExecutor

        num_gpus = 1.0 if plan.device in ("cuda", "mixed") else 0.0
        extra = {} if opts.memory_limit_mib is None else {"memory_limit_mib": int(opts.memory_limit_mib)}
        return RayExecutor(address=opts.ray_address, num_gpus=num_gpus, timeout_s=timeout_s, **extra)
    if opts.executor != "local":
        raise RunError(f"--executor {opts.executor!r}: expected 'local' or 'ray'")
    from bench.executors.local import LocalExecutor

    return LocalExecutor(timeout_s=None, memory_limit_mib=opts.memory_limit_mib)


def _run_meta(suite: Suite, plan: Plan, run_id: str) -> dict[str, Any]:
    from bench.environment import capture_environment

    return {
        "suite": suite.name,
        "profile": plan.profile,
        "run_id": run_id,
        "device": plan.device,
        "created_at": now_iso(),
        "environment": capture_environment(plan.device if plan.device != "mixed" else "cuda"),
        "suite_spec": suite.resolved_spec(plan.profile),
    }


def _device_name(device: str) -> str | None:
    from bench.environment import capture_environment

    return capture_environment(device if device != "mixed" else "cuda")["device_name"]


def run_grid_suite(suite: Suite, opts: RunOptions, console: Console | None = None) -> Path:
    """Run (or resume) one grid suite; returns the run directory."""
    console = console or Console()
    plan = plan_run(suite, opts, cuda_available())
    if opts.run_id:
        run_id = opts.run_id
    elif opts.fresh:
        run_id = fresh_run_id(plan.profile, plan.device)
    else:
        run_id = default_run_id(plan.profile, plan.device)
        here = machine_run_id(Path(opts.results_root) / suite.name, run_id, _device_name(plan.device))
        if here != run_id:
            console.print(f"[yellow]{suite.name}/{run_id} was measured on another machine; "
                          f"this one writes to {suite.name}/{here}[/]")
            run_id = here
    store = RunStore(Path(opts.results_root) / suite.name / run_id)
    if store.torn_fragment is not None:
        console.print(f"[yellow]records.jsonl ended in a torn line ({len(store.torn_fragment)} bytes); "
                      f"moved it to records.torn, that point runs again[/]")
    meta = _run_meta(suite, plan, run_id)
    kept = store.write_run_json(meta)
    if json.loads(json.dumps(kept["suite_spec"])) != json.loads(json.dumps(meta["suite_spec"])):
        console.print(f"[yellow]{suite.path} changed since this run began; run.json keeps the original "
                      f"suite_spec (use --fresh for a run that describes the new one)[/]")

    by_id = {p.point.point_id: p for p in plan.points}
    todo = [by_id[pid] for pid in store.pending(list(by_id), retry_failed=opts.retry_failed)]
    resumed = len(plan.points) - len(todo)
    console.print(f"[bold]{suite.name}[/] profile={plan.profile} device={plan.device} -> {store.run_dir}")
    console.print(f"{len(plan.points)} points: {resumed} already recorded, {len(todo)} to do")

    logger = _live_logger(store.run_dir) if opts.wandb else None
    try:
        try:
            _execute(todo, store, run_id, opts, plan, suite, console, logger)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; run the same command again to resume[/]")
            raise
        print_summary(console, plan.points, latest_by_point(store.records()))
        write_report(store.run_dir, console)
    finally:
        if logger is not None:  # after the report, so its plots go to W&B too
            logger.finish()
    return store.run_dir


def _execute(todo: Sequence[PlannedPoint], store: RunStore, run_id: str, opts: RunOptions,
             plan: Plan, suite: Suite, console: Console, logger: Any) -> None:
    skipped = [p for p in todo if p.skip_reason is not None]
    to_run = [p.point for p in todo if p.skip_reason is None]

    def keep(record: Record, progress: Progress, task: Any) -> None:
        record["run_id"] = run_id
        store.append(record)
        if logger is not None:
            logger.log_record(record)
        progress.advance(task)
        progress.console.print(_one_line(record))

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(suite.name, total=len(todo))
        for p in skipped:
            keep(make_record(p.point, "skipped", p.skip_reason), progress, task)
        if to_run:
            timeout_s = suite.measurement(plan.profile)["timeout_s"]
            started = time.monotonic()
            for record in make_executor(opts, plan, timeout_s).run(to_run):
                keep(record, progress, task)
                if opts.time_budget_s is not None and time.monotonic() - started > opts.time_budget_s:
                    # Leaving the loop closes the executor's generator: no further point starts.
                    progress.console.print(f"[yellow]time budget of {opts.time_budget_s:g} s spent; "
                                           "run the same command again to resume[/]")
                    break


def _live_logger(run_dir: Path) -> Any:
    from bench.publish import LiveLogger

    return LiveLogger(run_dir)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _first_metric(metrics: dict[str, Any], names: Iterable[str]) -> Any:
    return next((metrics[n] for n in names if metrics.get(n) is not None), None)


def _one_line(record: Record) -> str:
    status = record["status"]
    metrics = record.get("metrics") or {}
    params = record.get("params") or {}
    what = " ".join(f"{k}={params[k]}" for k in ("workload", "attention", "seq_len", "batch_size") if k in params)
    figures = (f"time={_fmt(_first_metric(metrics, TIME_METRICS))} ms "
               f"mem={_fmt(_first_metric(metrics, MEMORY_METRICS))} MiB") if status == "ok" else (record.get("reason") or "")
    return f"[{STATUS_STYLE.get(status, 'white')}]{status:>7}[/] {record['point_id']} {escape(what)} {escape(figures[:120])}"


def varying_params(points: Sequence[PlannedPoint]) -> list[str]:
    """The params that take more than one value among the points that have them (a field
    dropped by canonicalisation, e.g. n_hashes for full attention, does not count)."""
    rows = [point_params(p.point) for p in points]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [k for k in keys if len({repr(row[k]) for row in rows if k in row}) > 1]


def print_summary(console: Console, points: Sequence[PlannedPoint], records: dict[str, Record]) -> None:
    """One row per point of this run: what varies, status, main time and memory figures."""
    keys = varying_params(points)
    table = Table(title="summary", caption=f"time: first of {', '.join(TIME_METRICS)}; "
                                           f"memory: first of {', '.join(MEMORY_METRICS)}")
    table.add_column("point_id", no_wrap=True)
    table.add_column("studies", overflow="fold")
    for col in (*keys, "status", "time ms", "memory MiB"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason", overflow="ellipsis", max_width=60)
    counts: dict[str, int] = {}
    for p in points:
        record = records.get(p.point.point_id)
        status = record["status"] if record else "not run"
        counts[status] = counts.get(status, 0) + 1
        metrics = (record or {}).get("metrics") or {}
        params = point_params(p.point)
        table.add_row(
            p.point.point_id, ",".join(p.point.studies), *(_fmt(params.get(k)) for k in keys),
            f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]",
            _fmt(_first_metric(metrics, TIME_METRICS)), _fmt(_first_metric(metrics, MEMORY_METRICS)),
            escape((record or {}).get("reason") or ""),
        )
    console.print(table)
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def _optional(module: str, attr: str, console: Console) -> Callable[..., Any] | None:
    """A function from a module that may not exist yet; None (and a note) if it does not."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            console.print(f"{module} is not available; skipping ({exc})", style="yellow", markup=False)
            return None
        raise


def write_report(run_dir: Path, console: Console, module: str = "bench.report") -> Path | None:
    """Write the run's report if the report module exists; a failure is shown, not fatal."""
    write = _optional(module, "write_report", console)
    if write is None:
        return None
    try:
        path = write(run_dir)
    except Exception as exc:  # the records are safe; the report can be rebuilt with `bench report`
        console.print(f"report failed: {type(exc).__name__}: {exc}\n"
                      f"rebuild it with: python -m bench report {run_dir}", style="red", markup=False)
        return None
    console.print(f"report: {path}")
    return path


def run(suite_ref: str | Path, opts: RunOptions, console: Console | None = None) -> Path:
    """Run a suite by name or path, dispatching `kind: duplication` and `kind: capacity` suites to their own runners."""
    console = console or Console()
    path = resolve_suite_path(suite_ref)
    kind = suite_kind(path)
    if kind == "duplication":
        return _run_duplication(path, opts, console)
    if kind == "capacity":
        from bench.capacity.runner import run_capacity_suite

        return run_capacity_suite(path, opts, console)
    if kind != "grid":
        raise SuiteError(f"{path}: kind: unknown suite kind {kind!r}; expected 'grid', 'duplication' or 'capacity'")
    return run_grid_suite(load_suite(path), opts, console)


def _run_duplication(path: Path, opts: RunOptions, console: Console) -> Path:
    from bench.duplication.runner import run_suite

    ignored = [flag for flag, on in (("--fresh", opts.fresh), ("--retry-failed", opts.retry_failed),
                                     ("--only", bool(opts.only)), ("--wandb", opts.wandb),
                                     ("--executor ray", opts.executor != "local")) if on]
    if ignored:
        console.print(f"[yellow]{path}: duplication suites ignore {', '.join(ignored)}[/]")
    has_cuda = cuda_available()
    if opts.device == "cuda" and not has_cuda:
        raise RunError("--device cuda: CUDA is not available on this machine")
    try:
        run_dir = run_suite(
            path,
            resolve_profile(opts.profile, opts.device, has_cuda),
            None if opts.device == "auto" else opts.device,
            Path(opts.results_root),
            opts.run_id,
            time_budget_s=opts.time_budget_s,
        )
    except ValueError as exc:  # its refusals (bad suite, gpu profile without CUDA) are ValueErrors
        raise RunError(str(exc)) from exc
    write_report(run_dir, console, module="bench.duplication.report")
    return run_dir
