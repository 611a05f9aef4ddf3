"""The runner: plan a suite's points for a profile and device, choose the run folder (a new run, or
this host's unfinished one), hand what it lacks to an executor, append every record as it arrives,
then summarise, report and compare with the committed reference.
"""
from __future__ import annotations

import dataclasses
import importlib
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
from bench.reference import compare_with_reference
from bench.rundir import choose_run_dir
from bench.store import RunLock, RunStore, latest_by_point, make_record, now_iso, plan_key, same_spec
from bench.training.suites import TRAINING_KINDS
from bench.suite import DEFAULT_MAX_POINTS, Suite, SuiteError, load_suite, resolve_suite_path, suite_kind

# Main figures in the summary table: the first metric present wins.
TIME_METRICS = ("step_ms_median", "fwd_bwd_ms_median", "fwd_ms_median")
MEMORY_METRICS = ("peak_alloc_mib", "rss_delta_mib", "peak_rss_mib")
STATUS_STYLE = {"ok": "green", "oom": "yellow", "timeout": "magenta", "error": "red", "skipped": "dim"}


class RunError(RuntimeError):
    """The run cannot start as asked (no CUDA, unknown study, ...)."""


class ReportFailed(RuntimeError):
    """Every record was written, but the report could not be: the run is kept, the command fails."""


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's preemption, `timeout`, a lease ending): stop like Ctrl-C."""


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@dataclass(frozen=True)
class RunOptions:
    """What `python -m bench run` was asked for."""

    profile: str = "auto"  # auto | cpu | gpu
    device: str = "auto"  # auto | cpu | cuda
    run_id: str | None = None  # continue or create this run (this host's only)
    fresh: bool = False  # always a new run
    retry_failed: bool = False
    results_root: Path = Path("results")
    executor: str = "local"  # local | ray | submitit
    ray_address: str | None = None
    ray_connect_timeout_s: float = 30.0
    submitit_cluster: str = "auto"  # auto (Slurm when sbatch exists, else local) | slurm | local
    slurm_partition: str | None = None
    slurm_time_min: int | None = None  # default: the point timeout plus a grace
    slurm_gpus_per_task: int = 1  # for CUDA points; CPU points ask for none
    slurm_cpus_per_task: int | None = None
    slurm_args: tuple[tuple[str, str], ...] = ()  # extra sbatch options (KEY, VALUE)
    wandb: bool = False
    only: tuple[str, ...] = ()
    memory_limit_mib: float | None = None  # local executor's watchdog; None = 75% of free RAM
    time_budget_s: float | None = None  # stop launching points after this long; a rerun resumes
    max_points: int = DEFAULT_MAX_POINTS  # refuse a profile with more grid points, counted before expanding
    data: Path | None = None  # quality suites: enwik8 at this path instead of the standard library's source


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


def check_gpu_profile(profile: str, device: str, has_cuda: bool) -> None:
    """The paper-scale gpu profile runs on a CPU only when asked for with an explicit `--device cpu`."""
    if profile == "gpu" and not has_cuda and device != "cpu":
        raise RunError("--profile gpu: CUDA is not available on this machine, and the gpu profile is paper "
                       "scale (bf16, lengths to 65536); use --profile cpu, or add --device cpu to insist")


def plan_run(suite: Suite, opts: RunOptions, has_cuda: bool) -> Plan:
    """Expand the suite for the resolved profile and device, keeping only `--only` studies."""
    if opts.device == "cuda" and not has_cuda:
        raise RunError("--device cuda: CUDA is not available on this machine")
    profile = resolve_profile(opts.profile, opts.device, has_cuda)
    check_gpu_profile(profile, opts.device, has_cuda)
    points = suite.expand(
        profile,
        auto_device="cuda" if has_cuda else "cpu",
        force_device=None if opts.device == "auto" else opts.device,
        max_points=opts.max_points,
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


def make_executor(opts: RunOptions, plan: Plan, timeout_s: float, run_dir: Path | None = None,
                  log: Callable[[str], None] | None = None, processes: int = 3) -> Executor:
    extra = {} if opts.memory_limit_mib is None else {"memory_limit_mib": int(opts.memory_limit_mib)}
    if opts.executor == "ray":
        from bench.executors.ray_executor import RayExecutor

        return RayExecutor(address=opts.ray_address, timeout_s=timeout_s,
                           connect_timeout_s=opts.ray_connect_timeout_s, log=log, **extra)
    if opts.executor == "submitit":
        from bench.executors.submitit_executor import SubmititExecutor, slurm_options

        return SubmititExecutor(
            Path(run_dir or opts.results_root) / "submitit", timeout_s,
            cluster=None if opts.submitit_cluster == "auto" else opts.submitit_cluster,
            slurm=slurm_options(opts.slurm_partition, opts.slurm_time_min, opts.slurm_cpus_per_task,
                                opts.slurm_args),
            num_gpus=opts.slurm_gpus_per_task, **extra,
        )
    if opts.executor != "local":
        raise RunError(f"--executor {opts.executor!r}: expected 'local', 'ray' or 'submitit'")
    from bench.executors.local import LocalExecutor

    return LocalExecutor(timeout_s=None, memory_limit_mib=opts.memory_limit_mib, processes=processes)


def _run_meta(suite: Suite, plan: Plan, run_id: str, spec: dict[str, Any], key: str) -> dict[str, Any]:
    from bench.environment import capture_environment, host_id

    return {
        "suite": suite.name,
        "profile": plan.profile,
        "run_id": run_id,
        "device": plan.device,
        "host_id": host_id(),
        "created_at": now_iso(),
        "environment": capture_environment(plan.device if plan.device != "mixed" else "cuda"),
        "suite_spec": spec,
        "planned": [p.point.point_id for p in plan.points],
        "plan_key": key,
    }


def portable_spec(suite: Suite, profile: str) -> dict[str, Any]:
    """The resolved suite for run.json, its file named relative to the repository (never a machine's path)."""
    from bench.environment import portable_path

    return {**suite.resolved_spec(profile), "path": portable_path(suite.path)}


# ---------------------------------------------------------------- one grid run
def run_grid_suite(suite: Suite, opts: RunOptions, console: Console | None = None) -> Path:
    """Run one grid suite into a new run folder or this host's unfinished one; returns the folder."""
    console = console or Console()
    plan = plan_run(suite, opts, cuda_available())
    spec = portable_spec(suite, plan.profile)
    key = plan_key(spec, [p.point.point_id for p in plan.points])
    run_dir = choose_run_dir(suite.name, plan.profile, plan.device, opts, console, plan_key=key)
    with RunLock(run_dir):
        return _run_in(run_dir, suite, plan, spec, key, opts, console)


def _run_in(run_dir: Path, suite: Suite, plan: Plan, spec: dict[str, Any], key: str, opts: RunOptions,
            console: Console) -> Path:
    store = RunStore(run_dir)
    run_id = run_dir.name
    if store.torn_fragment is not None:
        console.print(f"[yellow]records.jsonl ended in a torn line ({len(store.torn_fragment)} bytes); "
                      f"moved it to records.torn, that point runs again[/]")
    kept = store.write_run_json(_run_meta(suite, plan, run_id, spec, key))
    store.check_writable()
    if not same_spec(kept.get("suite_spec") or {}, spec):
        console.print(f"{spec['path']} changed since this run began; run.json keeps the original suite_spec "
                      "(use --fresh for a run that describes the new one)", style="yellow", markup=False, soft_wrap=True)

    by_id = {p.point.point_id: p for p in plan.points}
    todo = [by_id[pid] for pid in store.pending(list(by_id), retry_failed=opts.retry_failed)]
    resumed = len(plan.points) - len(todo)
    console.print(f"[bold]{escape(suite.name)}[/] profile={plan.profile} device={plan.device} -> {escape(str(run_dir))}")
    console.print(f"{len(plan.points)} points: {resumed} already recorded, {len(todo)} to do")
    if not todo:
        nothing_measured(console, f"{run_dir} already holds a record of every one of its {len(plan.points)} "
                                  "points; its report is left as it was (`python -m bench report` rewrites it, "
                                  "--fresh starts a new run)")
        return run_dir
    if all(p.skip_reason is not None for p in todo):
        nothing_measured(console, f"every point left ({len(todo)}) is skipped by the suite's rules")

    from bench.load import busy_reason

    if busy := busy_reason():
        console.print(f"warning: {busy}; times measured now will be noisy", style="yellow", markup=False)
    logger = _live_logger(store.run_dir) if opts.wandb else None
    try:
        try:
            _execute(todo, store, run_id, opts, plan, suite, console, logger)
        except (KeyboardInterrupt, Terminated) as exc:
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            console.print(f"[yellow]{what}; the running worker was killed; run the same command again to resume[/]")
            raise
        print_summary(console, plan.points, latest_by_point(store.records()))
        failed = _report_then_compare(store.run_dir, suite.name, plan.profile, plan.device, opts, console)
    finally:
        if logger is not None:  # after the report, so its plots go to W&B too
            logger.finish()
    if failed is not None:
        raise failed
    return store.run_dir


def _report_then_compare(run_dir: Path, suite: str, profile: str, device: str, opts: RunOptions,
                         console: Console, module: str = "bench.report") -> ReportFailed | None:
    """The report, then the comparison with the reference even when the report failed (returned)."""
    try:
        write_report(run_dir, console, module=module)
        failed = None
    except ReportFailed as exc:
        failed = exc
    compare_with_reference(run_dir, suite, profile, device, opts.results_root, console)
    return failed


def nothing_measured(console: Console, why: str) -> None:
    """Said loudly, so a command that measured nothing is never mistaken for a run."""
    console.print(f"NOTHING MEASURED: {why}", style="bold red", markup=False, soft_wrap=True)


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
            measurement = suite.measurement(plan.profile)
            started = time.monotonic()
            log = lambda message: progress.console.print(message, markup=False, highlight=False)  # noqa: E731
            executor = make_executor(opts, plan, measurement["timeout_s"], store.run_dir, log,
                                     measurement["processes"])
            for record in executor.run(to_run):
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
               f"mem={_fmt(_first_metric(metrics, MEMORY_METRICS))} MiB"
               + (f" ({record['reason']})" if record.get("reason") else "")) if status == "ok" else (record.get("reason") or "")
    if (record.get("load") or {}).get("under_load"):
        figures = "[under load] " + figures
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
            p.point.point_id, escape(",".join(p.point.studies)), *(escape(_fmt(params.get(k))) for k in keys),
            f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]",
            _fmt(_first_metric(metrics, TIME_METRICS)), _fmt(_first_metric(metrics, MEMORY_METRICS)),
            escape((record or {}).get("reason") or ""),
        )
    console.print(table)
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    loaded = sum(bool(((records.get(p.point.point_id) or {}).get("load") or {}).get("under_load")) for p in points)
    if loaded:
        console.print(f"{loaded} of {len(points)} points were measured under load (other processes busy): "
                      "their times are not comparable", style="yellow", markup=False)


def _optional(module: str, attr: str, console: Console) -> Callable[..., Any] | None:
    """A function from a module that may not exist yet; None (and a note) if it does not."""
    try:
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            console.print(f"{module} is not available; skipping ({exc})", style="yellow", markup=False, soft_wrap=True)
            return None
        raise


def write_report(run_dir: Path, console: Console, module: str = "bench.report") -> Path | None:
    """Write the run's report if the report module exists (None if it does not); a failure is shown
    and raised as ReportFailed, once the caller has finished with the records."""
    write = _optional(module, "write_report", console)
    if write is None:
        return None
    try:
        path = write(run_dir)
    except Exception as exc:  # the records are safe; the report can be rebuilt with `bench report`
        console.print(f"report failed: {type(exc).__name__}: {exc}", style="red", markup=False, soft_wrap=True)
        raise ReportFailed(f"{run_dir}: every record was written, but the report was not ({type(exc).__name__}: "
                           f"{exc}); rebuild it with: python -m bench report {run_dir}") from None
    console.print(f"report: {path}")
    return path


def run(suite_ref: str | Path, opts: RunOptions, console: Console | None = None) -> Path:
    """Run a suite by name or path: grid suites here, training suites (`kind: duplication`, `kind: quality`)
    through the common training runner, `kind: capacity` through its search."""
    console = console or Console()
    path = resolve_suite_path(suite_ref)
    kind = suite_kind(path)
    if kind in TRAINING_KINDS:
        return _run_training(path, kind, opts, console)
    if kind == "capacity":
        from bench.capacity.runner import run_capacity_suite

        return run_capacity_suite(path, opts, console)
    if kind != "grid":
        raise SuiteError(f"{path}: kind: unknown suite kind {kind!r}; expected 'grid', 'capacity' or one of "
                         f"{', '.join(TRAINING_KINDS)}")
    # Not trial-expanded here: plan_run expands the chosen profile once, after counting its points.
    return run_grid_suite(load_suite(path, trial_expand=False), opts, console)


def _run_training(path: Path, kind: str, opts: RunOptions, console: Console) -> Path:
    """A training suite (duplication, quality) through the common training runner, then its report
    and the comparison with its reference."""
    from bench.training.runner import NothingToMeasure, print_training_summary, run_plan
    from bench.training.suites import training_plan

    ignored = [flag for flag, on in (("--retry-failed", opts.retry_failed), ("--only", bool(opts.only)),
                                     (f"--executor {opts.executor}", opts.executor != "local")) if on]
    if ignored:
        console.print(f"{path}: training suites ignore {', '.join(ignored)} (failed trainings are always "
                      "retried; every study's models run in this process)", style="yellow", markup=False, soft_wrap=True)
    has_cuda = cuda_available()
    if opts.device == "cuda" and not has_cuda:
        raise RunError("--device cuda: CUDA is not available on this machine")
    profile = resolve_profile(opts.profile, opts.device, has_cuda)
    check_gpu_profile(profile, opts.device, has_cuda)
    device = ("cuda" if has_cuda else "cpu") if opts.device == "auto" else opts.device
    try:
        plan = training_plan(path, kind, profile, opts.data)
    except ValueError as exc:  # a bad suite, an unknown profile, a corpus refused: nothing ran
        raise RunError(str(exc)) from exc
    opts = dataclasses.replace(opts, retry_failed=True)  # a failed training is tried again on a rerun
    try:
        run_dir, _ = run_plan(plan, opts, device, console, wandb=opts.wandb)
    except NothingToMeasure as done:
        nothing_measured(console, str(done))
        return done.run_dir
    print_training_summary(console, plan, run_dir)
    failed = _report_then_compare(run_dir, plan.suite, plan.profile, device, opts, console,
                                  module=f"bench.{kind}.report")
    if failed is not None:
        raise failed
    return run_dir
