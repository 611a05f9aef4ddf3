"""One run of any kind of suite: load and validate it, plan, choose the run folder (new, or this
host's unfinished one), lock it, write run.json, then loop { ask the plan for its next units given
the records so far -> execute them -> append their records }, then summary, report and the
comparison with the committed reference. Kinds differ only in their plan (`bench.plans`)."""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.environment import capture_environment, host_id
from bench import load
from bench.options import NothingToMeasure, ReportFailed, RunOptions, Terminated
from bench.plans.base import Plan, Record
from bench.plans.registry import plan_suite
from bench.reference import compare_with_reference
from bench.rundir import choose_run_dir
from bench.store import RunLock, RunStore, now_iso

OnRecord = Callable[[Record], None]


def nothing_measured(console: Console, why: str) -> None:
    """Said loudly, so a command that measured nothing is never mistaken for a run."""
    console.print(f"NOTHING MEASURED: {why}", style="bold red", markup=False, soft_wrap=True)


def run_plan(plan: Plan, opts: RunOptions, console: Console | None = None, *,
             on_record: OnRecord | None = None) -> tuple[Path, bool]:
    """Run a plan in the run folder the harness's rules choose (`bench.rundir.choose_run_dir`), up to
    and including its summary; returns (run folder, whether the plan ran to its end). Raises
    NothingToMeasure when the folder already holds every unit's final record."""
    console = console or Console()
    run_dir = choose_run_dir(plan.suite, plan.profile, plan.device, opts, console, plan_key=plan.key())
    with RunLock(run_dir):
        return run_dir, _run_in(plan, run_dir, opts, console, on_record)


def _meta(plan: Plan, run_dir: Path) -> dict[str, Any]:
    env_device = plan.device if plan.device != "mixed" else "cuda"
    return {"suite": plan.suite, "kind": plan.kind, "profile": plan.profile, "run_id": run_dir.name,
            "device": plan.device, "host_id": host_id(), "created_at": now_iso(),
            "environment": capture_environment(env_device), "suite_spec": plan.spec(),
            "planned": plan.planned(), "plan_key": plan.key()}


def _run_in(plan: Plan, run_dir: Path, opts: RunOptions, console: Console, on_record: OnRecord | None) -> bool:
    say = lambda message: console.print(message, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    store = RunStore(run_dir)
    if store.torn_fragment is not None:
        console.print(f"[yellow]records.jsonl ended in a torn line ({len(store.torn_fragment)} bytes); "
                      f"moved it to records.torn, that point runs again[/]")
    kept = store.write_run_json(_meta(plan, run_dir))
    plan.check_kept(kept, run_dir, lambda m: console.print(m, style="yellow", markup=False, soft_wrap=True))
    store.check_writable()
    plan.say = say
    records = store.records()
    done, total = plan.start(records, opts.retry_failed)
    console.print(f"[bold]{escape(plan.suite)}[/] profile={plan.profile} device={plan.device} -> {escape(str(run_dir))}")
    console.print(f"{total} {plan.units_word}: {done} already recorded, {total - done} to do")
    if done >= total:
        raise NothingToMeasure(run_dir, plan.nothing_left(run_dir, total))
    if why := plan.nothing_to_run():
        nothing_measured(console, why)
    if busy := load.busy_reason():
        console.print(f"warning: {busy}; times measured now will be noisy", style="yellow", markup=False)
    logger = _live_logger(run_dir) if opts.wandb else None
    executor = plan.executor(opts, run_dir, say)
    try:
        complete = _loop(plan, executor, store, records, opts, console, logger, on_record)
    except (KeyboardInterrupt, Terminated) as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        console.print(f"[yellow]{what}; the running worker was killed; run the same command again to resume[/]")
        raise
    finally:
        executor.close()
        if logger is not None:
            logger.finish()
    plan.summary(console, store.records())
    return complete


def _loop(plan: Plan, executor: Any, store: RunStore, records: list[Record], opts: RunOptions, console: Console,
          logger: Any, on_record: OnRecord | None) -> bool:
    """Ask, execute, append, until the plan is done or the time budget is spent; False if stopped."""
    started = time.monotonic()
    budget = opts.time_budget_s
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(plan.suite, total=None)
        while units := plan.ask():
            progress.update(task, total=(progress.tasks[0].total or 0) + len(units))
            for unit, raw in executor.run(units):
                record = plan.tell(unit, raw)
                if record is None:  # a unit the time budget stopped at its checkpoint
                    progress.console.print("[yellow]time budget spent; run the same command again to resume[/]")
                    return False
                record["run_id"] = store.run_dir.name
                store.append(record)
                records.append(record)
                for log in (logger.log_record if logger is not None else None, on_record):
                    if log is not None:
                        log(record)
                progress.advance(task)
                if line := plan.one_line(unit, record):
                    progress.console.print(line)
                ran = record["status"] != "skipped"  # a row the suite's rules made runs nothing
                if budget is not None and ran and not plan.checkpoints and time.monotonic() - started > budget:
                    # Leaving the loop closes the executor's generator: no further unit starts.
                    progress.console.print(f"[yellow]time budget of {budget:g} s spent; "
                                           "run the same command again to resume[/]")
                    return False
    return True


def _live_logger(run_dir: Path) -> Any:
    # Imported only with --wandb: the publishing stack (pandas, wandb) is not paid for otherwise.
    from bench.publish import LiveLogger

    return LiveLogger(run_dir)


def write_report(run_dir: Path, console: Console, module: str = "bench.report") -> Path:
    """Write the run's report with `module.write_report`; a failure is shown and raised as
    ReportFailed, once the caller has finished with the records."""
    write = importlib.import_module(module).write_report  # by name: each kind's report stack is its own
    try:
        path = write(run_dir)
    except Exception as exc:  # the records are safe; the report can be rebuilt with `bench report`
        console.print(f"report failed: {type(exc).__name__}: {exc}", style="red", markup=False, soft_wrap=True)
        raise ReportFailed(f"{run_dir}: every record was written, but the report was not ({type(exc).__name__}: "
                           f"{exc}); rebuild it with: python -m bench report {run_dir}") from None
    console.print(f"report: {path}")
    return path


def finish(plan: Plan, run_dir: Path, opts: RunOptions, console: Console) -> None:
    """The report, then the comparison with the reference even when the report failed (raised after)."""
    try:
        write_report(run_dir, console, module=plan.report_module)
        failed = None
    except ReportFailed as exc:
        failed = exc
    compare_with_reference(run_dir, plan.suite, plan.profile, plan.device, opts.results_root, console)
    if failed is not None:
        raise failed


def run(plan: Plan, opts: RunOptions, console: Console | None = None) -> Path:
    """The whole lifecycle of a planned run: the units, the summary, the report (also of a run its
    time budget stopped: a rerun resumes it) and the comparison with the reference."""
    console = console or Console()
    try:
        run_dir, _ = run_plan(plan, opts, console)
    except NothingToMeasure as done:
        nothing_measured(console, str(done))
        return done.run_dir
    finish(plan, run_dir, opts, console)
    return run_dir


def run_suite(ref: str | Path, opts: RunOptions, console: Console | None = None) -> Path:
    """`python -m bench run`: a suite by name or path, planned by its kind, run to its comparison."""
    return run(plan_suite(ref, opts), opts, console)
